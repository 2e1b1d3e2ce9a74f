"""Which prompts GRPO step s trains on: a pure function of (step, seed), so a resumed run sees
exactly the prompts the interrupted one would have seen."""

from __future__ import annotations

import torch


def step_prompts(num_rows: int, step: int, per_step: int, seed: int) -> list[int]:
    """Row indices for `step`: consecutive slices of one seeded permutation per epoch."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, num_rows)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(num_rows, generator=g)[pos]))
    return out


def draw_prompts(num_rows: int, step: int, draw: int, per_step: int, seed: int) -> list[int]:
    """Row indices of draw `draw` at `step` (dynamic sampling draws again while the batch lacks
    groups whose rewards differ): draw 0 is `step_prompts`; draws 1, 2, ... are consecutive
    slices of one permutation, seeded by (seed, step), of the rows draw 0 does not hold (all rows
    when it holds every one), cycled when they run out. A pure function of (seed, step, draw): a
    resumed run draws what the interrupted one would have, and the epoch order stays untouched."""
    first = step_prompts(num_rows, step, per_step, seed)
    if draw == 0:
        return first
    taken = set(first)
    rest = [i for i in range(num_rows) if i not in taken] or list(range(num_rows))
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + (1 << 48))  # no epoch seed is this large
    order = [rest[int(j)] for j in torch.randperm(len(rest), generator=g)]
    return [order[i % len(order)] for i in range((draw - 1) * per_step, draw * per_step)]
