"""The DAPO options and verl's throughput metrics against hand-computed values: dynamic sampling's
group filter and prompt stream, overlong masking and the soft penalty, the entropy bonus, perf/*."""

import math

import pytest
import torch

from rayrejuv.config.rl import GRPOConfig
from rayrejuv.method.dapo import OVERLONG, fill_groups, informative_groups, soft_overlong_penalty, truncated
from rayrejuv.method.grpo import grpo_loss
from rayrejuv.method.throughput import Throughput, peak_tflops, step_flops

# six groups of G=4, as two draws of P=3: all correct, mixed, all wrong, mixed, all correct, all 0.5
REWARDS = torch.tensor([
    [1.0, 1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0, 1.0],
    [-1.0, -1.0, -1.0, -1.0],
    [-1.0, 1.0, -1.0, -1.0],
    [1.0, 1.0, 1.0, 1.0],
    [0.5, 0.5, 0.5, 0.5],
])


def test_the_filter_keeps_groups_whose_rewards_differ_and_pads_in_draw_order():
    informative = informative_groups(REWARDS)
    assert informative.tolist() == [False, True, False, True, False, False]
    chosen, padded = fill_groups(informative, 2)
    assert chosen.tolist() == [1, 3] and padded == 0
    chosen, padded = fill_groups(informative, 3)  # two informative groups drawn: the first uninformative fills
    assert chosen.tolist() == [0, 1, 3] and padded == 1
    chosen, padded = fill_groups(informative[:3], 3)  # one draw, dynamic sampling off: the draw whole, in order
    assert chosen.tolist() == [0, 1, 2] and padded == 2
    chosen, padded = fill_groups(torch.tensor([True, True, True, False, True]), 3)  # the head of the kept ones
    assert chosen.tolist() == [0, 1, 2] and padded == 0


def _experience(tmp_path, **grpo):
    from types import SimpleNamespace

    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.loop import Experience

    cfg = RLConfig(model=tmp_path, train_data=tmp_path / "t.jsonl", out=tmp_path / "o", grpo=grpo)
    workers = SimpleNamespace(rollouts=None, reference=None)  # select and overlong use no actor
    return Experience(cfg, [], [], workers, pad_id=0, eos_id=2)


def _drawn(rewards: torch.Tensor, lengths: list[int], T: int):
    """A batch of rewards.numel() sequences of the given lengths (each ends in EOS=2 before T)."""
    from rayrejuv.models.rollout import Rollout

    N = rewards.numel()
    ids = torch.full((N, T), 5)
    mask = torch.zeros(N, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        if n < T:
            ids[i, n - 1], ids[i, n:] = 2, 0
    return Rollout(prompt_ids=torch.full((N, 3), 7), prompt_mask=torch.ones(N, 3, dtype=torch.long),
                   completion_ids=ids, completion_mask=mask, logprobs=torch.zeros(N, T),
                   texts=[str(i) for i in range(N)], group=torch.arange(N // rewards.shape[1]).repeat_interleave(
                       rewards.shape[1]), rewards=rewards.flatten().clone())


def test_experience_select_trains_the_informative_groups_and_logs_the_draws(tmp_path):
    exp = _experience(tmp_path, prompts_per_step=2, group_size=4, dynamic_sampling=True, max_num_gen_batches=3)
    drawn = _drawn(REWARDS[:4], [2] * 16, T=4)  # two draws of P=2: groups 1 and 3 differ
    batch, m = exp.select(drawn)
    assert batch.texts == [str(i) for i in [4, 5, 6, 7, 12, 13, 14, 15]] and batch.group.tolist() == [0] * 4 + [1] * 4
    assert torch.equal(batch.rewards, REWARDS[[1, 3]].flatten())
    assert m == {"perf/total_num_tokens": 8 * 3 + 8 * 2, "sampling/batches": 2, "sampling/drawn_prompts": 4,
                 "sampling/dropped_groups": 2, "sampling/padded_groups": 0}
    exp = _experience(tmp_path, prompts_per_step=3, group_size=4, dynamic_sampling=True, max_num_gen_batches=2)
    batch, m = exp.select(_drawn(REWARDS, [2] * 24, T=4))  # the cap: 2 draws of 3 hold 2 informative groups
    assert torch.equal(batch.rewards, REWARDS[[0, 1, 3]].flatten())
    assert (m["sampling/batches"], m["sampling/dropped_groups"], m["sampling/padded_groups"]) == (2, 3, 1)
    off = _experience(tmp_path, prompts_per_step=3, group_size=4)
    batch, m = off.select(_drawn(REWARDS[:3], [2] * 12, T=4))
    assert torch.equal(batch.rewards, REWARDS[:3].flatten()) and list(m) == ["perf/total_num_tokens"]


def test_extra_draws_are_a_stateless_stream_apart_from_the_steps_own_prompts():
    from rayrejuv.data.prompts import draw_prompts, step_prompts

    assert draw_prompts(20, 3, 0, 4, seed=7) == step_prompts(20, 3, 4, seed=7)
    first = set(step_prompts(20, 3, 4, seed=7))
    extra = [i for d in (1, 2, 3, 4) for i in draw_prompts(20, 3, d, 4, seed=7)]
    assert sorted(extra) == sorted(set(range(20)) - first)  # 16 other rows, each once
    assert draw_prompts(20, 3, 5, 4, seed=7) == extra[:4]  # then the stream cycles
    assert draw_prompts(20, 3, 2, 4, seed=7) == draw_prompts(20, 3, 2, 4, seed=7)  # a resumed run draws the same
    assert draw_prompts(20, 4, 1, 4, seed=7) != draw_prompts(20, 3, 1, 4, seed=7)
    assert draw_prompts(20, 3, 1, 4, seed=8) != draw_prompts(20, 3, 1, 4, seed=7)
    assert len(draw_prompts(4, 0, 1, 4, seed=0)) == 4  # every row in draw 0: the extra draws use all rows


def test_truncated_means_at_the_limit_without_eos():
    from rayrejuv.models.logprobs import completion_mask

    ids = torch.tensor([[5, 6, 7], [5, 2, 0], [5, 6, 2], [2, 0, 0]])  # EOS = 2
    mask = completion_mask(ids, 2)
    assert truncated(ids, mask, 3, 2).tolist() == [True, False, False, False]  # the 3rd ends in EOS at the limit
    assert truncated(ids, mask, 4, 2).tolist() == [False] * 4  # none reached a limit of 4
    assert truncated(ids, torch.ones_like(ids), 3, None).tolist() == [True] * 4  # no EOS token: the limit alone


def test_soft_overlong_penalty_inside_and_outside_the_buffer():
    lengths = torch.tensor([1, 5, 6, 7, 8, 9, 10])
    # max 10, buffer 4: 0 up to 6 tokens, then -(L - 6) / 4
    torch.testing.assert_close(soft_overlong_penalty(lengths, 10, 4, 1.0),
                               torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0]), rtol=0, atol=0)
    torch.testing.assert_close(soft_overlong_penalty(lengths, 10, 4, 0.5)[-1], torch.tensor(-0.5), rtol=0, atol=0)
    torch.testing.assert_close(soft_overlong_penalty(lengths, 10, 10, 1.0), -lengths.float() / 10, rtol=0, atol=0)


