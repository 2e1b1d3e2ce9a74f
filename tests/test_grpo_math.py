"""GRPO advantages, KL estimators and loss against hand-computed values."""

import math

import pytest
import torch

from rayrejuv.method.grpo import aggregate, group_advantages, grpo_loss, kl_penalty


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = group_advantages(r, scale=True, eps=0.0)
    std = math.sqrt(4 / 3)  # unbiased std of (1, -1, -1, 1)
    torch.testing.assert_close(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) / std)
    assert torch.equal(group_advantages(r)[1], torch.zeros(4))  # equal rewards: no signal (eps keeps it finite)
    torch.testing.assert_close(
        group_advantages(torch.tensor([[2.0, 0.0, 1.0]]), scale=False), torch.tensor([[1.0, -1.0, 0.0]])
    )


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    lr = math.log(2.0)  # log pi - log pi_ref
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(lr)
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.5 * lr**2)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.5 - 1 + lr)  # r = 1/2
    big = kl_penalty(torch.tensor([[0.0]]), torch.tensor([[30.0]]), "low_var")
    assert float(big) == 10.0


def test_loss_by_hand_with_clipping_and_aggregation():
    # two sequences, three token slots; the second sequence has two valid tokens
    logp_old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [0.7, 1.1, 9.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = grpo_loss(logp, logp_old, adv, mask, epsilon=0.2, aggregation="token_mean")
    # seq 0 (A=2): min(r*2, clip(r)*2) -> min(3, 2.4)=2.4 ; 2 ; min(1, 1.6)=1.0 -> l = -2.4, -2, -1
    # seq 1 (A=-1): min(-0.7, -0.8)=-0.8 ; min(-1.1, -1.1)=-1.1 -> l = 0.8, 1.1
    per_token = [-2.4, -2.0, -1.0, 0.8, 1.1]
    assert float(loss) == pytest.approx(sum(per_token) / 5)
    assert stats.clip_fraction == pytest.approx(2 / 5)  # tokens 0,0 and 1,0 take the clipped term
    seq, _ = grpo_loss(logp, logp_old, adv, mask, epsilon=0.2, aggregation="seq_mean")
    assert float(seq) == pytest.approx(((-2.4 - 2.0 - 1.0) / 3 + (0.8 + 1.1) / 2) / 2)
    high, _ = grpo_loss(logp, logp_old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    assert float(high) == pytest.approx((-2.56 - 2.0 - 1.0 + 0.8 + 1.1) / 5)  # 1.28 * 2


def test_kl_term_is_added_with_beta():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss, stats = grpo_loss(
        logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), beta=0.1, logp_ref=ref, kl_kind="k3"
    )
    k3 = 0.5 - 1 + math.log(2.0)
    assert float(loss) == pytest.approx(0.1 * k3 / 2) and stats.kl == pytest.approx(k3 / 2)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_a_group_with_equal_rewards_gives_zero_gradient():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    logp = torch.log_softmax(w, dim=-1)[:, :2]  # (N=4, T=2) stand-in token log-probs
    adv = group_advantages(torch.ones(1, 4)).flatten()  # one group, all rewards equal
    loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones(4, 2))
    loss.backward()
    assert torch.count_nonzero(w.grad) == 0


def test_aggregate_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0]])
    assert float(aggregate(x, torch.tensor([[1, 1, 0]]), "token_mean")) == 1.5
