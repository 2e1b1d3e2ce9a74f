"""GRPO (group relative policy optimisation): advantages, KL estimators and the clipped loss.

Shapes: G samples per prompt; N = prompts x G sequences; T = completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLKind = Literal["k1", "k2", "k3", "low_var"]
Aggregation = Literal["token_mean", "seq_mean"]


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps), or r_i - mean_group without `scale`.

    rewards (P, G) -> (P, G). std is the unbiased sample std (as TRL). A group whose rewards are
    all equal gets A = 0 for every member: it carries no learning signal (the collapse a rigid
    SFT model suffers in GRPO).
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, kind: KLKind) -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi.  (N, T) x2 -> (N, T).

    k1 = log r', k2 = (log r')^2 / 2, k3 = (r - 1) - log r with r = pi_ref / pi (unbiased,
    non-negative, low variance; Schulman 2020); low_var = k3 clamped to [-10, 10] (as verl).
    """
    log_ratio = logp - logp_ref  # log pi - log pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.pow(2)
    k3 = torch.exp(-log_ratio) - 1.0 + log_ratio
    return k3 if kind == "k3" else k3.clamp(-10.0, 10.0)


@dataclass
class GRPOStats:
    loss: float
    pg_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float
    entropy: float  # aggregated like the loss; 0 without an entropy term


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation, denominator: float | None = None
) -> torch.Tensor:
    """token_mean: sum over all valid tokens / their count (long answers weigh more);
    seq_mean: mean over sequences of each sequence's token mean.  (N, T) -> ().

    `denominator` replaces the count (tokens, or sequences) by that of the whole global batch, so
    micro-batches and data-parallel shards add up to exactly the full batch's loss.
    """
    mask = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * mask).sum() / (denominator or mask.sum().clamp(min=1.0))
    per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return per_seq.sum() / (denominator or per_seq.shape[0])


def _penalty_terms(
    logp: torch.Tensor, logp_ref: torch.Tensor | None, kl_kind: KLKind, beta: float,
    entropy: torch.Tensor | None, entropy_coeff: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token terms added to the surrogate: (KL_t, beta * KL_t - c_H * H_t), (N, T) each;
    zeros for a term whose coefficient is 0."""
    kl, penalties = torch.zeros_like(logp), torch.zeros_like(logp)
    if beta != 0.0:
        if logp_ref is None:
            raise ValueError("beta != 0 needs reference log-probs (logp_ref)")
        kl = kl_penalty(logp, logp_ref, kl_kind)
        penalties = beta * kl
    if entropy_coeff != 0.0:
        if entropy is None:
            raise ValueError("entropy_coeff != 0 needs the policy's token entropy (entropy)")
        penalties = penalties - entropy_coeff * entropy
    return kl, penalties


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    logp_ref: torch.Tensor | None = None,
    kl_kind: KLKind = "k3",
    aggregation: Aggregation = "token_mean",
    denominator: float | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
) -> tuple[torch.Tensor, GRPOStats]:
    """The clipped surrogate with an optional KL penalty and entropy bonus, reduced over tokens.

        ratio_t = exp(logp_t - logp_old_t)
        l_t = -min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps_high) * A) + beta * KL_t - c_H * H_t

    logp, logp_old, logp_ref, entropy (H_t of the policy, with its gradient), mask: (N, T);
    advantages: (N,) one per sequence. The loss is reduced by `aggregate` (with `denominator`
    when this is a slice of a larger batch), so the bonus is entropy_coeff x the entropy reduced
    as the policy loss (verl: policy_loss - entropy_coeff * entropy_loss); the stats are means
    over this slice.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - logp_old)  # (N, T)
    adv = advantages[:, None]  # (N, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + eps_high) * adv
    pg = -torch.minimum(unclipped, clipped)  # (N, T)
    kl, penalties = _penalty_terms(logp, logp_ref, kl_kind, beta, entropy, entropy_coeff)
    loss = aggregate(pg + penalties, mask, aggregation, denominator)
    with torch.no_grad():
        m = mask.bool()
        is_clipped = (clipped < unclipped) & m  # the clip bound is the active term of the min
        stats = GRPOStats(
            loss=float(loss),
            pg_loss=float(aggregate(pg, mask, aggregation)),
            kl=float(aggregate(kl, mask, aggregation)),
            clip_fraction=float(is_clipped.sum() / m.sum().clamp(min=1)),
            ratio_mean=float(ratio[m].mean()) if bool(m.any()) else 1.0,
            entropy=0.0 if entropy is None else float(aggregate(entropy, mask, aggregation)),
        )
    return loss, stats
