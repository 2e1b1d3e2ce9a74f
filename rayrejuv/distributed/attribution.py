"""The attribution actor: steps 1-4 of the targeted reset, beside the fusion workers."""

from __future__ import annotations

from rayrejuv.config import RejuvenateConfig
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.timing import PhaseTimer


class AttributionWorker:
    """Plain Python; `ray.remote(AttributionWorker)` runs it on a node with the attribution device."""

    def run(self, cfg: RejuvenateConfig, progress: bool):
        from rayrejuv.pipelines.targeted_reset import find_reset_set

        timer = PhaseTimer()
        base = Checkpoint(cfg.base, role="base", allow_pickle=cfg.allow_pickle)
        sft = Checkpoint(cfg.sft, role="SFT", allow_pickle=cfg.allow_pickle)
        reset, stats = find_reset_set(cfg, base, sft, timer, progress)
        return reset, stats, timer.seconds
