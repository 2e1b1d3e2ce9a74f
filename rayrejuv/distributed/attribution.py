"""The attribution actor: steps 1-4 of the targeted reset, beside the fusion workers."""

from __future__ import annotations

from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.rejuvenation.job import RejuvenationJob
from rayrejuv.runs.resources import set_torch_threads
from rayrejuv.timing import PhaseTimer


class AttributionWorker:
    """Plain Python; `ray.remote(AttributionWorker)` runs it on a node with the attribution device."""

    def __init__(self, reserved_cpus: float):
        set_torch_threads(reserved_cpus)  # the actor's CPUs, not the node's: attribution is compute-bound

    def run(self, search: ResetSearchConfig, job: RejuvenationJob, progress: bool):
        from rayrejuv.rejuvenation.reset_search import find_reset_set

        timer = PhaseTimer()
        base, sft = job.open()
        reset, stats = find_reset_set(search, base, sft, timer, progress)
        return reset, stats, timer.seconds
