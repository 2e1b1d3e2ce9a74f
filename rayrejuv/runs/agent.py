"""The tracking agent: one long-lived process per local MLflow store, logging many commands' runs.

A command that tracks would pay MLflow's start-up (~3 s of CPU, see side_run.py) on every run;
the agent pays it once and serves every command that logs to the same store until it has been
idle for `tracking.agent_idle_s` seconds (or its store or socket is removed). It listens on a
Unix socket only its user can reach (`$TMPDIR/rayrejuv-<uid>/`, mode 0700; no network port),
named by the store's URI and a hash of this code, so a changed rayrejuv never talks to an agent
that runs older code. Each connection is one run (side_run.log_side_run in a thread); the agent
answers `{"ok": true}` or the error once the run is ended, so a command returns only when its run
is committed. Its own output goes to `<socket>.log`; it runs in the store's directory, where MLflow
puts the artifacts (`./mlruns`) as it would for the default store of a command run there.

    command                                   agent (python -P -m rayrejuv.runs.agent SOCK URI IDLE)
    AgentLogger(uri): connect, or spawn ---->  bind, listen, import mlflow, open the store
    send(start) ... work ... send(end)  ---->  tracked_run(...) in a thread
    close(): wait for the answer        <----  {"ok": true}
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

from rayrejuv.errors import RejuvError
from rayrejuv.runs.side_run import WAIT_S, log_side_run
from rayrejuv.runs.tracking import sqlite_path

START_S = 120  # an agent that cannot take a connection this long after its spawn is broken


def socket_path(uri: str) -> Path:
    """Per user, per store, per version of the code that logs (this file and the logging protocol)."""
    here = Path(__file__).parent
    code = b"".join((here / name).read_bytes() for name in ("agent.py", "side_run.py", "tracking.py"))
    key = hashlib.sha256(uri.encode() + code + metadata.version("mlflow").encode()).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"rayrejuv-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)  # AF_UNIX paths are limited to 107 bytes: keep it short
    return directory / f"track-{key}.sock"


class AgentLogger:
    """The command's side: messages are kept, so a connection lost to an agent that was just
    exiting (idle) is replayed whole to a fresh agent."""

    def __init__(self, uri: str, idle_s: float):
        self.uri, self.idle_s, self.path = uri, idle_s, socket_path(uri)
        self.sent: list[str] = []
        self.conn = self._connect()

    def send(self, message: dict) -> None:
        self.sent.append(json.dumps(message) + "\n")
        try:
            self.conn.sendall(self.sent[-1].encode())
        except OSError:
            pass  # the agent went away; close() replays to a new one

    def close(self) -> str | None:
        """Wait until the run is ended; None on success, else what failed."""
        for _ in range(2):
            answer = self._answer()
            if answer is not None:
                return None if answer["ok"] else f"tracking agent: {answer['error']}; its log: {self.path}.log"
            self.conn = self._connect()  # no answer: the agent was exiting as we connected
            for line in self.sent:
                self.conn.sendall(line.encode())
        return f"the tracking agent closed the connection twice without an answer; its log: {self.path}.log"

    def _answer(self) -> dict | None:
        try:
            self.conn.shutdown(socket.SHUT_WR)  # EOF: no more messages
        except OSError:
            pass  # the agent already closed its side: its answer may still be there to read
        try:
            self.conn.settimeout(WAIT_S)
            with self.conn.makefile("r", encoding="utf-8") as f:
                line = f.readline()
        except OSError:
            line = ""
        finally:
            self.conn.close()
        return json.loads(line) if line else None

    def _connect(self) -> socket.socket:
        conn = _try_connect(self.path)
        if conn is not None:
            return conn
        log = open(f"{self.path}.log", "a")
        agent = subprocess.Popen(  # its own session: it outlives this command and its Ctrl-C
            [sys.executable, "-P", "-m", __name__, str(self.path), self.uri, str(self.idle_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=_store_dir(self.uri))
        log.close()
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            conn = _try_connect(self.path)
            if conn is not None:
                return conn
            if agent.poll() not in (None, 0):
                break
            time.sleep(0.02)
        raise RejuvError(
            f"the MLflow tracking agent for {self.uri} did not start (exit {agent.poll()}); its log: "
            f"{self.path}.log. Pass --no-track, or set tracking.agent_idle_s: 0 to log from a side process"
        )


def _try_connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:  # no agent, or a stale socket of one that died
        conn.close()
        return None


class Agent:
    """The agent process: accept runs until idle, each in a thread."""

    def __init__(self, path: Path, uri: str, idle_s: float):
        self.path, self.uri, self.idle_s = path, uri, idle_s
        self.lock = threading.Lock()  # mlflow's active experiment is process-global
        self.active, self.last = 0, time.monotonic()
        self.failure: str | None = None  # the store could not be opened: every run is answered with it

    def serve(self) -> None:
        server = self._bind()
        if server is None:
            return  # another agent took the socket first: it serves
        inode = self.path.stat().st_ino
        try:
            _warm_up(self.uri)  # connections wait in the backlog meanwhile
        except Exception as e:
            self.failure, self.idle_s = f"{type(e).__name__}: {e}", 1.0  # answer who is waiting, then exit
        self._count(0)  # idle from now: the connections in the backlog are accepted next
        server.settimeout(1.0)
        try:
            while not self._should_exit(inode):
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                self._count(+1)
                threading.Thread(target=self._handle, args=(conn,)).start()
        finally:
            if _inode(self.path) == inode:
                self.path.unlink()
            server.close()

    def _bind(self) -> socket.socket | None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.path.exists():
            live = _try_connect(self.path)
            if live is not None:
                live.close()
                return None
            self.path.unlink(missing_ok=True)  # stale: its agent died without removing it
        server.bind(str(self.path))
        server.listen(64)
        return server

    def _should_exit(self, inode: int) -> bool:
        """Only between runs (exiting kills the threads); when idle, or the socket was removed or
        replaced, or the store's file was deleted."""
        with self.lock:
            if self.active:
                return False
            idle = time.monotonic() - self.last > self.idle_s
        return idle or _inode(self.path) != inode or (self.failure is None and not _store_exists(self.uri))

    def _count(self, delta: int) -> None:
        with self.lock:
            self.active += delta
            self.last = time.monotonic()

    def _handle(self, conn: socket.socket) -> None:
        try:
            answer = {"ok": False, "error": self.failure}
            if self.failure is None:
                with conn.makefile("r", encoding="utf-8") as lines:
                    try:
                        log_side_run(iter(lines), self.lock)
                        answer = {"ok": True}
                    except Exception as e:  # the command reports it; the agent serves the next run
                        answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            conn.sendall((json.dumps(answer) + "\n").encode())
        except OSError:
            pass  # the command died: its run was ended FAILED at EOF
        finally:
            conn.close()
            self._count(-1)


def _warm_up(uri: str) -> None:
    """Import mlflow and open the store (creating its tables if new) before the first run."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(uri).search_experiments(max_results=1)


def _store_dir(uri: str) -> Path:
    """The agent's working directory: a sqlite store's directory (its nearest existing one), where
    MLflow puts the store's artifacts (`./mlruns`), as it does for the default store of a command
    run there; whichever command started the agent, a store keeps its artifacts beside it."""
    db = sqlite_path(uri)
    directory = Path.cwd() if db is None else db.parent
    while not directory.is_dir():
        directory = directory.parent
    return directory


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _store_exists(uri: str) -> bool:
    """A sqlite store whose file was deleted (a test's temporary directory) needs no agent."""
    db = sqlite_path(uri)
    return db is None or db.exists()


if __name__ == "__main__":
    Agent(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])).serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # every run is ended and committed: skip freeing mlflow's modules
