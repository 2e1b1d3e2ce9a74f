"""rayrejuv tune on tiny models: trials finish as nested MLflow runs, the best config reproduces its
checkpoint; ASHA stops a designed-bad trial; resume skips finished trials; a raising trial is
retried then recorded as failed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _ray_local import dies_with_us, kill_ours, short_temp_dir
from conftest import load_tensors, same_bits

PROBE = {"steps": 2, "report_every": 1,
         "rl": {"grpo": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8, "lr": 1e-3, "beta": 0.0}}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from rayrejuv.testbed.adder import build_adder, rows

    out = tmp_path_factory.mktemp("pair")
    torch.set_num_threads(1)
    try:
        build_adder(out / "base", sft_epochs=0.01, max_n=3)  # one step: same init, little training
        sft = build_adder(out / "sft", sft_epochs=3, max_n=3)
    finally:
        torch.set_num_threads(2)
    calib = out / "calib.jsonl"
    calib.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n"
                             for r in rows(8, 9, 3)))
    return {"base": out / "base" / "model", "sft": sft["model"], "calibration": calib, "train_data": sft["train"],
            "eval_data": sft["eval"]}


def tune_config(pair, out, **kw):
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.config.base import merge_overrides

    space = kw.pop("space", {"alpha": {"low": 0.5, "high": 0.9}, "reset_ratio": {"choices": [0.01, 0.02]}})
    values = {**pair, "out": out, "probe": PROBE, "eval_examples": 8, "num_samples": 4, "max_concurrent": 2,
              "tracking": {"enabled": False}}
    return TuneConfig.model_validate({**merge_overrides(values, kw), "space": space})


@pytest.mark.slow  # 192 s wall / 273 CPU-s on 2 shared cores; the parts run by default in test_tune_parts.py
def test_search_logs_nested_runs_and_best_config_reproduces_its_checkpoint(pair, tmp_path, monkeypatch):
    import mlflow

    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.commands.rejuvenate.driver import rejuvenate
    from rayrejuv.commands.tune.driver import run_tune

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"enabled": True, "uri": uri, "experiment": "t"}
    summary = run_tune(tune_config(pair, tmp_path / "search", tracking=tracking), False)
    board = summary.leaderboard
    assert len(board) == 4 and all(r.status in ("finished", "stopped early") for r in board)
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("t").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}  # stopped trials closed as KILLED
    assert (tmp_path / "search" / "objective_vs_params.png").exists()

    best = yaml.safe_load(Path(summary.best_yaml).read_text())
    again = RejuvenateConfig.model_validate({**best, "out": tmp_path / "again", "tracking": {"enabled": False}})
    rejuvenate(again, progress=False)
    a, b = load_tensors(summary.best_checkpoint), load_tensors(tmp_path / "again")
    assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_asha_stops_a_designed_bad_trial(pair, tmp_path):
    """alpha 0 is the barely trained base (reward -1 at every probe step); alpha 1 the SFT model.
    One trial at a time: the base-like trials fall below the rung of the SFT-like ones."""
    from rayrejuv.commands.tune.driver import run_tune

    cfg = tune_config(pair, tmp_path / "s", num_samples=2, max_concurrent=1, search_alg="random",
                      space={"alpha": {"choices": [1.0, 0.0], "grid": True}}, probe={"steps": 4, "report_every": 1})
    board = run_tune(cfg, False).leaderboard
    assert len(board) == 4
    assert [r for r in board if r.params["alpha"] == 0.0 and r.status == "stopped early"]
    assert all(r.status == "finished" for r in board if r.params["alpha"] == 1.0)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # waits up to 900 s for two trials, then up to 900 s for the resumed search
def test_killed_search_resumes_without_rerunning_finished_trials(pair, tmp_path):
    out = tmp_path / "s"
    yaml_cfg = tmp_path / "t.yaml"
    yaml_cfg.write_text(yaml.safe_dump({"probe": PROBE, "eval_examples": 8, "keep_best": 4, "asha": False,
                                        "space": {"alpha": {"low": 0.5, "high": 0.9}}}))
    args = [sys.executable, "-m", "rayrejuv.cli", "tune", *[a for k, v in pair.items()
            for a in (f"--{k.replace('_', '-')}", str(v))], "--out", str(out), "--num-samples", "4",
            "--max-concurrent", "1", "--config", str(yaml_cfg), "--no-track", "--quiet"]
    ray_tmp = short_temp_dir("rjk")  # the driver's local Ray instance lives here, and only it
    env = {**os.environ, "HOME": str(tmp_path), "RAY_TMPDIR": ray_tmp}
    p = subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=dies_with_us)
    try:
        # two trials reported their result and the third started: Tune has recorded the first two
        deadline = time.monotonic() + 900
        while len(list(out.glob("trials/*/result.json"))) < 2 or len(list(out.glob("trials/*"))) < 3:
            assert p.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "no two trials finished in 900 s"
            time.sleep(1)
        time.sleep(3)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        # the killed driver's local Ray instance: its processes only, by pid (never `ray stop`)
        assert not kill_ours({p.pid}, [ray_tmp]), "processes of the killed search's Ray survived SIGKILL"
        finished_before = {d.parent.name for d in out.glob("trials/*/result.json")}
        subprocess.run([*args, "--resume"], env=env, check=True, timeout=900)
    finally:  # the driver's session (its Ray workers too) and whatever names the temp dir: ours only
        kill_ours({p.pid}, [ray_tmp])
        shutil.rmtree(ray_tmp, ignore_errors=True)
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board) == 4 and all(r["status"] == "finished" for r in board)
    for trial in finished_before:  # started once, never again
        assert len((out / "trials" / trial / "attempts.log").read_text().splitlines()) == 1


@pytest.mark.slow
def test_a_raising_trial_is_retried_then_recorded_failed(pair, tmp_path):
    from rayrejuv.commands.tune.driver import run_tune

    cfg = tune_config(pair, tmp_path / "s", num_samples=1, max_concurrent=1, search_alg="random", asha=False,
                      keep_best=4, space={"selection": {"choices": ["aggregate", "no-such-selector"], "grid": True}})
    board = run_tune(cfg, False).leaderboard
    bad = [r for r in board if r.params["selection"] == "no-such-selector"]
    assert len(board) == 2 and bad[0].status == "failed"
    assert [r.status for r in board if r.params["selection"] == "aggregate"] == ["finished"]
    attempts = (tmp_path / "s" / "trials" / bad[0].trial / "attempts.log").read_text().splitlines()
    assert len(attempts) == 2  # max_failures=1: one retry
