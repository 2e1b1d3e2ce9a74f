"""Splitting ordered work among workers: contiguous ranges of similar total size."""

from __future__ import annotations


def contiguous_ranges(sizes: list[float], parts: int) -> list[range]:
    """Split items (in order) into at most `parts` contiguous, non-empty ranges of similar total size.

    Each range takes items until it holds its fair share of what is left (remaining size /
    remaining parts), leaving at least one item for every later part. Equal sizes give near-equal
    counts, the first ranges one longer: 10 items in 3 parts -> 4, 3, 3."""
    parts = max(1, min(parts, len(sizes)))
    ranges, start, left = [], 0, float(sum(sizes))
    for k in range(parts):
        parts_left = parts - k
        if parts_left == 1:
            ranges.append(range(start, len(sizes)))
            break
        share, acc, end = left / parts_left, 0.0, start
        while end < len(sizes) - (parts_left - 1) and (acc < share or end == start):
            acc += sizes[end]
            end += 1
        ranges.append(range(start, end))
        start, left = end, left - acc
    return [r for r in ranges if len(r)]
