"""`rayrejuv rejuvenate`: the rejuvenated checkpoint (algorithm.py), its MLflow run beside it.

The MLflow run is logged outside this process (runs/side_run.py: the store's tracking agent, or a
side process), started first, before this process imports torch and the engine: on two cores
mlflow's start-up there (~3 s of CPU) and torch's import here (~2 s) run at the same time.
Measured on the 2-core machine, 0.29B pair, median of 5 (busy): tracking's cost over --no-track
17.2 s with the side process started after the engine's import, 10.2 s started before it.
With the agent warm, the run costs the command only its two messages.
"""

from __future__ import annotations

from pathlib import Path

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.runs.side_run import SideRun


def rejuvenate(cfg: RejuvenateConfig, progress: bool = True) -> dict:
    """Write the rejuvenated checkpoint to cfg.out and return its report; the MLflow run is
    logged by a side process while the work runs: this process never imports mlflow."""
    run = SideRun.start(cfg.tracking, f"rejuvenate:{Path(cfg.sft).name}", cfg.model_dump(mode="json"))
    try:
        from rayrejuv.commands.rejuvenate.algorithm import write_checkpoint  # torch and the engine

        report = write_checkpoint(cfg, progress)
    except Exception:
        run.fail()
        raise
    run.finish(summary_metrics(report), artifacts(Path(cfg.out), report))
    return report


def artifacts(out: Path, report: dict) -> list[Path]:
    from rayrejuv.commands.rejuvenate.report import REPORT, RESET_MAP

    return [out / REPORT, *([out / RESET_MAP] if report["reset_count"] else [])]


def summary_metrics(report: dict) -> dict[str, float]:
    m = {
        "reset_count": report["reset_count"],
        "reset_fraction": report["reset_fraction"],
        "reused_shards": report["output"]["reused_shards"],
        **{f"reset_by_kind.{k}": v for k, v in report["reset_by_kind"].items()},
        **{f"time.{k}": v for k, v in report["timings_s"].items()},
    }
    if report["attribution"] is not None:
        m.update({f"attribution.{k}": v for k, v in report["attribution"].items()})
    return m
