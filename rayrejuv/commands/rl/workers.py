"""The actors a GRPO run's learner drives, started together and handed whole to every Ray Train worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.distributed.metrics_sink import start_sink
from rayrejuv.distributed.placement import Colocation, Separate, start_placement
from rayrejuv.distributed.reference import REFERENCE_CPUS, start_reference
from rayrejuv.distributed.rollout_group import RolloutGroup
from rayrejuv.runs.tracking import Run


@dataclass
class RLWorkers:
    rollouts: RolloutGroup  # hf / vLLM actors: generate, complete, sync weights
    reference: Any | None  # ReferenceWorker actor: the frozen start's log-probs (None when beta = 0)
    sink: Any  # MetricsSink actor on the driver's node: metrics.jsonl + the MLflow run
    # where the learner workers go (Colocation: label selectors) and the group removed on shutdown; default: none
    placement: Separate | Colocation = field(default_factory=lambda: Separate(0))

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
def start_workers(cfg: RLConfig, metrics: Path, run: Run) -> Iterator[RLWorkers]:
    """Sink, the placement (cfg.placement), rollout actors (loaded from cfg.model) and the reference
    (beta > 0) placed by it; ended on exit."""
    sink = start_sink(metrics, run.tracking_uri, run.run_id)
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
