"""The actors a GRPO run's learner drives, started together and handed whole to every Ray Train
worker; and `RunJob`, what one run hands to the pool of those workers that serves it
(commands/rl/pool.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.distributed.metrics_sink import start_sink
from rayrejuv.distributed.placement import Colocation, Separate, start_placement
from rayrejuv.distributed.reference import REFERENCE_CPUS, start_reference
from rayrejuv.distributed.rollout_group import RolloutGroup


@dataclass
class RLWorkers:
    rollouts: RolloutGroup  # hf / vLLM actors: generate, complete, sync weights
    reference: Any | None  # ReferenceWorker actor: the frozen start's log-probs (None when beta = 0)
    sink: Any  # MetricsSink actor: the served run's metrics.jsonl + MLflow run (RLWorkers.serving opens it)
    # where the learner workers go (Colocation: label selectors) and the group removed on shutdown; default: none
    placement: Separate | Colocation = field(default_factory=lambda: Separate(0))

    def serving(self, job: RunJob, rank0: bool) -> RLWorkers:
        """These workers for one run: the sink writes its metrics (rank 0 opens it), and the run counts
        its own rollout restarts."""
        import ray

        if rank0:
            ray.get(self.sink.open.remote(job.metrics, job.tracking_uri, job.run_id))
        self.rollouts.restarts = 0
        return self

    def load_reference(self, cfg: RLConfig) -> None:
        """The reference holds the run's start (cfg.model), whatever run it served before (beta > 0)."""
        import ray

        if self.reference is not None:
            g = cfg.grpo
            ray.get(self.reference.load.remote(str(cfg.model), g.micro_batch_size, g.logprob_chunk_size))

    def shutdown(self) -> None:
        import ray

        self.rollouts.shutdown()
        ray.kill(self.sink)
        if self.reference is not None:
            ray.kill(self.reference)
        self.placement.remove()


@contextmanager
def start_workers(cfg: RLConfig) -> Iterator[RLWorkers]:
    """The metrics sink (on this node; each run opens it), the placement (cfg.placement), rollout
    actors (loaded from cfg.model) and the reference (beta > 0) placed by it; ended on exit."""
    sink = start_sink(None, None, None)
    reference_cpus = REFERENCE_CPUS if cfg.grpo.beta > 0 else 0.0
    placement = start_placement(cfg.placement, cfg.rollout.workers, cfg.rollout.cpus_per_worker, reference_cpus,
                                gpu=cfg.colocated_gpus())
    rollouts = RolloutGroup(str(cfg.model), cfg.rollout, cfg.seed, placement.rollout_options())
    reference = None
    if cfg.grpo.beta > 0:
        g = cfg.grpo
        reference = start_reference(cfg.model, cfg.rollout, cfg.reference_gpus(), g.micro_batch_size,
                                    g.logprob_chunk_size, placement.reference_options())
    workers = RLWorkers(rollouts, reference, sink, placement)
    try:
        yield workers
    finally:
        workers.shutdown()


@dataclass(frozen=True)
class RunJob:
    """One run for a pool: its config (JSON, `auto` dtypes resolved), its rendered rows, where its
    metrics go (the pool's sink opens them), and when (time/run_start, time/queued)."""

    cfg: dict
    rows: list[dict]
    eval_rows: list[dict]
    metrics: str  # the run's metrics.jsonl
    tracking_uri: str | None
    run_id: str | None  # its MLflow run (None: tracking off)
    key: str  # pool_key(cfg): a pool serves only the runs of its own key
    progress: bool
    prepared: float  # seconds the driver took before it submitted the run (inputs, run directory, sink)
    submitted: float  # time.time() of the submission
