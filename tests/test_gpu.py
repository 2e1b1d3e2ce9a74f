"""GPU checks (marker `gpu`, never selected by the default `-m`): `rayrejuv rl` with placement=colocated
on ONE GPU (rollout engine, reference and learner in the colocated placement group's shares), `rayrejuv
rl` with the hf rollout backend on CUDA and a GPU learner sharing one GPU (fractional Ray GPUs),
DeepSpeed ZeRO-2/3 vs DDP (nccl) end to end, and `rayrejuv rejuvenate` on CUDA vs CPU. Run on a CUDA
machine:

    scripts/gpu-check.sh                      # or: python -m pytest -m gpu tests/test_gpu.py -s

Every test asserts measured numbers; none skips. With RAYREJUV_GPU_RESULTS=DIR each test also
writes what it measured to DIR/test_gpu.json (benchmarks/README.md quotes them).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import load_tensors, rejuv_config
from test_rl import records
from test_rl import rl_config as cpu_rl_config

from rayrejuv.config.base import merge_overrides

pytestmark = pytest.mark.gpu

# the adder task of tests/test_rl.py, on one GPU: the rollout actor, the reference actor and the
# learner worker each reserve a share of it (0.25 + 0.25 + 0.5 = 1 GPU)
GPU = {
    "rollout": {"device": "cuda", "gpus_per_worker": 0.25, "reference_gpus": 0.25},
    "learner": {"use_gpu": True, "gpus_per_worker": 0.5, "engine": "ddp"},
}


def record(name: str, values: dict) -> None:
    """Print the measured numbers and, with RAYREJUV_GPU_RESULTS set, merge them into its json."""
    print(f"\n[gpu] {name}: {json.dumps(values)}")
    directory = os.environ.get("RAYREJUV_GPU_RESULTS")
    if directory:
        path = Path(directory) / "test_gpu.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = values
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


COLOCATED = {"placement": "colocated", "rollout": {"device": "cuda"}, "learner": {"use_gpu": True, "engine": "ddp"}}


def test_cuda_is_there():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"


def test_colocated_rl_on_one_gpu_syncs_exactly(adder, tmp_path):
    """placement=colocated on one GPU: the rollout engine (0.4), the reference (0.2) and the learner
    (0.4) in the shares the placement sets; 10 steps of the adder task in float32, the weights synced
    over the run's sync (rollout.sync) after every update: sampling log-probs = the learner's."""
    from rayrejuv.commands.rl.driver import run_rl

    cfg = cpu_rl_config(adder, tmp_path / "colocated", **merge_overrides(COLOCATED, {"steps": 10, "eval_every": 0}))
    assert cfg.gpu_demand() == 1.0 and cfg.learner_resources()["GPU"] + cfg.reference_gpus() < 1.0
    summary = run_rl(cfg, progress=False)
    steps = [r for r in records(tmp_path / "colocated") if "reward/mean" in r]
    diffs = [r["rollout/logprob_abs_diff"] for r in steps]
    record("rl_adder_colocated_one_gpu", {
        "logprob_abs_diff_max": max(diffs), "mean_step_s": summary.mean_step_seconds, "seconds": summary.seconds,
        "time_sync_mean": sum(r["time/sync"] for r in steps) / len(steps), "sync": cfg.rollout.sync,
    })
    assert [r["rollout/policy_version"] for r in steps] == list(range(10))
    assert max(diffs) < 1e-5
    assert all(r["policy/update_norm"] > 0 for r in steps)


@pytest.fixture(scope="module")
def adder(tmp_path_factory):
    from rayrejuv.testbed.adder import build_adder

    return build_adder(tmp_path_factory.mktemp("adder"), sft_epochs=3, max_n=3)


def rl_config(adder, out, **kw):
    """tests/test_rl.py's run config, with the GPU shares on top."""
    return cpu_rl_config(adder, out, **merge_overrides(GPU, kw))


@pytest.fixture(scope="module")
def cuda_run(adder, tmp_path_factory):
    from rayrejuv.commands.rl.driver import run_rl

    out = tmp_path_factory.mktemp("rl") / "cuda"
    summary = run_rl(rl_config(adder, out, steps=30), progress=False)
    return out, summary


def test_rl_on_one_shared_gpu_raises_reward(cuda_run):
    out, summary = cuda_run
    recs = records(out)
    evals = [r for r in recs if "eval/sample_accuracy" in r]
    steps = [r for r in recs if "reward/mean" in r]
    before, after = evals[0]["eval/sample_accuracy"], evals[-1]["eval/sample_accuracy"]
    first, last = sum(r["reward/mean"] for r in steps[:10]) / 10, sum(r["reward/mean"] for r in steps[-10:]) / 10
    record("rl_adder_cuda", {
        "eval_sample_accuracy": [r["eval/sample_accuracy"] for r in evals],
        "eval_pass_at_1": [r["eval/pass_at_1"] for r in evals],
        "reward_first10": first, "reward_last10": last,
        "mean_step_s": summary.mean_step_seconds, "seconds": summary.seconds,
        "time_generate_mean": sum(r["time/generate"] for r in steps) / len(steps),
        "time_learn_mean": sum(r["time/learn"] for r in steps) / len(steps),
        "time_sync_mean": sum(r["time/sync"] for r in steps) / len(steps),
    })
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert after > 1.5 * before and after - before > 0.04, (before, after)
    assert last > first + 0.1, (first, last)
    assert summary.last["policy/kl"] > 0
    assert (out / "final" / "model.safetensors").exists()


