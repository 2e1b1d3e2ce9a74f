"""One pool of GRPO workers serving many runs in turn (commands/rl/pool.py): runs on one pool equal
runs on workers of their own, bit for bit, a run resumed on the pool continues from its checkpoint;
the run queue's bookkeeping; which runs can share a pool."""

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_tensors, same_bits

RL = {
    "grpo": {"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 8, "lr": 1e-3, "beta": 0.05,
             "micro_batch_size": 64},
    "eval_every": 0,
    "checkpoint_every": 2,
    "keep_checkpoints": 1,
    "tracking": {"enabled": False},
}
TIMED = ("time/", "throughput/", "perf/time_per_step", "perf/throughput", "perf/generation_share", "perf/mfu")


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """Two starts of one architecture and tokenizer: the adder's SFT model, and a copy with other weights."""
    from safetensors.torch import save_file

    from rayrejuv.testbed.adder import build_adder

    root = tmp_path_factory.mktemp("starts")
    torch.set_num_threads(1)
    try:
        adder = build_adder(root / "adder", sft_epochs=3, max_n=3)
    finally:
        torch.set_num_threads(2)
    other = root / "other"
    shutil.copytree(adder["model"], other)
    g = torch.Generator().manual_seed(1)
    weights = {k: v + 0.02 * torch.randn(v.shape, generator=g).to(v.dtype) for k, v in load_tensors(other).items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    return {"a": adder["model"], "b": other, "train": adder["train"]}


def rl_config(starts, start: str, out: Path, **kw):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.config.base import merge_overrides

    return RLConfig.model_validate(merge_overrides({**RL, "model": starts[start], "train_data": starts["train"],
                                                    "out": out}, kw))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def deterministic(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMED)} for r in recs]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def test_runs_on_one_pool_equal_runs_on_workers_of_their_own(starts, ray_local, tmp_path):
    """Run A (start a, seed 0, 4 steps) and run B (start b, seed 1, 3 steps), each alone (`rayrejuv
    rl`: a pool of one run); then on one pool: A for 2 steps, B, A raised to 4 steps (resumed from
    its step-2 checkpoint, after B moved every worker elsewhere). Final weights bit for bit and
    every deterministic metric equal; the reference holds each run's start (beta > 0)."""
    from rayrejuv.commands.rl.driver import resolve_dtypes, run_rl
    from rayrejuv.commands.rl.pool import Pools

    alone = {"a": rl_config(starts, "a", tmp_path / "alone-a", steps=4),
             "b": rl_config(starts, "b", tmp_path / "alone-b", steps=3, seed=1)}
    for cfg in alone.values():
        run_rl(cfg, progress=False)
    pools = Pools(1, tmp_path / "pools")
    queue = pools.queue_for(resolve_dtypes(alone["a"]))
    pooled_a = rl_config(starts, "a", tmp_path / "pool-a", steps=2)
    run_rl(pooled_a, progress=False, pool=queue)
    run_rl(rl_config(starts, "b", tmp_path / "pool-b", steps=3, seed=1), progress=False, pool=queue)
    resumed = run_rl(pooled_a.model_copy(update={"steps": 4}), progress=False, pool=queue)
    pools.close()

    for run in ("a", "b"):
        want, got = load_tensors(tmp_path / f"alone-{run}" / "final"), load_tensors(tmp_path / f"pool-{run}" / "final")
        assert want.keys() == got.keys() and all(same_bits(want[k], got[k]) for k in want), run
        assert deterministic(records(tmp_path / f"alone-{run}")) == deterministic(records(tmp_path / f"pool-{run}"))
    a, start = load_tensors(tmp_path / "alone-a" / "final"), load_tensors(starts["a"])
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # the run moved the weights
    kl = [r["policy/kl"] for r in records(tmp_path / "pool-b")]
    assert kl[0] < 1e-6 < kl[-1]  # step 1's policy is the reference: B's reference is B's start, not A's
    assert [r["step"] for r in records(tmp_path / "pool-a")] == [1, 2, 3, 4]
    assert (tmp_path / "pool-a" / "ray" / "grpo" / "checkpoint_000004").is_dir()
    assert not (tmp_path / "pool-a" / "ray" / "grpo" / "checkpoint_000002").exists()  # keep_checkpoints 1
    def started(run: str) -> list[float]:  # each invocation's time/run_start, time/queued
        return [(r["time/run_start"], r["time/queued"]) for r in records(tmp_path / run) if "time/run_start" in r]

    warm, cold = started("pool-a") + started("pool-b"), started("alone-a") + started("alone-b")
    assert len(warm) == 3 and len(cold) == 2 and resumed.steps == 4
    # a run alone waits for its workers to start (time/queued); on the warm pool it starts at once
    assert max(s for s, _ in warm) < min(s + q for s, q in cold) / 3, (warm, cold)
    print(f"time/run_start on the pool: {', '.join(f'{s:.2f}' for s, _ in warm)} s; alone: "
          f"{', '.join(f'{s:.2f} + queued {q:.2f}' for s, q in cold)} s")


