"""Whole-process wall time and peak memory of a command and all its descendants.

The command runs under maxrss_launcher.py (a small forked helper, see there for why).
Two memory numbers are taken for every run, because each alone can under-report:

* ``peak_tree_rss``: a poller thread sums RSS over the command and all its live
  descendants every ``poll_interval_s`` and keeps the maximum. This sees processes that
  run concurrently (e.g. Ray workers), but can miss a spike shorter than the interval.
  ``peak_tree_anon`` is the same sum over ``rss - shared`` (anonymous memory only: pages
  of mmap'ed files and shared memory excluded).
* ``max_single_rss``: the kernel's exact high-water mark (``ru_maxrss`` from
  ``wait4()``) of the command and every descendant it reaped: a max over single
  processes, not a sum.

``peak_rss`` = max of the two: exact for a single-process command, and otherwise a
lower bound of the true tree peak that is off by at most a sub-interval spike.
Wall time is the launcher's, from just before fork to the reaping of the command.

``other_cpu_s`` is the machine's busy CPU time during the run minus the command's own
(and the small overhead of the launcher and poller): when it is not near zero, other
work competed for the CPUs and the wall time is inflated.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

LAUNCHER = Path(__file__).resolve().parent / "maxrss_launcher.py"


@dataclasses.dataclass
class Measurement:
    label: str
    argv: list[str]
    returncode: int
    wall_s: float
    peak_tree_rss_bytes: int
    peak_tree_anon_bytes: int
    max_single_rss_bytes: int
    cpu_s: float
    other_cpu_s: float
    samples: int
    log_path: str

    @property
    def peak_rss_bytes(self) -> int:
        return max(self.peak_tree_rss_bytes, self.max_single_rss_bytes)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "peak_rss_bytes": self.peak_rss_bytes}


class _TreePoller(threading.Thread):
    """Samples the summed RSS of all descendants of ``launcher_pid`` until stopped."""

    def __init__(self, launcher_pid: int, interval_s: float):
        super().__init__(daemon=True)
        self._launcher_pid = launcher_pid
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._processes: dict[int, psutil.Process] = {}
        self.peak_rss = 0
        self.peak_anon = 0
        self.samples = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            launcher = psutil.Process(self._launcher_pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.is_set():
            self._sample(launcher)
            self._stop_event.wait(self._interval_s)

    def _descendants(self, launcher: psutil.Process) -> list[psutil.Process]:
        try:
            found = launcher.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # Reuse Process objects so psutil can detect pid reuse via create_time.
        return [self._processes.setdefault(p.pid, p) for p in found]

    def _sample(self, launcher: psutil.Process) -> None:
        rss = anon = 0
        for proc in self._descendants(launcher):
            try:
                info = proc.memory_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            anon += info.rss - info.shared
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.samples += 1


def _busy_cpu_s() -> float:
    """Machine-wide non-idle CPU seconds since boot, all CPUs together."""
    not_busy = {"idle", "iowait", "steal", "guest", "guest_nice"}  # guest is inside user
    return sum(v for k, v in psutil.cpu_times()._asdict().items() if k not in not_busy)


def measure(
    label: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    poll_interval_s: float,
    cwd: Path | None = None,
) -> Measurement:
    """Run ``argv`` to completion (in ``cwd``, default this process's), with stdout+stderr to
    ``log_path``; measure it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "wb") as log:
        result_path = Path(tmp) / "result.json"
        launcher_argv = [sys.executable, "-I", "-S", str(LAUNCHER), str(result_path), "--",
                         *argv]
        launcher = subprocess.Popen(launcher_argv, env=env, stdout=log, cwd=cwd,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        busy_before = _busy_cpu_s()
        poller = _TreePoller(launcher.pid, poll_interval_s)
        poller.start()
        launcher_rc = launcher.wait()
        busy_s = _busy_cpu_s() - busy_before
        poller.stop()
        poller.join()
        if launcher_rc != 0 or not result_path.exists():
            raise RuntimeError(f"maxrss_launcher failed (rc={launcher_rc}); see {log_path}")
        result = json.loads(result_path.read_text())
    return Measurement(
        label=label,
        argv=list(argv),
        returncode=result["returncode"],
        wall_s=result["wall_s"],
        peak_tree_rss_bytes=poller.peak_rss,
        peak_tree_anon_bytes=poller.peak_anon,
        max_single_rss_bytes=result["ru_maxrss_kib"] * 1024,  # Linux reports KiB
        cpu_s=result["cpu_s"],
        other_cpu_s=max(0.0, busy_s - result["cpu_s"]),
        samples=poller.samples,
        log_path=str(log_path),
    )
