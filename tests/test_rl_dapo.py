"""`rayrejuv rl` on the adder task with the DAPO options on: dynamic sampling, overlong masking and
the soft penalty, the entropy bonus; verl's perf/* metrics; the generated tokens in the trainer state."""

import json
from itertools import accumulate

import pytest
import torch

P, G, MAX_NEW = 4, 4, 7  # "#### s" + EOS is 7 tokens: a full answer ends in EOS right at the limit
RL = {
    "grpo": {"prompts_per_step": P, "group_size": G, "max_new_tokens": MAX_NEW, "lr": 1e-3, "beta": 0.0,
             "micro_batch_size": P * G},
    "eval_every": 0,
    "checkpoint_every": 2,
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def adder(tmp_path_factory):
    from rayrejuv.testbed.adder import build_adder

    torch.set_num_threads(1)
    try:
        return build_adder(tmp_path_factory.mktemp("adder"), sft_epochs=3, max_n=3)
    finally:
        torch.set_num_threads(2)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module's runs (run_rl joins it): a start saved per run."""
    import ray

    from rayrejuv.runs.cluster import LOCAL_SYSTEM_CONFIG

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False,
             _system_config=LOCAL_SYSTEM_CONFIG)
    yield
    ray.shutdown()


def run(adder, out, steps: int, **grpo) -> list[dict]:
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.config.base import merge_overrides

    values = merge_overrides({**RL, "model": adder["model"], "train_data": adder["train"], "out": out,
                              "steps": steps}, {"grpo": grpo})
    run_rl(RLConfig.model_validate(values), progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _params(model_dir) -> int:
    from rayrejuv.io.checkpoint import Checkpoint

    with Checkpoint(model_dir) as ckpt:
        return sum(ckpt.meta(n).numel for n in ckpt.names)


OPTIONS = {"dynamic_sampling": True, "max_num_gen_batches": 3, "overlong": "mask", "entropy_coeff": 0.01,
           "peak_tflops": 1.0}  # a peak: perf/mfu on CPU too


def test_dynamic_sampling_mask_entropy_bonus_and_perf(adder, ray_local, tmp_path):
    from rayrejuv.method.throughput import step_flops

    out = tmp_path / "dapo"
    recs = run(adder, out, 2, **OPTIONS)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        drawn, batches, dropped, padded = (r[f"sampling/{k}"] for k in
                                           ("drawn_prompts", "batches", "dropped_groups", "padded_groups"))
        assert drawn == P * batches >= P and 1 <= batches <= 3
        assert padded == max(0, P - (drawn - dropped - padded))  # informative groups first, padding for the rest
        assert padded == 0 or batches == 3  # padding only at the cap
        # every trained group's rewards differ, but the padding's (mask leaves rewards alone)
        assert r["reward/zero_std_fraction"] == padded / P
        assert r["overlong/masked_fraction"] == r["overlong/truncated_fraction"]
        assert r["overlong/penalty_mean"] == 0.0
        assert r["policy/entropy_bonus"] == pytest.approx(0.01 * r["policy/entropy"], rel=1e-5)
        assert r["perf/throughput"] == pytest.approx(r["perf/total_num_tokens"] / r["perf/time_per_step"])
        assert r["perf/generation_share"] == pytest.approx(r["time/generate"] / r["perf/time_per_step"])
        assert 0 < r["perf/generation_share"] < 1 and r["perf/time_per_step"] <= r["time/step"]
        flops = step_flops(_params(adder["model"]), r["perf/total_num_tokens"], r["perf/generation_num_tokens"], 1, 0)
        # (forward-only passes 0: one update per batch trains the sampling policy, no old-policy pass)
        assert r["perf/mfu"] == pytest.approx(flops / (r["perf/time_per_step"] * 1e12))
        assert (r["perf/generation_num_tokens"] == r["perf/total_num_tokens"]) == (batches == 1)
    assert sum(r["sampling/dropped_groups"] for r in recs) > 0  # the filter dropped groups on this task
    totals = [r["sampling/generated_tokens_total"] for r in recs]
    assert totals == list(accumulate(r["sampling/generated_tokens"] for r in recs))
    (state,) = (out / "ray" / "grpo").glob("checkpoint_*/trainer_state.json")  # what a resume continues from
    assert json.loads(state.read_text()) == {"step": 2, "generated_tokens": totals[-1]}


@pytest.mark.slow  # two more runs
def test_dynamic_sampling_resumes_bit_for_bit(adder, ray_local, tmp_path):
    """A run resumed at step 2 draws the same prompts and samples as an uninterrupted one: the
    same records (timings aside) and the same final weights; the generated tokens keep counting."""
    from conftest import load_tensors, same_bits

    clean = run(adder, tmp_path / "clean", 3, **OPTIONS)
    run(adder, tmp_path / "resumed", 2, **OPTIONS)
    resumed = run(adder, tmp_path / "resumed", 3, **OPTIONS)

    timed = {"perf/time_per_step", "perf/throughput", "perf/generation_share", "perf/mfu"}

    def untimed(r: dict) -> dict:
        return {k: v for k, v in r.items() if not (k.startswith(("time/", "throughput/")) or k in timed)}

    assert [untimed(r) for r in resumed] == [untimed(r) for r in clean]
    a, b = load_tensors(tmp_path / "clean" / "final"), load_tensors(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


@pytest.mark.slow  # a run of its own (48 s on 2 cores at load 5); its registry entry is unit-tested
def test_soft_overlong_penalty(adder, ray_local, tmp_path):
    recs = run(adder, tmp_path / "soft", 1, overlong="soft_penalty", overlong_buffer_len=MAX_NEW,
               overlong_penalty_factor=0.5)
    for r in recs:
        # the buffer is the whole length: every completion is penalised 0.5 x L / 7, the batch is the draw
        assert r["overlong/penalty_mean"] == pytest.approx(-0.5 * r["response/length_mean"] / MAX_NEW)
        assert r["reward/mean"] == pytest.approx(2 * r["reward/accuracy"] - 1)  # reward/*: the verifier's
        assert "sampling/batches" not in r and "perf/mfu" not in r  # off; CPU without a peak
        assert r["perf/generation_num_tokens"] == r["perf/total_num_tokens"]


def test_token_budget_ends_the_run_at_the_step_that_reaches_it(adder, ray_local, tmp_path):
    """token_budget=1: the first step's tokens reach it, so the run of up to 4 steps ends after one,
    with its checkpoint (checkpoint_every is 2) exported as final and the summary's steps."""
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.config.base import merge_overrides

    out = tmp_path / "budget"
    values = merge_overrides({**RL, "model": adder["model"], "train_data": adder["train"], "out": out, "steps": 4,
                              "token_budget": 1}, {"grpo": {"dynamic_sampling": True, "max_num_gen_batches": 2}})
    summary = run_rl(RLConfig.model_validate(values), progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1] and summary.steps == 1
    assert summary.last["sampling/generated_tokens_total"] == recs[0]["sampling/generated_tokens"] >= 1
    (state,) = (out / "ray" / "grpo").glob("checkpoint_*/trainer_state.json")
    assert json.loads(state.read_text())["step"] == 1 and (out / "final" / "config.json").is_file()
    assert json.loads((out / "run.json").read_text())["finished_steps"] == 4  # complete: the demo reuses it
