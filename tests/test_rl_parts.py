"""The RL stage's parts without Ray: batch type, prompt order, loss splitting, learner accumulation,
config and run-directory validation."""

import json

import pytest
import torch

from rayrejuv.errors import RejuvError


def _rollout(n, P, T, seed, group=None):
    from rayrejuv.models.rollout import Rollout

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[0, T - 1 :] = 0
    return Rollout(
        prompt_ids=torch.randint(3, 9, (n, P), generator=g),
        prompt_mask=torch.ones(n, P, dtype=torch.long),
        completion_ids=torch.randint(3, 9, (n, T), generator=g),
        completion_mask=mask,
        logprobs=-torch.rand(n, T, generator=g) * mask,
        texts=[f"t{seed}-{i}" for i in range(n)],
        group=group if group is not None else torch.arange(n),
        rewards=torch.arange(n, dtype=torch.float),
    )


def test_rollout_cat_repads_and_offsets_groups():
    from rayrejuv.models.rollout import Rollout

    a = _rollout(2, 3, 4, 0, group=torch.tensor([0, 0]))
    b = _rollout(3, 5, 2, 1, group=torch.tensor([0, 1, 1]))
    c = Rollout.cat([a, b], pad_id=0)
    assert c.prompt_ids.shape == (5, 5) and c.completion_ids.shape == (5, 4)
    assert c.group.tolist() == [0, 0, 1, 2, 2]
    assert torch.equal(c.prompt_ids[:2, 2:], a.prompt_ids) and bool((c.prompt_mask[:2, :2] == 0).all())
    assert torch.equal(c.completion_ids[2:, :2], b.completion_ids) and bool((c.completion_mask[2:, 2:] == 0).all())
    assert c.texts == a.texts + b.texts and c.rewards.tolist() == [0, 1, 0, 1, 2]
    s = c.select(slice(1, 3))
    assert s.texts == c.texts[1:3] and torch.equal(s.logprobs, c.logprobs[1:3])


def test_step_prompts_cover_each_epoch_once_and_are_stateless():
    from rayrejuv.data.prompts import step_prompts

    epoch = [i for s in range(5) for i in step_prompts(20, s, 4, seed=7)]
    assert sorted(epoch) == list(range(20))  # one epoch = a permutation
    assert step_prompts(20, 3, 4, seed=7) == epoch[12:16]
    assert step_prompts(20, 5, 4, seed=7) != step_prompts(20, 0, 4, seed=7)  # next epoch reshuffles
    assert step_prompts(20, 3, 4, seed=8) != step_prompts(20, 3, 4, seed=7)


@pytest.mark.parametrize("how", ["token_mean", "seq_mean"])
def test_loss_slices_with_the_global_denominator_add_up_to_the_full_loss(how):
    from rayrejuv.method.grpo import grpo_loss

    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    logp, old, ref = (-torch.rand(N, T, generator=g) for _ in range(3))
    adv = torch.randn(N, generator=g)
    mask = (torch.rand(N, T, generator=g) > 0.3).long()
    kw = {"beta": 0.1, "logp_ref": ref, "aggregation": how}
    full, _ = grpo_loss(logp, old, adv, mask, **kw)
    den = float(mask.sum()) if how == "token_mean" else float(N)
    parts = [
        grpo_loss(logp[s], old[s], adv[s], mask[s], **{**kw, "logp_ref": ref[s]}, denominator=den)[0]
        for s in (slice(0, 2), slice(2, 3), slice(3, 6))
    ]
    torch.testing.assert_close(sum(parts), full, rtol=1e-6, atol=1e-7)


def test_learner_micro_batches_accumulate_to_the_full_batch_step(make_pair):
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner

    _, sft = make_pair("qwen3")
    batch = _rollout(8, 4, 6, 3)
    batch.advantages = torch.randn(8, generator=torch.Generator().manual_seed(1))
    weights = {}
    for micro in (8, 3):
        model = AutoModelForCausalLM.from_pretrained(sft)
        learner = Learner(model, GRPOConfig(micro_batch_size=micro, beta=0.0), LearnerConfig(), torch.device("cpu"))
        # plain SGD: the step is the accumulated gradient itself (Adam's normalisation would blow up
        # float noise on near-zero gradients)
        learner.engine.opt = torch.optim.SGD(model.parameters(), lr=1.0)
        stats = learner.update(batch)
        weights[micro] = learner.weights()
        assert stats["policy/update_norm"] > 0 and stats["policy/grad_norm"] > 0
    for k in weights[8]:
        torch.testing.assert_close(weights[3][k], weights[8][k], rtol=0, atol=1e-6)


