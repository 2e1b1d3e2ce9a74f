"""MLflow helpers: one run per command, resolved config as params, sanitised metric names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rayrejuv.config.runtime import TrackingConfig

_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize(name: str) -> str:
    """MLflow rejects characters such as '(' or ':' in keys."""
    return _BAD.sub("_", name)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


class Run:
    """A handle on the active MLflow run, or a no-op when tracking is disabled."""

    def __init__(self, mlflow_module=None):
        self._mlflow = mlflow_module

    @property
    def run_id(self) -> str | None:
        if self._mlflow is None:
            return None
        return self._mlflow.active_run().info.run_id

    @property
    def tracking_uri(self) -> str | None:
        """The store this run logs to, as an absolute URI other processes (other cwd) can reach."""
        if self._mlflow is None:
            return None
        return absolute_uri(self._mlflow.get_tracking_uri())

    def child(self, cfg: TrackingConfig, run_name: str) -> TrackingConfig:
        """The tracking section of a run nested under this one (a phase of the demo, a Tune trial),
        usable from any process; unchanged (but renamed) when tracking is off."""
        if self._mlflow is None:
            return cfg.model_copy(update={"run_name": run_name})
        return cfg.model_copy(update={"run_name": run_name, "parent_run_id": self.run_id, "uri": self.tracking_uri})

    def kill_running_children(self) -> int:
        """Mark this run's child runs that are still RUNNING as KILLED: their process was killed (a
        Tune trial that ASHA stopped never leaves its `tracked_run`). Returns how many."""
        if self._mlflow is None:
            return 0
        client = self._mlflow.MlflowClient(self._mlflow.get_tracking_uri())
        run = self._mlflow.active_run()
        query = f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'RUNNING'"
        children = client.search_runs([run.info.experiment_id], filter_string=query)
        for child in children:
            client.set_terminated(child.info.run_id, status="KILLED")
        return len(children)

    def end(self, status: str) -> None:
        """End the run now as `status` (KILLED: a Tune trial its scheduler stopped); its `tracked_run`
        then leaves it so."""
        if self._mlflow is not None:
            self._mlflow.end_run(status)

    def log_params(self, params: dict[str, Any]) -> None:
        if self._mlflow is not None:
            flat = {sanitize(k): str(v)[:6000] for k, v in flatten(params).items()}
            self._mlflow.log_params(flat)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics({sanitize(k): float(v) for k, v in flatten(metrics).items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextmanager
def tracked_run(
    cfg: TrackingConfig, run_name: str, nested: bool = False, run_id: str | None = None
) -> Iterator[Run]:
    """An MLflow run for one command; `run_id` continues an existing run (a resumed job)."""
    if not cfg.enabled:
        yield Run(None)
        return
    import mlflow

    if cfg.uri is not None:
        mlflow.set_tracking_uri(cfg.uri)
    mlflow.set_experiment(cfg.experiment)
    name = None if run_id else (cfg.run_name or run_name)
    parent = cfg.parent_run_id
    # a parent given by id may be this process's active run (nested) or another process's
    nested = nested or (parent is not None and mlflow.active_run() is not None)
    parent = parent if run_id is None else None  # a continued run keeps its parent
    with mlflow.start_run(run_id=run_id, run_name=name, nested=nested, parent_run_id=parent):
        yield Run(mlflow)


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite store's URI (relative to the cwd unless absolute), else None."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute, so worker processes with another cwd reach the same store."""
    path = sqlite_path(uri)
    return uri if path is None else SQLITE + str(path.absolute())