def test_overlong_modes_registry():
    g = GRPOConfig(max_new_tokens=4, overlong_buffer_len=2, overlong_penalty_factor=1.0)
    rewards = torch.tensor([1.0, -1.0, 1.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    cut = torch.tensor([True, False, False])  # the 3rd is 4 long but ends in EOS
    r, m = OVERLONG["none"](rewards, mask, cut, g)
    assert torch.equal(r, rewards) and torch.equal(m, mask)
    r, m = OVERLONG["mask"](rewards, mask, cut, g)
    assert torch.equal(r, rewards) and m.tolist() == [[0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    r, m = OVERLONG["soft_penalty"](rewards, mask, cut, g)  # lengths 4, 3, 4: penalties -1, -0.5, -1
    assert r.tolist() == [0.0, -1.5, 0.0] and torch.equal(m, mask)
    assert set(OVERLONG) == set(GRPOConfig.model_fields["overlong"].annotation.__args__)


def test_experience_overlong_fills_the_batch(tmp_path):
    rewards = torch.tensor([[1.0, -1.0]])
    masked = _experience(tmp_path, prompts_per_step=1, group_size=2, max_new_tokens=4, overlong="mask")
    batch = _drawn(rewards, [4, 2], T=4)  # the first hits the limit without EOS
    m = masked.overlong(batch)
    assert batch.completion_mask.sum(1).tolist() == [0, 2] and batch.rewards.tolist() == [1.0, -1.0]
    assert m == {"overlong/truncated_fraction": 0.5, "overlong/masked_fraction": 0.5, "overlong/penalty_mean": 0.0}
    soft = _experience(tmp_path, prompts_per_step=1, group_size=2, max_new_tokens=4, overlong="soft_penalty",
                       overlong_buffer_len=4, overlong_penalty_factor=0.5)
    batch = _drawn(rewards, [4, 2], T=4)
    m = soft.overlong(batch)  # -0.5 * L / 4
    assert batch.rewards.tolist() == [0.5, -1.25] and m["overlong/penalty_mean"] == -0.375


def test_mask_takes_a_truncated_completion_out_of_the_loss():
    logp = torch.zeros(2, 3, requires_grad=True)  # ratio 1: l_t = -A
    adv = torch.tensor([1.0, -2.0])
    full, _ = grpo_loss(logp, logp.detach(), adv, torch.ones(2, 3))
    assert float(full.detach()) == pytest.approx((3 * -1.0 + 3 * 2.0) / 6)
    cut = torch.tensor([False, True])
    _, mask = OVERLONG["mask"](torch.zeros(2), torch.ones(2, 3, dtype=torch.long), cut, GRPOConfig())
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask)
    assert float(loss.detach()) == -1.0  # the first sequence alone
    loss.backward()
    assert torch.count_nonzero(logp.grad[1]) == 0 and torch.all(logp.grad[0] == -1.0 / 3)


def _token_scores(logits: torch.Tensor, targets: torch.Tensor):
    """(N, T, V) -> log p(target), entropy (N, T), both differentiable in logits."""
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_entropy_bonus_lowers_the_loss_by_exactly_coef_times_entropy(aggregation):
    # one sequence, two tokens over V=3: uniform (H = ln 3) and p = (1/4, 1/2, 1/4) (H = 1.5 ln 2)
    logits = torch.log(torch.tensor([[[1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]])).requires_grad_()
    targets = torch.tensor([[0, 1]])
    mask = torch.ones(1, 2)
    logp, entropy = _token_scores(logits, targets)
    torch.testing.assert_close(entropy, torch.tensor([[math.log(3), 1.5 * math.log(2)]]))
    kw = {"aggregation": aggregation, "entropy": entropy}
    base, _ = grpo_loss(logp, logp.detach(), torch.tensor([0.5]), mask, **kw)
    bonus, stats = grpo_loss(logp, logp.detach(), torch.tensor([0.5]), mask, entropy_coeff=0.1, **kw)
    mean_h = (math.log(3) + 1.5 * math.log(2)) / 2
    assert float((base - bonus).detach()) == pytest.approx(0.1 * mean_h, abs=1e-7)
    assert stats.entropy == pytest.approx(mean_h)
    # the gradient of the bonus: -0.1 / 2 x dH/dz, with dH/dz_v = -p_v (log p_v + H): 0 at the uniform token
    (g_base,) = torch.autograd.grad(base, logits, retain_graph=True)
    (g_bonus,) = torch.autograd.grad(bonus, logits)
    p, h = torch.tensor([0.25, 0.5, 0.25]), 1.5 * math.log(2)
    want = torch.zeros(1, 2, 3)
    want[0, 1] = -0.1 / 2 * (-p * (p.log() + h))
    torch.testing.assert_close(g_bonus - g_base, want, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(logp, logp.detach(), torch.tensor([0.5]), mask, entropy_coeff=0.1)


def test_the_chunked_entropy_carries_its_gradient():
    """The learner's entropy (method.logprobs, each chunk under activation checkpointing) has the
    gradient of the whole-logits entropy: the bonus trains, not only reports."""
    from rayrejuv.method.logprobs import token_logprobs_and_entropy

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=g, requires_grad=True)
    head = torch.nn.Linear(4, 7, bias=False)
    targets = torch.randint(0, 7, (5,), generator=g)
    _, chunked = token_logprobs_and_entropy(hidden, head, targets, chunk=2)
    assert chunked.requires_grad
    (got,) = torch.autograd.grad(chunked.sum(), hidden)
    _, whole = _token_scores(head(hidden)[None], targets[None])
    (want,) = torch.autograd.grad(whole.sum(), hidden)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_throughput_and_mfu_by_hand():
    t = Throughput(gpus=2.0, params=1000, updates=2, forward_passes=2, peak_flops=1e6)
    m = t.metrics(trained=100, generated=300, step_seconds=4.0, generate_seconds=1.0)
    # 6 x 1000 x 100 x 2 + 2 x 1000 x 100 x 2 + 2 x 1000 x 300 = 1.2e6 + 0.4e6 + 0.6e6
    assert step_flops(1000, 100, 300, 2, 2) == 2.2e6
    assert m == {"perf/time_per_step": 4.0, "perf/throughput": 100 / (4.0 * 2), "perf/generation_share": 0.25,
                 "perf/mfu": pytest.approx(2.2e6 / (4.0 * 2 * 1e6))}
    cpu = Throughput(gpus=1.0, params=1000, updates=1, forward_passes=1, peak_flops=None)
    assert "perf/mfu" not in cpu.metrics(100, 300, 4.0, 1.0)
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.0, "NVIDIA H20": 148.0,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA L40S": 362.0, "NVIDIA L4": 121.0, "Tesla T4": None}
    assert {n: peak_tflops(n) for n in names} == names


def test_soft_penalty_buffer_longer_than_the_completion_is_refused(tmp_path):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.config.base import validate_config
    from rayrejuv.errors import RejuvError

    base = {"model": tmp_path, "train_data": tmp_path / "t.jsonl", "out": tmp_path / "o"}
    with pytest.raises(RejuvError, match="overlong_buffer_len=64 exceeds grpo.max_new_tokens=8"):
        validate_config(RLConfig, {**base, "grpo": {"max_new_tokens": 8, "overlong": "soft_penalty"}})
    validate_config(RLConfig, {**base, "grpo": {"max_new_tokens": 8, "overlong": "mask"}})  # the buffer is unused
