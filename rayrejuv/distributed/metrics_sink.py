"""One actor on the driver's node owns the run's metric stream: metrics.jsonl in the run
directory and the MLflow run, whichever node the learner's rank 0 happens to run on. A worker
pool's sink serves its runs in turn (`open` each; its process and MLflow import stay warm)."""

from __future__ import annotations

import json
from pathlib import Path

from rayrejuv.runs.tracking import flatten, sanitize


class MetricsSink:
    def __init__(self, path: str | None, tracking_uri: str | None, run_id: str | None):
        self.path, self.run_id, self.client = None, None, None
        if path is not None:
            self.open(path, tracking_uri, run_id)

    def open(self, path: str, tracking_uri: str | None, run_id: str | None) -> None:
        """Write the stream of the run whose metrics.jsonl is `path` (and MLflow run `run_id`) from now on."""
        self.path, self.run_id, self.client = Path(path), run_id, None
        if run_id is not None:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def truncate(self, last_step: int) -> int:
        """Keep records up to `last_step` (the resumed checkpoint's; later steps are redone)."""
        if not self.path.exists():
            return 0
        kept = [r for r in self.path.read_text().splitlines() if r and json.loads(r)["step"] <= last_step]
        self.path.write_text("".join(r + "\n" for r in kept))
        return len(kept)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.client is not None:
            import time

            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            batch = [Metric(sanitize(k), float(v), ts, step) for k, v in flatten(metrics).items()]
            self.client.log_batch(self.run_id, metrics=batch)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(r) for r in self.path.read_text().splitlines() if r]


def start_sink(path: Path | None, tracking_uri: str | None, run_id: str | None):
    """The sink actor, pinned to this (the driver's) node: the run directory is written where it was claimed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(MetricsSink).options(num_cpus=0, scheduling_strategy=here).remote(
        None if path is None else str(path), tracking_uri, run_id
    )