def test_trimmed_drops_only_columns_that_are_padding_in_every_row():
    from rayrejuv.models.rollout import Rollout

    a = _rollout(2, 3, 4, 0)
    a.completion_mask[:, 3:] = 0  # no row uses the last completion column
    b = _rollout(2, 6, 6, 1)
    c = Rollout.cat([a, b], pad_id=0)
    c.ref_logprobs = -torch.rand(4, 6)
    t = c.select(slice(0, 2)).trimmed()
    assert t.prompt_ids.shape == (2, 3) and t.completion_ids.shape == (2, 3)
    assert torch.equal(t.prompt_ids, a.prompt_ids) and torch.equal(t.completion_mask, a.completion_mask[:, :3])
    assert torch.equal(t.ref_logprobs, c.ref_logprobs[:2, :3]) and torch.equal(t.logprobs, a.logprobs[:, :3])
    whole = c.trimmed()
    assert whole.prompt_ids.shape == c.prompt_ids.shape and whole.completion_ids.shape == c.completion_ids.shape


def test_trimmed_micro_batches_take_the_whole_batch_step(make_pair):
    """Groups of different prompt and completion lengths: micro-batches of one group (each trimmed
    to its own widths) give the step, and the metrics, of one micro-batch of the whole padded batch."""
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner
    from rayrejuv.models.rollout import Rollout

    _, sft = make_pair("qwen3")
    parts = [_rollout(2, P, T, seed, group=torch.tensor([0, 0])) for seed, (P, T) in enumerate([(3, 6), (7, 2),
                                                                                                  (5, 4), (2, 5)])]
    for p in parts:
        p.completion_mask[1, -1:] = 0  # a shorter second completion
    batch = Rollout.cat(parts, pad_id=0)
    batch.advantages = torch.randn(8, generator=torch.Generator().manual_seed(3))
    runs = {}
    for micro in (8, 2):
        model = AutoModelForCausalLM.from_pretrained(sft)
        learner = Learner(model, GRPOConfig(micro_batch_size=micro, beta=0.0, prompts_per_step=4, group_size=2),
                          LearnerConfig(gradient_checkpointing=False), torch.device("cpu"))
        learner.engine.opt = torch.optim.SGD(model.parameters(), lr=1.0)
        runs[micro] = learner.update(batch), learner.weights()
    (whole, w_whole), (trim, w_trim) = runs[8], runs[2]
    for k in ("policy/entropy", "rollout/logprob_abs_diff", "policy/grad_norm", "policy/pg_loss"):
        assert trim[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), k
    for k in w_whole:
        torch.testing.assert_close(w_trim[k], w_whole[k], rtol=0, atol=1e-6)


def test_one_update_per_batch_needs_no_old_policy_pass_and_takes_the_same_step(make_pair, monkeypatch):
    """updates_per_batch 1, minibatches 1: `old` is the training forward's log-probs, detached (no
    scoring pass); the step, the entropy and the rollout log-prob gap equal those of the scoring
    pass the learner takes otherwise (forced here), up to float noise."""
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner

    _, sft = make_pair("qwen3")
    batch = _rollout(8, 4, 6, 5)
    batch.advantages = torch.randn(8, generator=torch.Generator().manual_seed(2))
    runs = {}
    for scored in (False, True):
        monkeypatch.setattr(GRPOConfig, "scores_old_policy", property(lambda self, s=scored: s))
        model = AutoModelForCausalLM.from_pretrained(sft)
        learner = Learner(model, GRPOConfig(micro_batch_size=3, beta=0.0), LearnerConfig(), torch.device("cpu"))
        learner.engine.opt = torch.optim.SGD(model.parameters(), lr=1.0)
        calls = []
        monkeypatch.setattr(learner, "score", lambda mb, f=learner.score, c=calls: c.append(1) or f(mb))
        runs[scored] = learner.update(batch), learner.weights(), len(calls)
    (fast, w_fast, n_fast), (slow, w_slow, n_slow) = runs[False], runs[True]
    assert (n_fast, n_slow) == (0, 1)
    for k in ("policy/entropy", "rollout/logprob_abs_diff", "policy/grad_norm", "policy/pg_loss"):
        assert fast[k] == pytest.approx(slow[k], rel=1e-5, abs=1e-7), k
    assert fast["policy/ratio_mean"] == 1.0 and fast["policy/clip_fraction"] == 0.0
    for k in w_slow:
        torch.testing.assert_close(w_fast[k], w_slow[k], rtol=0, atol=1e-6)


