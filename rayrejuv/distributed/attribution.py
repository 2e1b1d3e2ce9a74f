"""The attribution actor: steps 1-4 of the targeted reset, beside the fusion workers."""

from __future__ import annotations

from pathlib import Path

from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.timing import PhaseTimer


class AttributionWorker:
    """Plain Python; `ray.remote(AttributionWorker)` runs it on a node with the attribution device."""

    def run(self, search: ResetSearchConfig, base: Path, sft: Path, allow_pickle: bool, progress: bool):
        from rayrejuv.rejuvenation.reset_search import find_reset_set

        timer = PhaseTimer()
        base_ckpt = Checkpoint(base, role="base", allow_pickle=allow_pickle)
        sft_ckpt = Checkpoint(sft, role="SFT", allow_pickle=allow_pickle)
        reset, stats = find_reset_set(search, base_ckpt, sft_ckpt, timer, progress)
        return reset, stats, timer.seconds
