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
