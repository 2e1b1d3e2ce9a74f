"""The rejuvenation's MLflow run, logged from a side process while the work runs.

Importing mlflow and opening its store cost seconds of CPU (measured on 2 cores: 3.5-10 s,
as much as fusing a 0.3B pair), and the work is IO- and torch-bound: a second process does the
tracking beside it, on another core and outside this process's GIL, so the driver never
imports mlflow. The run opens (RUNNING, with the config as params) as soon as the side process
is up, gets the report's metrics and artifacts at the end, and ends FAILED if the work fails.

    run = SideRun.start(cfg.tracking, run_name, params)    # python -P -m <this module>
    ... the work ...
    run.finish(metrics, artifacts)                          # or run.fail(); both wait for it
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.errors import RejuvError

WAIT_S = 600  # the side process has nothing left to do but log: a store that hangs this long is broken


@dataclass
class SideRun:
    """The driver's handle; a no-op when tracking is off (proc None)."""

    proc: subprocess.Popen | None

    @classmethod
    def start(cls, tracking: TrackingConfig, run_name: str, params: dict) -> SideRun:
        if not tracking.enabled:
            return cls(None)
        # stdout and stderr are the driver's: MLflow's own messages appear as they would in process
        # -P: the driver's working directory does not shadow packages
        proc = subprocess.Popen([sys.executable, "-P", "-m", __name__], stdin=subprocess.PIPE, text=True)
        side = cls(proc)
        side._send({"tracking": tracking.model_dump(mode="json"), "run_name": run_name, "params": params})
        return side

    def finish(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        """Log the results, end the run FINISHED; a tracking failure is an error here."""
        self._send({"status": "FINISHED", "metrics": metrics, "artifacts": [str(a) for a in artifacts]})
        rc = self._wait()
        if rc != 0:
            raise RejuvError(
                f"the checkpoint is written, but logging the run to MLflow failed (exit {rc}, its error is above); "
                "check --tracking-uri / $MLFLOW_TRACKING_URI, or pass --no-track"
            )

    def fail(self) -> None:
        """End the run FAILED; the work's error, not a tracking one, is what the caller raises."""
        self._send({"status": "FAILED"})
        rc = self._wait()
        if rc != 0:
            warnings.warn(f"the failed run could not be logged to MLflow (exit {rc})", stacklevel=2)

    def _send(self, message: dict) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the side process already exited; _wait reports how

    def _wait(self) -> int:
        if self.proc is None:
            return 0
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


class _Ended(Exception):
    """Raised inside the MLflow run to end it with the driver's status (FAILED)."""


def log_side_run(lines) -> None:
    """The side process: the start message (config, params), then the end message; EOF before
    the end (the driver died) ends the run FAILED too."""
    from rayrejuv.runs.tracking import tracked_run

    start = json.loads(next(lines))
    try:
        with tracked_run(TrackingConfig.model_validate(start["tracking"]), start["run_name"]) as run:
            run.log_params(start["params"])
            end = json.loads(next(lines, '{"status": "FAILED"}'))
            if end["status"] != "FINISHED":
                raise _Ended(end["status"])
            run.log_metrics(end["metrics"])
            for path in end["artifacts"]:
                run.log_artifact(path)
    except _Ended:
        pass


if __name__ == "__main__":
    log_side_run(iter(sys.stdin))
    # The run is ended and every write committed: skip the interpreter's teardown, which frees
    # mlflow's and SQLAlchemy's modules for ~1 s (measured) while the driver waits for this exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
