"""A command's MLflow run, logged outside the command's process while the work runs.

Importing mlflow and opening its store cost ~3 s of CPU (measured on 2 cores: `import mlflow`
1.7 s, the SQLAlchemy store 1.0-1.5 s, all module imports), as much as fusing a 0.3B pair. The
command never imports mlflow: it streams two JSON lines (the start: tracking section, run name,
params; the end: status, metrics, artifacts) to a logger, which is

  - the tracking agent of a local store (runs/agent.py): one long-lived process per store that
    logs the runs of many commands, so only the first command in a while pays the start-up;
  - else (a remote server, or `tracking.agent_idle_s: 0`) a side process of this command
    (`python -P -m rayrejuv.runs.side_run`), which inherits its environment (credentials).

    run = SideRun.start(cfg.tracking, run_name, params)
    ... the work ...
    run.finish(metrics, artifacts)       # or run.fail(); both wait until the run is ended

The run opens (RUNNING, params logged) as soon as the logger is up, and ends FAILED if the work
fails or the command dies before its end message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.errors import RejuvError
from rayrejuv.runs.tracking import SQLITE, absolute_uri

WAIT_S = 600  # the logger has nothing left to do but log: a store that hangs this long is broken
DEFAULT_URI = "sqlite:///mlflow.db"  # mlflow's own default, in the working directory
LOCAL_SCHEMES = (SQLITE, "file:")  # stores an agent may serve: no credentials in the environment


def resolved_uri(tracking: TrackingConfig) -> str:
    """The store the run goes to, absolute, resolved here (the agent has another cwd and env)."""
    return absolute_uri(tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)


class ProcessLogger:
    """A side process of this command; its stdout/stderr are the command's."""

    def __init__(self):
        # -P: the command's working directory does not shadow packages
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", __name__], stdin=subprocess.PIPE, text=True)

    def send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the side process already exited; close() reports how

    def close(self) -> str | None:
        """Wait until the run is ended; None on success, else what failed."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        return None if rc == 0 else f"exit {rc}, its error is above"


@dataclass
class SideRun:
    """The command's handle; a no-op when tracking is off (logger None)."""

    logger: ProcessLogger | None  # or runs.agent.AgentLogger: the same send/close

    @classmethod
    def start(cls, tracking: TrackingConfig, run_name: str, params: dict) -> SideRun:
        if not tracking.enabled:
            return cls(None)
        uri = resolved_uri(tracking)
        if tracking.agent_idle_s > 0 and uri.startswith(LOCAL_SCHEMES):
            from rayrejuv.runs.agent import AgentLogger

            logger = AgentLogger(uri, tracking.agent_idle_s)
        else:
            logger = ProcessLogger()
        logger.send({"tracking": tracking.model_dump(mode="json") | {"uri": uri}, "run_name": run_name,
                     "params": params})
        return cls(logger)

    def finish(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        """Log the results, end the run FINISHED; a tracking failure is an error here."""
        if self.logger is None:
            return
        self.logger.send({"status": "FINISHED", "metrics": metrics, "artifacts": [str(a) for a in artifacts]})
        failure = self.logger.close()
        if failure is not None:
            raise RejuvError(
                f"the checkpoint is written, but logging the run to MLflow failed ({failure}); "
                "check --tracking-uri / $MLFLOW_TRACKING_URI, or pass --no-track"
            )

    def fail(self) -> None:
        """End the run FAILED; the work's error, not a tracking one, is what the caller raises."""
        if self.logger is None:
            return
        self.logger.send({"status": "FAILED"})
        failure = self.logger.close()
        if failure is not None:
            warnings.warn(f"the failed run could not be logged to MLflow ({failure})", stacklevel=2)


class _Ended(Exception):
    """Raised inside the MLflow run to end it with the command's status (FAILED)."""


def log_side_run(lines, lock: AbstractContextManager | None = None) -> None:
    """The logger's side of the protocol: the start message, then the end message; EOF before
    the end (the command died) ends the run FAILED too. `lock`: held while the run is opened,
    since mlflow's active experiment is process-global (an agent logs runs in threads)."""
    from rayrejuv.runs.tracking import tracked_run

    start = json.loads(next(lines))
    with ExitStack() as stack:
        stack.enter_context(_swallow_ended())
        with lock or nullcontext():
            run = stack.enter_context(tracked_run(TrackingConfig.model_validate(start["tracking"]), start["run_name"]))
            run.log_params(start["params"])
        end = json.loads(next(lines, '{"status": "FAILED"}'))
        if end["status"] != "FINISHED":
            raise _Ended(end["status"])  # tracked_run ends the run FAILED
        run.log_metrics(end["metrics"])
        for path in end["artifacts"]:
            run.log_artifact(path)


class _swallow_ended(AbstractContextManager):
    def __exit__(self, kind, value, tb) -> bool:
        return kind is _Ended


if __name__ == "__main__":
    log_side_run(iter(sys.stdin))
    # The run is ended and every write committed: skip the interpreter's teardown, which frees
    # mlflow's and SQLAlchemy's modules for ~1 s (measured) while the command waits for this exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
