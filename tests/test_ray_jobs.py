"""The cluster workflow of jobs/README.md, for real on one machine: a two-node Ray cluster started
with `ray start` (token auth on), an MLflow tracking server, and `ray job submit ... -- python -m
rayrejuv demo --tracking-uri http://...` reaching SUCCEEDED with its runs in the server.

Everything runs in its own processes with a private HOME and Ray temp dir; the token is passed
as RAY_AUTH_TOKEN, so no ~/.ray/auth_token is written anywhere. Teardown ends only the processes
this test started: the `ray start --block` and `mlflow server` process groups, then any leftover
process of this cluster's temp dir, by pid (never `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _ray_local import BIN, LocalCluster, dies_with_us, free_ports, kill_groups, tool, wait_for

# the whole demo as a job on a two-node cluster: 556 s wall / 700 CPU-s measured on 2 shared cores, so out of the
# default run (CI runs `-m slow`); the job alone may take up to 900 s, hence the longer per-test limit
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]


def _http_ok(url: str, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _node_ids(c: LocalCluster) -> list[str]:
    code = (
        f"import ray; ray.init(address={c.address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
    )
    r = subprocess.run([sys.executable, "-c", code], env=c.env, capture_output=True, text=True, timeout=120)
    return r.stdout.strip().splitlines()[-1].split() if r.returncode == 0 and r.stdout.strip() else []


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    e.update(
        HOME=str(home),  # nothing of the real ~/.ray is read or written
        PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}",  # `python` in the job entry point = this venv
        RAY_AUTH_MODE="token",  # the same on every node, the job driver and every client
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM to `ray start --block`: stop now, no 30 s drain
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return e


@pytest.fixture
def cluster(tmp_path, env):
    """Head + one worker node via `ray start --block`, each 1 CPU, with the dashboard (the job API)."""
    c = LocalCluster(env, tmp_path / "ray-logs", nodes=2, cpus=1, dashboard=True)
    try:
        c.start()
        version = f"{c.dashboard_url}/api/version"
        wait_for("Ray dashboard", lambda: c.alive() and _http_ok(version, env["RAY_AUTH_TOKEN"]), 120)
        wait_for("two Ray nodes", lambda: c.alive() and len(_node_ids(c)) == 2, 120, every=3)
        yield c
    finally:
        c.stop()
    assert not c.leftovers(), "Ray processes of the test cluster survived teardown"


@pytest.fixture
def mlflow_server(tmp_path, env):
    (port,) = free_ports(1)
    store = tmp_path / "mlflow"
    store.mkdir()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        tool("mlflow")
        + [
            "server",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--backend-store-uri=sqlite:///{store / 'mlflow.db'}",
            f"--artifacts-destination={store / 'artifacts'}",
            "--workers=1",
        ],
        cwd=store,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_us,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("MLflow server", lambda: proc.poll() is not None or _http_ok(f"{url}/health"), 120)
        assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
        yield url
    finally:
        kill_groups([proc])


def _ray(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(tool("ray") + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_demo_logs_to_mlflow_server(tmp_path, env, cluster, mlflow_server):
    from mlflow import MlflowClient

    assert not _http_ok(f"{cluster.dashboard_url}/api/version"), "token auth is off: the job API answers anyone"
    # the job's working_dir: a copy of the package (what `--working-dir .` uploads, minus the rest)
    work = tmp_path / "working_dir"
    shutil.copytree(ROOT / "rayrejuv", work / "rayrejuv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work)
    out = tmp_path / "demo-out"  # "shared storage": both nodes are on this machine
    job_id = f"rayrejuv-test-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    r = _ray(
        env,
        "job",
        "submit",
        f"--address={cluster.dashboard_url}",
        f"--submission-id={job_id}",
        f"--working-dir={work}",
        "--runtime-env-json",
        json.dumps({"env_vars": {"RAY_AUTH_MODE": "token"}}),
        "--no-wait",
        "--",
        "python",
        "-m",
        "rayrejuv",
        "demo",
        "--quick",
        "--out",
        str(out),
        "--tracking-uri",
        mlflow_server,
        "--quiet",
    )
    assert r.returncode == 0, r.stdout + r.stderr

    def status() -> str | None:  # "Job 'ID' succeeded" / "... is currently RUNNING", with colour codes
        s = _ray(env, "job", "status", f"--address={cluster.dashboard_url}", job_id)
        text = re.sub(r"\x1b\[[0-9;]*m", "", s.stdout + s.stderr).upper()
        found = re.findall(r"\b(SUCCEEDED|FAILED|STOPPED)\b", text)
        return found[-1] if found else None

    def logs() -> str:
        return _ray(env, "job", "logs", f"--address={cluster.dashboard_url}", job_id).stdout[-4000:]

    try:
        final = wait_for(f"job {job_id}", status, timeout=900, every=3)
    except TimeoutError:
        pytest.fail(f"job {job_id} did not finish in 900 s:\n{logs()}")
    seconds = time.monotonic() - t0
    assert final == "SUCCEEDED", logs()
    print(f"job {job_id} SUCCEEDED in {seconds:.1f}s")

    reports = [json.loads(p.read_text()) for p in out.rglob("rejuvenation_report.json")]
    assert reports and all(rep["execution"]["mode"] == "ray" for rep in reports)
    # the job's actors ran on this two-node cluster, not on a local instance of their own
    nodes = set(_node_ids(cluster))
    assert len(nodes) == 2 and all(set(rep["execution"]["nodes"]) <= nodes for rep in reports), nodes

    client = MlflowClient(mlflow_server)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert runs, "no run reached the MLflow server"
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert len(runs) >= len(reports) and any(run.data.params for run in runs)
    _check_demo_outputs(out, runs)


def _check_demo_outputs(out: Path, runs) -> None:
    """results.json follows the issue's schema and agrees with the checkpoints it came from; every
    phase is a child run of the demo's one parent run."""
    from rayrejuv.commands.demo.driver import EvalSets
    from rayrejuv.commands.demo.results import STARTS
    from rayrejuv.commands.testbed.driver import WorldLayout
    from rayrejuv.models.evaluate import score_checkpoint

    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1] and list(res["rows"]) == list(STARTS)
    for row in res["rows"].values():
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        for k in ("id_after", "ood_after"):
            assert row[k] == pytest.approx(sum(r[k] for r in row["per_seed"]) / 2, abs=1e-12)
        assert all(0.0 <= row[k] <= 1.0 for k in ("id_before", "id_after", "ood_before", "ood_after"))
        assert row["entropy_before"] > 0 and all(len(r["rewards"]) == 3 for r in row["per_seed"])
    for name in ("table.md", "pass_at_1.png", "rewards.png"):
        assert (out / name).stat().st_size > 0
    # the numbers re-measured from the checkpoints they name (greedy decoding: exact)
    from rayrejuv.commands.demo.config import QUICK, DemoConfig

    cfg = DemoConfig.model_validate({**QUICK, "out": out})
    diagnosis = json.loads((out / "diagnose" / "diagnose.json").read_text())
    assert diagnosis["config"]["max_examples"] == cfg.eval.diagnose_examples == 16  # not eval.examples (24)
    evals = EvalSets.of(cfg, WorldLayout(out / "testbed"))
    start = score_checkpoint(out / "oversft_rejuvenation", evals.splits(), evals.entropy_rows, 32, "auto")
    row = res["rows"]["oversft_rejuvenation"]
    assert (start["id"], start["ood"]) == (row["id_before"], row["ood_before"])
    assert start["entropy"] == pytest.approx(row["entropy_before"], rel=1e-6)
    run = res["rows"]["modsft"]["per_seed"][1]
    final = score_checkpoint(Path(run["run_dir"]) / "final", evals.splits(), evals.entropy_rows, 32, "auto")
    assert (final["id"], final["ood"]) == (run["id_after"], run["ood_after"])

    parents = [r for r in runs if r.info.run_name == "demo"]
    assert len(parents) == 1
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    expected = {"testbed", "diagnose", "oversft_fusion", "oversft_rejuvenation"}
    expected |= {f"rl:{s}:seed-{k}" for s in STARTS for k in (0, 1)}
    assert expected <= children, expected - children
    assert parents[0].data.metrics["oversft_rejuvenation.id_after"] == pytest.approx(row["id_after"])