def test_rl_config_errors_name_the_fix(tmp_path):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.config.base import validate_config

    base = {"model": tmp_path, "train_data": tmp_path / "t.jsonl", "out": tmp_path / "o"}
    with pytest.raises(RejuvError, match="split evenly"):
        validate_config(RLConfig, {**base, "grpo": {"prompts_per_step": 3, "group_size": 3}, "learner": {"workers": 2}})
    with pytest.raises(RejuvError, match="grpo.epsilon"):
        validate_config(RLConfig, {**base, "grpo": {"epsilon": 1.5}})
    with pytest.raises(RejuvError, match="reward.correct must be larger"):
        validate_config(RLConfig, {**base, "reward": {"correct": 0.0, "wrong": 0.0}})
    with pytest.raises(RejuvError, match="rollout.backend"):
        validate_config(RLConfig, {**base, "rollout": {"backend": "sglang"}})


def test_run_directory_claims(tmp_path):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import RunLayout, claim

    cfg = RLConfig(model=tmp_path, train_data=tmp_path / "t.jsonl", out=tmp_path / "run", steps=10)
    layout = RunLayout(cfg.out)
    assert claim(layout, cfg).state["run_id"] is None  # new
    layout.root.mkdir()
    (layout.root / "stray.txt").write_text("x")
    with pytest.raises(RejuvError, match="not a rayrejuv rl run"):
        claim(layout, cfg)
    layout.state.write_text(json.dumps({"fingerprint": cfg.fingerprint(), "run_id": "abc", "finished_steps": 4}))
    assert claim(layout, cfg).state["run_id"] == "abc"  # interrupted: resume
    assert claim(layout, cfg.model_copy(update={"steps": 30})).state["finished_steps"] == 4
    with pytest.raises(RejuvError, match="different settings \\(seed\\)"):
        claim(layout, cfg.model_copy(update={"seed": 3}))
    layout.state.write_text(json.dumps({"fingerprint": cfg.fingerprint(), "run_id": "abc", "finished_steps": 10}))
    with pytest.raises(RejuvError, match="already finished 10 steps"):
        claim(layout, cfg)
    assert claim(layout, cfg.model_copy(update={"overwrite": True})).state["run_id"] is None
    assert not layout.root.exists()


