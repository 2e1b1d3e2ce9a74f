"""The GPU check (scripts/gpu-check.sh + benchmarks/bench_gpu.py) as far as it runs without a GPU: the
shell syntax, the dry run that builds every part's config and command, the fallbacks where a package is
missing, the budget, and the colocated-vs-TRL summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402

from rayrejuv.commands.rl.config import RLConfig  # noqa: E402

EVERYTHING = {m: "1.0" for m in bench_gpu.PACKAGES}
NO_VLLM_NO_DEEPSPEED = EVERYTHING | {"vllm": None, "deepspeed": None}


def test_the_script_parses_and_its_dry_run_builds_every_part(tmp_path):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/gpu-check.sh")]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_HOME": str(tmp_path / "home")}
    done = subprocess.run(["scripts/gpu-check.sh", "dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((tmp_path / "bench_gpu_plan.json").read_text())
    assert set(plan["parts"]) == set(bench_gpu.PARTS)
    assert plan["parts"]["rl-colocated"]["placement"] == "colocated"
    assert plan["parts"]["rl-ddp"]["placement"] == plan["parts"]["rl-ds2"]["placement"] == "separate"
    assert all("invalid" not in p for p in plan["parts"].values())
    assert "rl-colocated:" in (tmp_path / "env.log").read_text()  # the package probe, part by part
    if plan["packages"]["vllm"] is None:
        assert "vllm is not installed" in plan["parts"]["rl-colocated"]["notes"][0]
        assert "cannot travel" in plan["parts"]["trl-vllm"]["skip"]


def test_rl_colocated_uses_vllm_sleep_and_the_collective_sync_where_installed(tmp_path):
    cfg, notes = bench_gpu.rl_settings(tmp_path, 5, "rl-colocated", EVERYTHING)
    c = RLConfig.model_validate(cfg)
    assert notes == [] and c.placement == "colocated" and c.rollout.backend == "vllm"
    assert c.rollout.sync == "collective" and c.rollout.vllm.enable_sleep_mode
    assert c.rollout.vllm.sleep_level == bench_gpu.SLEEP_LEVEL == 2  # TRL's colocate mode sleeps at level 2
    assert c.rollout.vllm.gpu_memory_utilization == bench_gpu.trl_args(tmp_path, 5, True)["vllm_gpu_memory_utilization"]
    assert (c.learner.resolved_engine(), c.learner.zero_stage, c.learner.dtype) == ("deepspeed", 2, "bfloat16")
    assert c.gpu_demand() == 1.0


def test_rl_colocated_falls_back_to_hf_and_ddp_with_a_line_each(tmp_path):
    cfg, notes = bench_gpu.rl_settings(tmp_path, 5, "rl-colocated", NO_VLLM_NO_DEEPSPEED)
    c = RLConfig.model_validate(cfg)
    assert c.placement == "colocated" and c.rollout.backend == "hf" and c.learner.resolved_engine() == "ddp"
    assert len(notes) == 2 and "vllm is not installed" in notes[0] and "deepspeed is not installed" in notes[1]
    assert bench_gpu.skip_reason("rl-colocated", NO_VLLM_NO_DEEPSPEED) is None  # runs, with the fallbacks
    assert "vllm (a CUDA build)" in bench_gpu.skip_reason("trl-vllm", NO_VLLM_NO_DEEPSPEED)
    assert "deepspeed==0.19.8" in bench_gpu.skip_reason("rl-ds2", NO_VLLM_NO_DEEPSPEED)


def test_the_same_grpo_step_for_trl_and_ours(tmp_path):
    """Both sides: P prompts x G samples x MAX_NEW tokens, MINIBATCHES optimizer steps of MICRO, lr, beta."""
    cfg, _ = bench_gpu.rl_settings(tmp_path, 5, "rl-colocated", EVERYTHING)
    trl = bench_gpu.trl_args(tmp_path, 5, use_vllm=True)
    g = cfg["grpo"]
    assert (trl["num_generations"], trl["max_completion_length"], trl["learning_rate"], trl["beta"]) == (
        g["group_size"], g["max_new_tokens"], g["lr"], g["beta"])
    assert trl["per_device_train_batch_size"] * trl["steps_per_generation"] == g["prompts_per_step"] * g["group_size"]
    assert trl["steps_per_generation"] == g["minibatches"] and trl["max_steps"] == 5 * g["minibatches"]
    assert trl["vllm_mode"] == "colocate" and trl["vllm_enable_sleep_mode"]
    assert "use_vllm" not in bench_gpu.trl_args(tmp_path, 5, use_vllm=False)


def test_parts_that_do_not_fit_the_budget_are_skipped_with_a_line(tmp_path, capsys):
    args = type("Args", (), {"budget": 10.0, "part_timeout": 240.0, "out": tmp_path, "steps": 5})()
    results = {}
    bench_gpu.run_parts(args, tmp_path, ["rl-colocated", "trl-vllm"], NO_VLLM_NO_DEEPSPEED, results,
                        tmp_path / "bench_gpu.json")
    assert "of the budget left" in results["rl-colocated"]["skipped"]
    assert "needs vllm" in results["trl-vllm"]["skipped"]
    assert "[bench_gpu] rl-colocated: skipped" in capsys.readouterr().out


def test_the_summary_reports_the_ratio_the_sync_and_tokens_per_gpu(capsys):
    ours = {"config": {"rollout": {"backend": "vllm"}}, "notes": [],
            "mean": {"step_s": 3.0, "sync_s": 0.4, "tokens_per_s_per_gpu": 2730.0}}
    results = {"rl-colocated": ours, "trl-vllm": {"mean": {"step_s": 4.0, "tokens_per_s_per_gpu": 2048.0}},
               "trl": {"mean": {"step_s": 7.5, "tokens_per_s_per_gpu": 1092.0}}}
    c = bench_gpu.compare(results)
    assert c["peer"] == "trl-vllm" and c["step_ratio"] == pytest.approx(0.75)
    bench_gpu.print_comparison(c)
    out = capsys.readouterr().out
    assert "0.75x TRL (target <= 1.0x: met)" in out and "sync 0.400 s (target < 1 s: met)" in out
    assert "2730 vs 2048" in out
    results["trl-vllm"] = {"skipped": "needs vllm"}
    assert bench_gpu.compare(results)["peer"] == "trl" and bench_gpu.compare(results)["step_ratio"] == 0.4
    assert bench_gpu.compare({"rl-colocated": {"error": "exit code 1"}, "trl": results["trl"]}) is None


def test_the_gpu_suites_colocated_config_is_valid():
    from test_gpu import COLOCATED

    c = RLConfig.model_validate({"model": "m", "train_data": "t", "out": "o", **COLOCATED})
    assert c.colocated_gpus() and c.gpu_demand() == 1.0
