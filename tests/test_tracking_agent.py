"""The tracking agent (runs/agent.py): one process per local store logs many commands' runs."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.runs.agent import AgentLogger, socket_path
from rayrejuv.runs.side_run import SideRun


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Sockets under this test's own TMPDIR: its agents are its own (AF_UNIX paths stay short)."""
    short = tempfile.mkdtemp(prefix="ag", dir="/tmp")
    monkeypatch.setenv("TMPDIR", short)
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield tmp_path
    for sock in (p for p in os.scandir(f"{short}/rayrejuv-{os.getuid()}") if p.name.endswith(".sock")):
        os.unlink(sock.path)  # an agent exits within a second once its socket is gone


def _agent_pid(path) -> int:
    """The pid of the process listening on the socket (from /proc: the socket's inode)."""
    inode = os.stat(path).st_ino
    with open("/proc/net/unix") as f:
        socks = {line.split()[6] for line in f if line.rstrip().endswith(str(path))}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in socks:
                return int(pid)
    raise AssertionError(f"no process listens on {path} (inode {inode})")


def _alive(pid: int) -> bool:
    """Running, not a zombie: this test process spawned the agent, so it is its parent until reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _runs(uri, experiment):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_two_commands_share_one_agent_and_each_run_is_committed_before_finish_returns(private_tmp):
    uri = f"sqlite:///{private_tmp / 'mlflow.db'}"
    tracking = TrackingConfig(uri=uri, experiment="agent", agent_idle_s=30)
    first = SideRun.start(tracking, "first", {"alpha": 0.5})
    (private_tmp / "report.json").write_text("{}")
    first.finish({"reset_count": 3.0}, [private_tmp / "report.json"])
    pid = _agent_pid(socket_path(uri))
    second = SideRun.start(tracking.model_copy(update={"experiment": "other"}), "second", {"alpha": 0.7})
    second.finish({"reset_count": 4.0}, [])
    assert _agent_pid(socket_path(uri)) == pid  # the second command found the first's agent

    runs = _runs(uri, "agent")
    assert set(runs) == {"first"} and runs["first"].info.status == "FINISHED"
    assert runs["first"].data.params["alpha"] == "0.5" and runs["first"].data.metrics["reset_count"] == 3.0
    # artifacts beside the store (the agent runs in its directory), not in whichever cwd started it
    assert runs["first"].info.artifact_uri.startswith(str(private_tmp / "mlruns"))
    assert (private_tmp / "mlruns").is_dir() and not (Path.cwd() / "mlruns" / runs["first"].info.experiment_id /
                                                       runs["first"].info.run_id).exists()
    other = _runs(uri, "other")
    assert other["second"].data.params["alpha"] == "0.7" and other["second"].info.status == "FINISHED"


def test_concurrent_runs_keep_their_experiments_and_a_failed_one_ends_failed(private_tmp):
    uri = f"sqlite:///{private_tmp / 'mlflow.db'}"
    base = TrackingConfig(uri=uri, agent_idle_s=30)
    a = SideRun.start(base.model_copy(update={"experiment": "a"}), "ra", {"k": 1})
    b = SideRun.start(base.model_copy(update={"experiment": "b"}), "rb", {"k": 2})  # both open at once
    b.fail()
    a.finish({"m": 1.0}, [])
    assert _runs(uri, "a")["ra"].info.status == "FINISHED"
    assert _runs(uri, "b")["rb"].info.status == "FAILED"


def test_a_command_that_dies_leaves_its_run_failed_and_the_agent_serving(private_tmp):
    uri = f"sqlite:///{private_tmp / 'mlflow.db'}"
    dying = AgentLogger(uri, 30)
    dying.send({"tracking": TrackingConfig(uri=uri, experiment="d").model_dump(mode="json"), "run_name": "dead",
                "params": {}})
    dying.conn.close()  # the command is gone before its end message
    after = SideRun.start(TrackingConfig(uri=uri, experiment="d", agent_idle_s=30), "alive", {})
    after.finish({}, [])
    deadline = time.monotonic() + 30
    while _runs(uri, "d")["dead"].info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = _runs(uri, "d")
    assert runs["dead"].info.status == "FAILED" and runs["alive"].info.status == "FINISHED"


def test_the_agent_exits_when_idle_and_a_new_one_starts_for_the_next_command(private_tmp):
    uri = f"sqlite:///{private_tmp / 'mlflow.db'}"
    tracking = TrackingConfig(uri=uri, experiment="idle", agent_idle_s=1)
    SideRun.start(tracking, "one", {}).finish({}, [])
    path = socket_path(uri)
    pid = _agent_pid(path)
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not path.exists()
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    SideRun.start(tracking, "two", {}).finish({}, [])
    assert _agent_pid(path) != pid
    assert {r.info.status for r in _runs(uri, "idle").values()} == {"FINISHED"}


def test_a_store_the_agent_cannot_open_is_an_error_naming_its_log(private_tmp):
    from rayrejuv.errors import RejuvError

    (private_tmp / "a-file").write_text("not a directory")
    uri = f"sqlite:///{private_tmp / 'a-file' / 'mlflow.db'}"
    run = SideRun.start(TrackingConfig(uri=uri, agent_idle_s=30), "x", {})
    with pytest.raises(RejuvError, match=r"logging the run to MLflow failed \(tracking agent: .*its log: .*\.log"):
        run.finish({}, [])


def test_a_remote_store_or_idle_0_uses_a_side_process_of_the_command(private_tmp):
    from rayrejuv.runs.side_run import ProcessLogger

    uri = f"sqlite:///{private_tmp / 'mlflow.db'}"
    run = SideRun.start(TrackingConfig(uri=uri, experiment="p", agent_idle_s=0), "proc", {"q": 1})
    assert isinstance(run.logger, ProcessLogger)
    run.finish({}, [])
    assert not socket_path(uri).exists()
    assert _runs(uri, "p")["proc"].info.status == "FINISHED"
    remote = SideRun.start(TrackingConfig(uri="http://127.0.0.1:1", agent_idle_s=30), "r", {})
    assert isinstance(remote.logger, ProcessLogger)
    remote.logger.proc.send_signal(signal.SIGKILL)
    remote.logger.close()


def test_socket_names_differ_by_store_and_the_directory_is_private(private_tmp):
    a, b = socket_path("sqlite:////x/a.db"), socket_path("sqlite:////x/b.db")
    assert a != b and a.parent == b.parent and len(str(a)) < 107
    assert oct(a.parent.stat().st_mode & 0o777) == oct(0o700)
