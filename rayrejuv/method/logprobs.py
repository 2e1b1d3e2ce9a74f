"""Token log-probabilities and entropies from hidden states, the LM head applied a chunk of tokens
at a time: at most one chunk's (chunk, V) logits exist, in the forward and in the backward.

    logits_t = head(h_t) / temperature                h_t: the hidden state that predicts token y_t
                                                      head(h) = h W^T (+ b): the LM head
    log p(y_t) = log_softmax(logits_t)[y_t]           H_t = -sum_v p_t(v) log p_t(v)

With gradients, each chunk runs under activation checkpointing (as TRL's chunked cross-entropy):
the forward keeps only the chunk's inputs, the backward recomputes its logits, so a micro-batch of
M tokens costs (chunk, V) floats instead of (M, V), and the values and gradients are those of the
same operations on the whole (M, V) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_scores(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, H), (c,) -> log p(target) (c,), entropy (c,), in float32.

    `head` runs in the weights' dtype and its logits are then cast, as a transformers LM's forward
    followed by .float() does."""
    logits = head(hidden).float() / temperature  # (c, V)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    chunk: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) and the entropy of each position's distribution, `chunk` tokens at a time.

    hidden (M, H) last hidden states; head: (c, H) -> (c, V) logits, the LM head (h W^T + b: an
    nn.Linear, or the LM's output embedding module, called once per chunk so an engine's hooks,
    e.g. ZeRO-3 gathering the weight, run around each call); targets (M,) long.
    Returns (M,), (M,) float32; differentiable in hidden and in the head's parameters. M >= 1."""
    grad = torch.is_grad_enabled()
    parts = []
    for i in range(0, hidden.shape[0], chunk):
        args = (head, hidden[i : i + chunk], targets[i : i + chunk], temperature)
        parts.append(checkpoint(_chunk_scores, *args, use_reentrant=False) if grad else _chunk_scores(*args))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