def test_pool_key_separates_what_cannot_share_workers(starts, tmp_path):
    from rayrejuv.commands.rl.pool import pool_key

    a = rl_config(starts, "a", tmp_path / "a").with_start_dtype("float32")
    b = rl_config(starts, "b", tmp_path / "b", seed=3, steps=7, grpo={"lr": 1e-2}).with_start_dtype("float32")
    assert pool_key(a) == pool_key(b)  # other weights, seed, steps, recipe: one pool
    other_rollouts = a.model_copy(update={"rollout": a.rollout.model_copy(update={"workers": 2})})
    other_learner = a.model_copy(update={"learner": a.learner.model_copy(update={"workers": 2})})
    bf16 = rl_config(starts, "a", tmp_path / "a").with_start_dtype("bfloat16")
    no_reference = a.model_copy(update={"grpo": a.grpo.model_copy(update={"beta": 0.0})})
    keys = {pool_key(c) for c in (a, other_rollouts, other_learner, bf16, no_reference)}
    assert len(keys) == 5
    tok = tmp_path / "tok"
    shutil.copytree(starts["a"], tok)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 7}))
    assert pool_key(a.model_copy(update={"model": tok})) != pool_key(a)  # another tokenizer: another pool


def test_run_queue_hands_each_job_to_one_pool_and_back_to_its_submitter():
    from rayrejuv.distributed.run_queue import CLOSED, RunQueue

    async def scenario():
        q = RunQueue()
        assert await q.take("p0", timeout=0.01) is None  # nothing pending: the pool asks again
        await q.submit("j1", {"n": 1}, owner="trial-1")
        await q.submit("j2", {"n": 2}, owner="trial-2")
        await q.submit("j3", {"n": 3}, owner="trial-1")
        assert await q.take("p0", timeout=1) == ("j1", {"n": 1})
        assert await q.take("p0", timeout=1) == ("j1", {"n": 1})  # a restarted worker group gets its job again
        assert await q.take("p1", timeout=1) == ("j2", {"n": 2})
        await q.report("j1", {"step": 2})
        assert await q.events("j1", 0, timeout=1) == [("report", {"step": 2})]
        assert await q.cancel("trial-1") == 2  # j1 (running) and j3 (pending)
        assert await q.stopped("j1") and not await q.stopped("j2")
        await q.finish("j1", "/ckpt")  # too late: the job ended cancelled
        assert await q.events("j1", 1, timeout=0.01) == [("cancelled", None)]
        await q.pool_failed("p1", "RuntimeError: boom")
        assert (await q.events("j2", 0, timeout=0.01))[-1] == ("failed", "RuntimeError: boom")
        await q.submit("j4", {"n": 4})
        waiter = asyncio.ensure_future(q.take("p0", timeout=5))  # j3 was cancelled: j4 is next
        assert await waiter == ("j4", {"n": 4})
        await q.finish("j4", "/ckpt4")
        assert await q.events("j4", 0, timeout=0.01) == [("finished", "/ckpt4")]
        await q.submit("j7", {"n": 7})
        await q.cancel_job("j7")  # its submitter left: it never starts
        assert await q.events("j7", 0, timeout=0.01) == [("cancelled", None)]
        await q.submit("j5", {"n": 5})
        await q.fail_pending("no pool left")
        assert await q.events("j5", 0, timeout=0.01) == [("failed", "no pool left")]
        await q.close()
        assert await q.take("p0", timeout=1) == CLOSED
        with pytest.raises(RuntimeError, match="closed"):
            await q.submit("j6", {})

    asyncio.run(scenario())