def test_rollout_logprobs_on_cuda_equal_learner_after_every_sync(cuda_run):
    """hf generate (KV cache, incremental) on the rollout actor's CUDA context vs the learner's
    teacher-forced pass in its own process, after every weight sync: float32 numerics only."""
    steps = [r for r in records(cuda_run[0]) if "reward/mean" in r]
    diffs = [r["rollout/logprob_abs_diff"] for r in steps]
    record("rl_adder_cuda_logprob_abs_diff", {"max": max(diffs), "mean": sum(diffs) / len(diffs)})
    assert [r["rollout/policy_version"] for r in steps] == list(range(30))
    assert max(diffs) < 1e-5  # measured 1.1e-7 on an H100
    assert all(r["policy/update_norm"] > 0 for r in steps)


def test_deepspeed_zero_on_one_gpu_matches_ddp_after_5_steps(adder, tmp_path):
    """Whole `rayrejuv rl` runs (rollouts on CUDA, weight sync, reference) of 5 steps with the
    learner on DDP/nccl, DeepSpeed ZeRO-2 and ZeRO-3: same rewards, final weights within 1e-4."""
    from rayrejuv.commands.rl.driver import run_rl

    micro = {"micro_batch_size": 64}  # DeepSpeed: one micro-batch per rank (64 sequences)
    finals, rewards = {}, {}
    for name, learner in (("ddp", {"engine": "ddp"}), ("zero2", {"engine": "deepspeed", "zero_stage": 2}),
                          ("zero3", {"engine": "deepspeed", "zero_stage": 3})):
        out = tmp_path / name
        run_rl(rl_config(adder, out, steps=5, eval_every=0, checkpoint_every=5, grpo=micro, learner=learner),
               progress=False)
        finals[name] = load_tensors(out / "final")
        rewards[name] = [r["reward/mean"] for r in records(out) if "reward/mean" in r]
    start = load_tensors(adder["model"])
    moved = max(float((finals["ddp"][k] - start[k]).abs().max()) for k in start)
    dw = {name: max(float((finals[name][k] - finals["ddp"][k]).abs().max()) for k in finals["ddp"])
          for name in ("zero2", "zero3")}
    record("engines_vs_ddp_5_steps", {"max_abs_dw": dw, "ddp_moved_max_abs": moved, "rewards": rewards})
    assert moved > 1e-3  # the 5 steps did something
    assert rewards["zero2"] == rewards["ddp"] and rewards["zero3"] == rewards["ddp"]
    for name in ("zero2", "zero3"):
        assert finals[name].keys() == finals["ddp"].keys()
        assert dw[name] < 1e-4, (name, dw[name])  # measured: ZeRO-2 0.0, ZeRO-3 5.7e-6 (H100)


def test_rejuvenate_attribution_on_cuda_equals_cpu(make_pair, calibration, tmp_path):
    """`rayrejuv rejuvenate --device cuda` (on Ray: the attribution actor reserves the GPU) gives
    the same reset set and the same output tensors as the CPU run."""
    import time

    from rayrejuv.commands.rejuvenate.driver import rejuvenate

    base, sft = make_pair("qwen3", num_layers=4, hidden_size=128, intermediate_size=256)
    t0 = time.perf_counter()
    rejuvenate(rejuv_config(base, sft, tmp_path / "cpu", calibration=calibration, reset_ratio=0.05), progress=False)
    t_cpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    rejuvenate(rejuv_config(base, sft, tmp_path / "cuda", calibration=calibration, reset_ratio=0.05, device="cuda",
                            ray={"enabled": True, "workers": 2}), progress=False)
    t_cuda = time.perf_counter() - t0
    cpu, cuda = load_tensors(tmp_path / "cpu"), load_tensors(tmp_path / "cuda")

    def neurons(d):
        report = json.loads((d / "rejuvenation_report.json").read_text())
        return report, {(n["layer"], n["module"], n["index"]) for n in report["neurons"]}

    (rep_cpu, n_cpu), (rep_cuda, n_cuda) = neurons(tmp_path / "cpu"), neurons(tmp_path / "cuda")
    diff = max(float((cuda[k].float() - cpu[k].float()).abs().max()) for k in cpu)
    scores = {(n["layer"], n["module"], n["index"]): n["score"] for n in rep_cpu["neurons"]}
    score_diff = max((abs(n["score"] - scores[(n["layer"], n["module"], n["index"])])
                      for n in rep_cuda["neurons"] if (n["layer"], n["module"], n["index"]) in scores), default=0.0)
    record("rejuvenate_tiny_cuda_vs_cpu", {"max_abs_diff": diff, "reset_neurons": len(n_cpu),
                                           "reset_overlap": len(n_cpu & n_cuda), "max_score_diff": score_diff,
                                           "cpu_no_ray_s": t_cpu, "cuda_ray_s": t_cuda})
    assert len(n_cpu) > 0 and n_cuda == n_cpu
    assert cpu.keys() == cuda.keys()
    assert diff == 0.0
