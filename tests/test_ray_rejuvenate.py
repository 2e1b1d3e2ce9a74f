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


@pytest.mark.parametrize("family", FAMILIES)
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
    base, sft = make_pair("llama")
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "model-00001-of-00009.safetensors").write_bytes(b"junk")
    rejuvenate(rejuv_config(base, sft, tmp_path / "out", fusion_only=True), progress=False)
    assert not partial.exists() and (tmp_path / "out" / "model.safetensors").is_file()
