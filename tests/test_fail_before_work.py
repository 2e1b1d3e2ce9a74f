"""Fail before work, and say what is left behind (issue 14 item 5): a bad input file is one line
before Ray starts or fusion begins, on both paths; a partial output left by an interrupted run
is named, with --resume / --overwrite as the ways on."""

import json
import subprocess
import sys

import pytest
from conftest import rejuv_config

from rayrejuv.commands.rejuvenate import algorithm
from rayrejuv.commands.rejuvenate.driver import rejuvenate
from rayrejuv.errors import RejuvError

SHARD_GB = 40e-6  # ~40 KB shards: the tiny model spreads over several


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-X", "importtime", "-m", "rayrejuv", "rejuvenate", *args, "--no-track", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def _split(stderr: str) -> tuple[list[str], set[str]]:
    """(the lines a user sees, the top-level packages `-X importtime` says were imported)."""
    lines = stderr.splitlines()
    imported = {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in lines if ln.startswith("import time:")}
    return [ln for ln in lines if not ln.startswith("import time:")], imported


def test_a_malformed_calibration_is_one_line_on_ray_as_in_process_before_ray_starts(make_pair, tmp_path):
    base, sft = make_pair("llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q:1+1?A:", "response": "2"}\n{"prompt": "Q:2+2?A:"}\n')
    common = ["--base", str(base), "--sft", str(sft), "--calibration", str(bad), "--max-shard-gb", str(SHARD_GB)]
    said = {}
    for path in ("--ray", "--no-ray"):
        r = _cli(*common, "--out", str(tmp_path / "out"), path, "--workers", "2", cwd=tmp_path)
        lines, imported = _split(r.stderr)
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert "ray" not in imported  # refused before Ray was even imported, let alone started
        said[path] = lines[0]
    assert said["--ray"] == said["--no-ray"]
    assert said["--ray"].startswith("error: ") and "bad.jsonl:2: field 'response' must be a non-empty string" in said[
        "--ray"]  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_leftover_partial_output_is_named_with_the_ways_on(make_pair, tmp_path, monkeypatch, enabled):
    def no_work(*args):
        raise AssertionError("the work started")

    monkeypatch.setitem(algorithm.EXECUTION_MODES, "ray" if enabled else "in-process", no_work)
    base, sft = make_pair("llama")
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "model-00001-of-00009.safetensors").write_bytes(b"junk")
    (partial / "model-00001-of-00009.safetensors.done.json").write_text("{}")
    cfg = rejuv_config(base, sft, tmp_path / "out", fusion_only=True, ray={"enabled": enabled, "workers": 2})
    with pytest.raises(RejuvError) as e:
        rejuvenate(cfg, progress=False)
    assert str(e.value) == (
        f"a partial output of an interrupted run is left at {partial} (1 finished shard(s)); pass --resume to "
        "finish that run, or --overwrite to discard it"
    )
    assert sorted(p.name for p in partial.iterdir()) == ["model-00001-of-00009.safetensors",
                                                         "model-00001-of-00009.safetensors.done.json"]  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_failed_run_says_what_it_left_and_resume_goes_on(make_pair, tmp_path, monkeypatch, capsys):
    base, sft = make_pair("llama")
    cfg = rejuv_config(base, sft, tmp_path / "out", fusion_only=True, max_shard_gb=SHARD_GB)

    def crash(*args):
        raise RuntimeError("killed")  # after every shard was written and marked, before the index

    with monkeypatch.context() as m:
        m.setattr(algorithm, "finalize", crash)
        with pytest.raises(RuntimeError, match="killed"):
            rejuvenate(cfg, progress=False)
    partial = tmp_path / ".out.partial"
    shards = len(list(partial.glob("*.done.json")))
    assert shards > 3 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"a partial output of an interrupted run is left at {partial} ({shards} finished shard(s)): rerun with "
        "--resume to reuse them, or --overwrite to discard it"
    )
    with pytest.raises(RejuvError, match="pass --resume to finish that run, or --overwrite to discard it"):
        rejuvenate(cfg, progress=False)
    report = rejuvenate(cfg.model_copy(update={"resume": True}), progress=False)
    assert report["output"]["reused_shards"] == shards == len(report["output"]["files"])
    assert not partial.exists() and json.loads((tmp_path / "out" / "rejuvenation_report.json").read_text())


def test_a_refused_input_leaves_nothing_and_says_nothing_of_a_partial(make_pair, tmp_path, capsys):
    base, sft = make_pair("llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(RejuvError, match="bad.jsonl:1"):
        rejuvenate(rejuv_config(base, sft, tmp_path / "out", calibration=bad), progress=False)
    assert "partial" not in capsys.readouterr().err and not list(tmp_path.glob(".out*"))


def test_diagnose_refuses_a_malformed_data_file_before_any_model_is_loaded(make_pair, tmp_path, monkeypatch):
    from rayrejuv.commands.diagnose import driver
    from rayrejuv.commands.diagnose.config import DiagnoseConfig

    def no_work(*args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(driver, "load_model", no_work)
    base, sft = make_pair("llama")
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "Q:1+1?A:", "answer": "2"}\n{"answer": "4"}\n')
    cfg = DiagnoseConfig(base=base, sft=[sft], data=bad, out=tmp_path / "dg", tracking={"enabled": False})
    with pytest.raises(RejuvError, match="eval.jsonl:2"):
        driver.diagnose(cfg, progress=False)
    assert not list(tmp_path.glob("*dg*"))
