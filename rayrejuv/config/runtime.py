"""Where a run executes and how it is tracked: the Ray and MLflow sections every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rayrejuv.config.base import Config


class TrackingConfig(Config):
    enabled: bool = Field(True, description="log the run to MLflow")
    uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here"
    )
    experiment: str = Field("rayrejuv", description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name; default: the command's")
    parent_run_id: str | None = Field(
        None, description="nest the run under this (running) MLflow run, as the demo does with its phases"
    )
    agent_idle_s: float = Field(
        300.0, ge=0,
        description="rejuvenate logs to a local store through a tracking agent (one process per store, see "
        "runs/agent.py) that outlives the command by this many idle seconds, so the next command skips MLflow's "
        "~3 s start-up; 0: a side process per command",
    )


class RayConfig(Config):
    enabled: bool | None = Field(
        None,
        description="where the work runs: true (--ray) on Ray, a local instance unless address / $RAY_ADDRESS names "
        "a cluster; false (--no-ray) in this process; unset: on Ray only when a cluster is named, this process is "
        "already connected to Ray or workers > 1 is asked for, else in this process",
    )
    address: str | None = Field(None, description="Ray cluster address; default $RAY_ADDRESS, else a local instance")
    workers: int | None = Field(None, ge=1, description="LayerShard actors; default one per GPU, else one per CPU")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per LayerShard actor")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per LayerShard actor (fusion is IO-bound)")
    attribution_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the attribution actor")
    attribution_gpus: float | None = Field(None, ge=0, description="GPUs of the attribution actor; default 1 on cuda")
    placement: Literal["pack", "spread"] = Field("pack", description="placement group strategy of the workers")
    max_restarts: int = Field(3, ge=0, description="restarts of a crashed actor (its shards are redone)")
    verbose: bool = Field(
        False, description="demo, rl, tune: Ray's and the workers' logs on the terminal; default: into OUT/logs "
        "(ray.log, workers.log), with one progress line per RL run on the terminal",
    )

    def log_dir(self, out: Path) -> Path | None:
        """Where a command with --out `out` puts Ray's and the workers' logs (ray_session's `logs`):
        OUT/logs, or None (the terminal) when verbose."""
        return None if self.verbose else Path(out).absolute() / "logs"
