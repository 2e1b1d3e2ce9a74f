"""Rejuvenation on Ray: bit-identical to the in-process path, crash-safe, resumable."""

import filecmp
import json
import subprocess
import sys

import pytest
from conftest import FAMILIES, rejuv_config

from rayrejuv.commands.rejuvenate.driver import rejuvenate

SHARD_GB = 40e-6  # ~40 KB shards: a tiny model spreads over several shards, hence workers


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same_checkpoint(a, b) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        if f == "rejuvenation_report.json" or f.endswith(".png"):
            continue  # timings and the execution section differ by design
        assert filecmp.cmp(a / f, b / f, shallow=False), f


# by default llama (1, 2 and 3 workers) and qwen3 (tied embeddings); mistral and qwen2 add ~65 s on 2 busy cores
DEFAULT_RAY_FAMILIES = ("llama", "qwen3")


@pytest.mark.parametrize(
    "family", [f if f in DEFAULT_RAY_FAMILIES else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_ray_path_is_bit_identical_to_in_process(ray_local, make_pair, calibration, tmp_path, family):
    base, sft = make_pair(family, tie_base=family == "qwen3", tie_sft=family == "qwen3")
    common = dict(calibration=calibration, reset_ratio=0.05, max_shard_gb=SHARD_GB)
    ref = rejuvenate(rejuv_config(base, sft, tmp_path / "ref", **common), progress=False)
    assert len(ref["output"]["files"]) >= 3
    for workers in [1, 2, 3] if family == "llama" else [2]:
        out = tmp_path / f"ray{workers}"
        rep = rejuvenate(rejuv_config(base, sft, out, ray={"workers": workers}, **common), progress=False)
        assert rep["execution"]["mode"] == "ray" and rep["execution"]["workers"] == workers
        assert len(rep["execution"]["per_worker"]) == workers
        assert rep["neurons"] == ref["neurons"]
        _same_checkpoint(tmp_path / "ref", out)


def test_killed_actor_is_restarted_and_output_identical(ray_local, make_pair, calibration, tmp_path, monkeypatch):
    base, sft = make_pair("qwen2")
    common = dict(calibration=calibration, reset_ratio=0.05, max_shard_gb=SHARD_GB)
    rejuvenate(rejuv_config(base, sft, tmp_path / "ref", **common), progress=False)
    marker = tmp_path / "died"
    monkeypatch.setenv("RAYREJUV_FAULT_ONCE", str(marker))
    monkeypatch.setenv("RAYREJUV_FAULT_AFTER", "1")
    rep = rejuvenate(rejuv_config(base, sft, tmp_path / "out", ray={"workers": 2}, **common), progress=False)
    assert marker.exists()  # an actor really died mid-fusion (after one shard, before its marker)
    assert rep["reset_count"] > 0
    _same_checkpoint(tmp_path / "ref", tmp_path / "out")


def test_killed_driver_leaves_no_checkpoint_and_resume_reuses_shards(make_pair, calibration, tmp_path):
    base, sft = make_pair("llama")
    cmd = [
        sys.executable,
        "-m",
        "rayrejuv",
        "rejuvenate",
        "--base",
        str(base),
        "--sft",
        str(sft),
        "--calibration",
        str(calibration),
        "--max-shard-gb",
        str(SHARD_GB),
        "--no-ray",
        "--no-track",
        "--quiet",
    ]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    n_shards = len(json.loads((tmp_path / "ref" / "rejuvenation_report.json").read_text())["output"]["files"])
    env = {"RAYREJUV_FAULT_ONCE": str(tmp_path / "died"), "RAYREJUV_FAULT_AFTER": "3", "HOME": str(tmp_path)}
    import os

    crashed = subprocess.run(
        cmd + ["--out", str(tmp_path / "out")], capture_output=True, text=True, env={**os.environ, **env}, timeout=600
    )
    assert crashed.returncode == 1 and (tmp_path / "died").exists()  # the driver died abruptly
    assert not (tmp_path / "out").exists()  # no checkpoint at the target
    assert len(list((tmp_path / ".out.partial").glob("*.done.json"))) == 3
    resumed = subprocess.run(
        cmd + ["--out", str(tmp_path / "out"), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "out" / "rejuvenation_report.json").read_text())
    assert report["output"]["reused_shards"] == 3 and n_shards > 3
    assert not (tmp_path / ".out.partial").exists()
    _same_checkpoint(tmp_path / "ref", tmp_path / "out")


def test_a_stale_partial_run_is_discarded_without_resume(make_pair, tmp_path):
    """With --overwrite; without it the run refuses and names it (tests/test_fail_before_work.py)."""
    base, sft = make_pair("llama")
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "model-00001-of-00009.safetensors").write_bytes(b"junk")
    rejuvenate(rejuv_config(base, sft, tmp_path / "out", fusion_only=True, overwrite=True), progress=False)
    assert not partial.exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_execution_mode_rule(monkeypatch):
    """Unset ray.enabled: in process unless a cluster is named, Ray is already connected, or
    workers > 1 is asked for; ray.enabled true / false (--ray / --no-ray) always wins."""
    from rayrejuv.commands.rejuvenate import algorithm
    from rayrejuv.config.runtime import RayConfig

    def mode(**kw) -> str:
        return algorithm.execution_mode(RayConfig(**kw))

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(algorithm, "_ray_connected", lambda: False)
    assert RayConfig().enabled is None
    assert mode() == "in-process" and mode(workers=1) == "in-process"
    assert mode(workers=2) == "ray" and mode(address="ray://h:10001") == "ray"
    assert mode(enabled=True) == "ray" and mode(enabled=True, workers=1) == "ray"
    assert mode(enabled=False, address="ray://h:10001", workers=4) == "in-process"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert mode() == "ray" and mode(enabled=False) == "in-process"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(algorithm, "_ray_connected", lambda: True)
    assert mode() == "ray" and mode(enabled=False) == "in-process"


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages a `python -X importtime` run imported."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in importtime_stderr.splitlines() if "|" in line}


def test_cli_default_runs_in_process_and_ray_enabled_forces_ray(make_pair, tmp_path):
    """The default command with no cluster named runs in this process and imports neither Ray,
    MLflow (its run is logged by a side process), transformers nor matplotlib; `ray.enabled: true`
    in the YAML starts a local Ray instance for the run, with the same bytes."""
    import os

    import mlflow
    import yaml

    base, sft = make_pair("llama")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cmd = [sys.executable, "-X", "importtime", "-m", "rayrejuv", "rejuvenate", "--base", str(base), "--sft", str(sft),
           "--fusion-only", "--max-shard-gb", str(SHARD_GB), "--quiet"]  # fmt: skip
    default = subprocess.run(cmd + ["--out", str(tmp_path / "default")], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=600)  # fmt: skip
    assert default.returncode == 0, default.stderr[-3000:]
    rep = json.loads((tmp_path / "default" / "rejuvenation_report.json").read_text())
    assert rep["config"]["ray"]["enabled"] is None
    assert rep["execution"] == {"mode": "in-process", "workers": 1} and "ray_start" not in rep["timings_s"]
    # only the driver reports its imports: the side process is started without -X importtime
    assert not {"ray", "mlflow", "transformers", "matplotlib"} & _imported(default.stderr)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["rayrejuv"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["fusion_only"] == "True"
    assert run.data.metrics["reset_count"] == 0 and "time.write" in run.data.metrics

    yaml_cfg = tmp_path / "ray.yaml"
    yaml_cfg.write_text(yaml.safe_dump({"ray": {"enabled": True, "workers": 1}}))
    forced = subprocess.run(cmd + ["--out", str(tmp_path / "forced"), "--config", str(yaml_cfg), "--no-track"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-3000:]
    rep = json.loads((tmp_path / "forced" / "rejuvenation_report.json").read_text())
    assert rep["execution"]["mode"] == "ray" and rep["execution"]["workers"] == 1 and "ray_start" in rep["timings_s"]
    _same_checkpoint(tmp_path / "default", tmp_path / "forced")


@pytest.mark.parametrize("enabled", [True, False])
def test_a_malformed_calibration_file_is_refused_before_any_work(make_pair, tmp_path, monkeypatch, enabled):
    """On Ray the attribution actor reads the calibration file; the driver refuses a bad one first."""
    from rayrejuv.commands.rejuvenate import algorithm
    from rayrejuv.errors import RejuvError

    def no_work(*args):
        raise AssertionError("the work started")

    monkeypatch.setitem(algorithm.EXECUTION_MODES, "ray" if enabled else "in-process", no_work)
    base, sft = make_pair("llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q:1+1?A:", "response": "2"}\n{"prompt": "Q:2+2?A:"}\n')
    cfg = rejuv_config(base, sft, tmp_path / "out", calibration=bad, ray={"enabled": enabled, "workers": 2})
    with pytest.raises(RejuvError, match=r"bad.jsonl:2: field 'response' must be a non-empty string"):
        rejuvenate(cfg, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
