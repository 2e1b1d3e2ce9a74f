"""The command line: YAML + flag overrides, one-line errors, MLflow logging, the demo."""

import json
import subprocess
import sys

import pytest
import yaml


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "rayrejuv", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_rejuvenate_from_yaml_with_flag_override_logs_to_mlflow(tmp_path, make_pair, calibration):
    base, sft = make_pair("qwen3")
    cfg = tmp_path / "rejuv.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "sft": str(sft),
                "calibration": str(calibration),
                "alpha": 0.7,
                "reset_ratio": 0.02,
                "tracking": {"experiment": "cli-test"},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = _cli(
        "rejuvenate",
        "--config",
        cfg,
        "--out",
        tmp_path / "out",
        "--reset-ratio",
        "0.05",
        "--quiet",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "rejuvenated" in r.stdout
    report = json.loads((tmp_path / "out" / "rejuvenation_report.json").read_text())
    assert report["config"]["alpha"] == 0.7 and report["config"]["reset_ratio"] == 0.05
    assert report["reset_count"] == round(0.05 * report["num_neurons"])

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cli-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["alpha"] == "0.7" and run.data.params["reset_ratio"] == "0.05"
    assert run.data.metrics["reset_count"] == report["reset_count"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"rejuvenation_report.json", "reset_map.png"} <= artifacts


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, make_pair):
    base, sft = make_pair("llama")
    r = _cli(
        "rejuvenate",
        "--base",
        base,
        "--sft",
        sft,
        "--out",
        tmp_path / "o",
        "--omega",
        "2",
        "--fusion-only",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: omega:")
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_unknown_yaml_key_is_refused(tmp_path, make_pair):
    base, sft = make_pair("llama")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"base": str(base), "sft": str(sft), "out": str(tmp_path / "o"), "alpha_": 0.3}))
    r = _cli("rejuvenate", "--config", cfg, "--fusion-only", cwd=tmp_path)
    assert r.returncode == 2 and "alpha_: Extra inputs are not permitted" in r.stderr


def test_demo_cli_refuses_bad_input_before_starting_anything(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    r = _cli("demo", "--out", tmp_path / "foreign", "--no-track", cwd=tmp_path)
    assert r.returncode == 2 and "is not a rayrejuv demo directory" in r.stderr
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"rungs": {"oversft_epoch": 3}}))
    r = _cli("demo", "--config", cfg, "--out", tmp_path / "d", "--no-track", cwd=tmp_path)
    assert r.returncode == 2 and "rungs.oversft_epoch=3 is not a saved ladder epoch" in r.stderr
    assert not (tmp_path / "d").exists() and (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_testbed_build_cli_with_yaml_and_mlflow(tmp_path):
    from test_testbed import SMALL

    cfg = tmp_path / "tb.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in SMALL.items() if k != "tracking"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = _cli(
        "testbed", "build", "--out", tmp_path / "tb", "--config", cfg, "--tracking-uri", uri, "--quiet", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tb" / "sft" / "epoch-2" / "model.safetensors").is_file()
    import mlflow

    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["rayrejuv"], output_format="list")
    assert run.data.params["train.sft_lr"] == "0.0003" and run.data.params["model.family"] == "qwen3"
    client = mlflow.MlflowClient()
    sft = client.get_metric_history(run.info.run_id, "sft.loss")
    assert [m.step for m in sft] == [1, 2, 3, 4, 5, 6]  # 48 examples / batch 16 x 2 epochs
    assert len(client.get_metric_history(run.info.run_id, "pretrain.loss")) == 2
    manifest = json.loads((tmp_path / "tb" / "testbed.json").read_text())
    assert manifest["sft_losses"]["2"] == pytest.approx(sft[-1].value)
