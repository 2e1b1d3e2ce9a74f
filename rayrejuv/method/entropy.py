"""Predictive entropy and the entropy-gap target tokens (paper section 3.4, step 1)."""

import torch


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(t) = -sum_v p_t(v) log p_t(v).  (..., V) -> (...), in the logits' dtype (at least float32)."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def select_target_positions(
    h_sft: torch.Tensor, h_base: torch.Tensor, response_mask: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the top-n response positions by |H_SFT(t) - H_base(t)|.

    h_sft, h_base: (B, T) entropies at positions that predict token t+1.
    response_mask: (B, T) True where position t predicts a response token.
    Returns positions (B, n) long and valid (B, n) bool (False where an example has < n positions).
    """
    gap = (h_sft - h_base).abs().masked_fill(~response_mask, float("-inf"))  # (B, T)
    k = min(n, gap.shape[1])
    values, positions = gap.topk(k, dim=1)  # (B, k)
    return positions, torch.isfinite(values)
