"""A rejuvenation's shard work as one typed, picklable value: what every shard writer needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayrejuv.config.rejuvenation import FusionParams
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.writer import ShardPlan


@dataclass(frozen=True)
class RejuvenationJob:
    """The inputs, Eq. 1 / Eq. 5's knobs and the output plan of one run. Paths, not open files,
    so it travels to Ray actors; the reset set is not part of it (on Ray it is found while the
    fused shards are written)."""

    base: Path
    sft: Path
    allow_pickle: bool
    fusion: FusionParams
    directory: Path  # where the shards are written: the output's partial directory
    plans: tuple[ShardPlan, ...]
    fingerprint: str  # what the shards' bytes depend on; a shard marked with it is reused on resume

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.plans)

    def open(self) -> tuple[Checkpoint, Checkpoint]:
        """(base, SFT), opened in this process."""
        return (
            Checkpoint(self.base, role="base", allow_pickle=self.allow_pickle),
            Checkpoint(self.sft, role="SFT", allow_pickle=self.allow_pickle),
        )