def test_rewards_malformed_is_wrong():
    from rayrejuv.commands.rl.loop import rewards_of

    r = rewards_of(["#### 4", "#### 5", "no answer", "\\boxed{4", "#### four"], ["4"] * 5, 1.0, -1.0)
    assert r.tolist() == [1.0, -1.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("broken", ["missing", "raises"])
def test_a_broken_math_verify_is_an_error_not_a_wrong_answer(monkeypatch, broken):
    """Without math_verify every non-numeric answer would score -1 in silence: a RejuvError naming the
    fix, raised when such an answer first needs checking. Numbers and answerless completions need no
    math_verify and keep working."""
    import builtins
    import sys

    from rayrejuv.method.rewards import is_correct

    monkeypatch.delitem(sys.modules, "math_verify", raising=False)
    if broken == "missing":
        monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` -> ImportError
    else:
        real_import = builtins.__import__

        def failing_import(name, *args, **kwargs):
            if name.split(".")[0] == "math_verify":
                raise RuntimeError("a broken dependency")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", failing_import)
    assert is_correct("#### 4", "4") and not is_correct("#### 5", "4") and not is_correct("no answer", "4")
    with pytest.raises(RejuvError, match="pip install math-verify") as err:
        is_correct("\\boxed{\\frac{1}{2}}", "0.5")
    assert ("ModuleNotFoundError" if broken == "missing" else "RuntimeError: a broken dependency") in str(err.value)
    assert isinstance(err.value.__cause__, ImportError if broken == "missing" else RuntimeError)


def test_math_verify_answers_are_checked_in_a_worker_thread_too():
    """Ray Train runs the GRPO loop in a thread, where Math-Verify's signal-based timeout cannot be set:
    the same answers score the same there as in the main thread."""
    from concurrent.futures import ThreadPoolExecutor

    from rayrejuv.method.rewards import is_correct

    cases = [("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{\\frac{1}{3}}", "0.5"), ("#### four", "4"),
             ("\\boxed{x+1}", "1+x")]
    main = [is_correct(c, r) for c, r in cases]
    with ThreadPoolExecutor(1) as pool:
        threaded = list(pool.map(lambda cr: is_correct(*cr), cases))
    assert main == [True, False, False, True] and threaded == main


def test_cli_rl_refuses_a_missing_model(tmp_path):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "rayrejuv.cli", "rl", "--model", str(tmp_path / "nope"), "--train-data",
         str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"), "--no-track"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 2 and "is not a directory" in p.stderr and "Traceback" not in p.stderr


def test_rl_summary_keeps_the_summary_json_format(tmp_path):
    from rayrejuv.commands.rl.summary import RLSummary

    records = [
        {"step": 0, "eval/pass_at_1": 0.25, "eval/pass_at_k": 0.5},
        {"step": 1, "reward/mean": -0.5, "time/step": 2.0},
        {"step": 2, "reward/mean": 0.25, "time/step": 4.0, "eval/pass_at_1": 0.75, "eval/pass_at_k": 1.0},
    ]
    s = RLSummary.of(records, steps=2, final=tmp_path / "final", seconds=9.5)
    expected = {  # the dict `summarize` wrote before RLSummary, key for key and in order
        "steps": 2, "final_checkpoint": str(tmp_path / "final"), "seconds": 9.5,
        "first": {"reward/mean": -0.5, "time/step": 2.0},
        "last": {"reward/mean": 0.25, "time/step": 4.0, "eval/pass_at_1": 0.75, "eval/pass_at_k": 1.0},
        "eval_first": records[0], "eval_last": records[2], "mean_step_seconds": 3.0,
    }
    assert list(json.loads(s.to_json()).items()) == list(expected.items())
    assert RLSummary.from_json(s.to_json()) == s and s.final_checkpoint == tmp_path / "final"
    empty = RLSummary.of([], steps=0, final=tmp_path, seconds=0.0)
    assert (empty.first, empty.last, empty.eval_first, empty.mean_step_seconds) == ({}, {}, {}, 0.0)


def test_auto_engine_is_deepspeed_on_gpu_only():
    from rayrejuv.config.rl import LearnerConfig

    assert LearnerConfig().resolved_engine() == "ddp"
    assert LearnerConfig(use_gpu=True).resolved_engine() == "deepspeed"
    assert LearnerConfig(use_gpu=True, engine="ddp").resolved_engine() == "ddp"
    assert LearnerConfig(engine="deepspeed").resolved_engine() == "deepspeed"
    assert LearnerConfig(use_gpu=True, gpus_per_worker=0.5).worker_resources() == {"CPU": 1.0, "GPU": 0.5}
    assert LearnerConfig(cpus_per_worker=2).worker_resources() == {"CPU": 2.0}


def test_experience_rewards_and_group_advantages(tmp_path):
    """reward -> advantages of one step of P=2 prompts x G=3: +1/-1 by answer, group-relative."""
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.loop import Experience
    from rayrejuv.commands.rl.workers import RLWorkers

    cfg = RLConfig(model=tmp_path, train_data=tmp_path / "t.jsonl", out=tmp_path / "o",
                   grpo={"prompts_per_step": 2, "group_size": 3})
    rows = [{"prompt": "p0", "answer": "4"}, {"prompt": "p1", "answer": "7"}]
    exp = Experience(cfg, rows, [], RLWorkers(rollouts=None, reference=None, sink=None), pad_id=0, eos_id=None)
    batch = _rollout(6, 2, 3, 0, group=torch.tensor([0, 0, 0, 1, 1, 1]))
    batch.texts = ["#### 4", "#### 5", "#### 4", "#### 1", "#### 2", "#### 3"]
    metrics = exp.reward(batch, rows) | exp.advantages(batch)
    assert batch.rewards.tolist() == [1.0, -1.0, 1.0, -1.0, -1.0, -1.0]
    a = 3**-0.5  # (1 - 1/3) / std([1, -1, 1]), the unbiased std 2/sqrt(3); the all-wrong group: 0
    torch.testing.assert_close(batch.advantages, torch.tensor([a, -2 * a, a, 0.0, 0.0, 0.0]), rtol=0, atol=1e-5)
    assert metrics["reward/mean"] == pytest.approx(-2 / 6) and metrics["reward/accuracy"] == pytest.approx(2 / 6)
    assert metrics["reward/zero_std_fraction"] == 0.5
