"""The actors a GRPO run's learner drives, started together and handed whole to every Ray Train
worker; and `RunJob`, what one run hands to the pool of those workers that serves it
(commands/rl/pool.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.distributed.placement import Colocation, Separate, start_placement
from rayrejuv.distributed.reference import REFERENCE_CPUS, start_reference
from rayrejuv.distributed.rollout_group import RolloutGroup


@dataclass
class RLWorkers:
    rollouts: RolloutGroup  # hf / vLLM actors: generate, complete, sync weights
    reference: Any | None  # ReferenceWorker actor: the frozen start's log-probs (None when beta = 0)
    sink: Any  # MetricsSink actor of the run being served: metrics.jsonl + the MLflow run (None between runs)
    # where the learner workers go (Colocation: label selectors) and the group removed on shutdown; default: none
    placement: Separate | Colocation = field(default_factory=lambda: Separate(0))

    def serving(self, sink) -> RLWorkers:
        """These workers for one run: its sink, and its own count of rollout restarts."""
        self.rollouts.restarts = 0
        return dataclasses.replace(self, sink=sink)

    def load_reference(self, cfg: RLConfig) -> None:
        """The reference holds the run's start (cfg.model), whatever run it served before (beta > 0)."""
        import ray

        if self.reference is not None:
            g = cfg.grpo
            ray.get(self.reference.load.remote(str(cfg.model), g.micro_batch_size, g.logprob_chunk_size))

    def records(self) -> list[dict]:
        import ray

        return ray.get(self.sink.records.remote())

    def shutdown(self) -> None:
        import ray

        self.rollouts.shutdown()
        if self.reference is not None:
            ray.kill(self.reference)
        self.placement.remove()


@contextmanager
def start_workers(cfg: RLConfig) -> Iterator[RLWorkers]:
    """The placement (cfg.placement), rollout actors (loaded from cfg.model) and the reference
    (beta > 0) placed by it; no sink (each run brings its own); ended on exit."""
    reference_cpus = REFERENCE_CPUS if cfg.grpo.beta > 0 else 0.0
    placement = start_placement(cfg.placement, cfg.rollout.workers, cfg.rollout.cpus_per_worker, reference_cpus,
                                gpu=cfg.colocated_gpus())
    rollouts = RolloutGroup(str(cfg.model), cfg.rollout, cfg.seed, placement.rollout_options())
    reference = None
    if cfg.grpo.beta > 0:
        g = cfg.grpo
        reference = start_reference(cfg.model, cfg.rollout, cfg.reference_gpus(), g.micro_batch_size,
                                    g.logprob_chunk_size, placement.reference_options())
    workers = RLWorkers(rollouts, reference, None, placement)
    try:
        yield workers
    finally:
        workers.shutdown()


@dataclass(frozen=True)
class RunJob:
    """One run for a pool: its config (JSON, `auto` dtypes resolved), its rendered rows, the
    MetricsSink its driver started, and when (time/run_start, time/queued)."""

    cfg: dict
    rows: list[dict]
    eval_rows: list[dict]
    sink: Any
    key: str  # pool_key(cfg): a pool serves only the runs of its own key
    progress: bool
    prepared: float  # seconds the driver took before it submitted the run (inputs, run directory, sink)
    submitted: float  # time.time() of the submission
