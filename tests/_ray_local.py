"""Ray instances a test starts and stops itself, safe on a machine shared with other Ray users.

Every port comes from the OS, every node has its own short temp dir (unix socket paths are
limited to ~107 bytes), each `ray start --block` runs in its own session and process group, and
teardown ends only those groups, then, by pid, any process left in those sessions or naming one
of this cluster's temp dirs. Never `ray stop`: it stops every Ray instance on the machine.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
READY = "will now block forever"  # `ray start --block` prints it once the node is up and its address written
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork (preexec_fn runs in the child)
PR_SET_PDEATHSIG = 1


def dies_with_us() -> None:
    """preexec_fn for a process started in a session of its own: SIGKILL it when the test process
    dies, even by os._exit (pytest-timeout's thread method), so no test's cluster outlives the run.
    Ray's node processes share the fate of `ray start --block` (PR_SET_PDEATHSIG too); its dashboard and
    runtime-env agents notice the raylet is gone and exit (measured: within ~75 s)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS reports free now (bound together, so no two are equal)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def short_temp_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def tool(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    modules = {"ray": "ray.scripts.scripts", "mlflow": "mlflow.cli"}
    return [sys.executable, "-c", f"import sys; from {modules[name]} import cli; sys.exit(cli())"]


def wait_for(what: str, ok, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def kill_groups(procs: list[subprocess.Popen], grace: float = 40.0) -> None:
    """SIGTERM the process groups we started, all at once (Ray nodes drain in parallel), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def our_processes(sessions: set[int] = frozenset(), markers: list[str] = ()) -> list:
    """The processes we started: those in one of `sessions` (the pids of processes we started with
    start_new_session; Ray workers leave the process group but keep the session), those whose
    command line names one of `markers` (temp dirs only we use), and all their descendants (a Ray
    job's driver runs in a session of its own)."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if os.getsid(p.pid) in sessions or any(m in part for m in markers for part in p.info["cmdline"] or []):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    return list(found.values())


def kill_ours(sessions: set[int] = frozenset(), markers: list[str] = (), timeout: float = 30.0) -> list:
    """SIGKILL, by pid, every process `our_processes` finds; return those still alive after `timeout`."""
    import psutil

    procs = our_processes(sessions, markers)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


class LocalCluster:
    """A head and `nodes - 1` workers via `ray start --block`, `cpus` each, all ports chosen here."""

    def __init__(self, env: dict, logs: Path, nodes: int = 1, cpus: int = 1, dashboard: bool = False):
        self.env, self.logs, self.nodes, self.cpus, self.dashboard = env, Path(logs), nodes, cpus, dashboard
        # one temp dir per node (short: unix socket paths), as on separate machines: nodes sharing one
        # would unpack a job's working_dir into the same runtime_resources directory, racing
        self.temp_dirs = [short_temp_dir(f"rj{i}") for i in range(nodes)]
        self.logs.mkdir(parents=True, exist_ok=True)
        self._logs_open: list = []
        self.procs: list[subprocess.Popen] = []
        (self.port, self.dashboard_port, self.client_port, *self.node_ports) = free_ports(3 + 5 * nodes)
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def _node_flags(self, i: int) -> list[str]:
        p = self.node_ports[5 * i : 5 * i + 5]
        return [
            f"--num-cpus={self.cpus}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dirs[i]}",
            f"--dashboard-agent-listen-port={p[0]}",
            f"--dashboard-agent-grpc-port={p[1]}",
            f"--metrics-export-port={p[2]}",
            f"--runtime-env-agent-port={p[3]}",
            f"--object-manager-port={p[4]}",
            "--disable-usage-stats",
            "--block",
        ]

    def _log(self, i: int) -> Path:
        return self.logs / f"node{i}.log"

    def _start_node(self, i: int, args: list[str], timeout: float = 180, attempts: int = 2) -> None:
        """Start node i; once more if it exits early (Ray gives a node 30 s, fixed, to register with
        the GCS: on a loaded machine that can fail)."""
        for attempt in range(attempts):
            log = open(self._log(i), "w")
            self._logs_open.append(log)
            proc = subprocess.Popen(
                tool("ray") + ["start", *args, *self._node_flags(i)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_us,
            )
            self.procs.append(proc)
            try:
                wait_for(f"ray start (node {i})", lambda: self.alive() and READY in self._log(i).read_text(), timeout)
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                kill_ours({proc.pid}, [self.temp_dirs[i]])
                self.procs.remove(proc)

    def start(self) -> LocalCluster:
        self._start_node(
            0,
            [
                "--head",
                f"--port={self.port}",
                f"--dashboard-port={self.dashboard_port}",
                f"--include-dashboard={str(self.dashboard).lower()}",
                f"--ray-client-server-port={self.client_port}",
            ],
        )
        for i in range(1, self.nodes):
            self._start_node(i, [f"--address={self.address}"])
        return self

    def alive(self) -> bool:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise RuntimeError(f"ray start (node {i}) exited: {self._log(i).read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        kill_groups(self.procs)
        kill_ours(self._sessions(), self.temp_dirs)  # what left its group (workers, job drivers), ours only
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        for f in self._logs_open:
            f.close()

    def _sessions(self) -> set[int]:
        return {p.pid for p in self.procs}

    def leftovers(self) -> list:
        return our_processes(self._sessions(), self.temp_dirs)
