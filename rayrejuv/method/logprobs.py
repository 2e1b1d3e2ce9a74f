"""Token log-probabilities and entropies from hidden states, the LM head applied a chunk of tokens
at a time: at most one chunk's (chunk, V) logits exist, in the forward and in the backward.

    logits_t = (h_t W^T + b) / temperature            h_t: the hidden state that predicts token y_t
    log p(y_t) = log_softmax(logits_t)[y_t]           H_t = -sum_v p_t(v) log p_t(v)

With gradients, each chunk runs under activation checkpointing (as TRL's chunked cross-entropy):
the forward keeps only the chunk's inputs, the backward recomputes its logits, so a micro-batch of
M tokens costs (chunk, V) floats instead of (M, V), and the values and gradients are those of the
same operations on the whole (M, V) logits.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, H), (V, H), (V,) | None, (c,) -> log p(target) (c,), entropy (c,), in float32.

    The head runs in the weights' dtype and its logits are then cast, as a transformers LM's
    forward followed by .float() does."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature  # (c, V)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) and the entropy of each position's distribution, `chunk` tokens at a time.

    hidden (M, H) last hidden states, weight (V, H) the LM head (tied or not), targets (M,) long.
    Returns (M,), (M,) float32; differentiable in hidden, weight and bias. M >= 1."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    parts = []
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], weight, bias, targets[i : i + chunk], temperature)
        parts.append(checkpoint(_chunk_scores, *args, use_reentrant=False) if grad else _chunk_scores(*args))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
