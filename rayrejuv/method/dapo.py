"""DAPO's batch and reward options (Yu et al. 2025, "DAPO"; verl's recipe/dapo, TRL's GRPOTrainer).

    dynamic sampling     keep the groups whose rewards differ (the others have A = 0 for every
                         member), fill the batch from further draws of prompts
    overlong             none | mask: truncated completions leave the loss
                         | soft_penalty: R += min(0, -(L - (L_max - L_buffer)) / L_buffer * factor)

Shapes: P groups of G samples; N = P x G sequences, prompt-major; T completion tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rayrejuv.config.rl import GRPOConfig


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P,) bool: True where a group's rewards are not all equal (std > 0). Exact
    comparison, not std > eps: rewards are the verifier's few values."""
    return (rewards != rewards[:, :1]).any(dim=1)


def fill_groups(informative: torch.Tensor, need: int) -> tuple[torch.Tensor, int]:
    """Which of the drawn groups make the batch. informative (D,) bool over every group drawn this
    step, in draw order (D >= need) -> (indices (need,) in draw order, how many are padding).

    The first `need` informative groups, as verl keeps the head of its filtered batch. When the
    draws hold fewer, the batch is filled with the first uninformative groups rather than
    trained short (verl raises instead): the batch keeps the size the config was validated for
    (an even split over minibatches x learner workers, DeepSpeed's one micro-batch per rank), and
    a padding group has A = 0 for every member, so it adds no policy gradient (only its KL and
    entropy terms, and its tokens to a token_mean's count)."""
    keep = informative.nonzero().flatten()[:need]
    pad = (~informative).nonzero().flatten()[: need - len(keep)]
    return torch.cat([keep, pad]).sort().values, len(pad)


def truncated(completion_ids: torch.Tensor, completion_mask: torch.Tensor, max_new_tokens: int,
              eos_id: int | None) -> torch.Tensor:
    """(N, T) x2 -> (N,) bool: completions that reached max_new_tokens without ending in EOS (as
    TRL: the last token is not EOS). Without an EOS token every completion at the limit is cut."""
    lengths = completion_mask.sum(1)
    at_limit = lengths >= max_new_tokens
    if eos_id is None:
        return at_limit
    last = completion_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (N,) the last kept token
    return at_limit & (last != eos_id)


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (verl's overlong_buffer), (N,) -> (N,):
    0 for L <= max_len - buffer, then linear to -factor at L = max_len:
        min(0, -(L - (max_len - buffer)) / buffer * factor)."""
    exceed = lengths.float() - (max_len - buffer)
    return (-exceed / buffer * factor).clamp(max=0.0)


# grpo.overlong -> (rewards (N,), completion_mask (N, T), truncated (N,), grpo) -> (rewards, completion_mask)
Overlong = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, GRPOConfig], tuple[torch.Tensor, torch.Tensor]]


def _keep(rewards, mask, cut, g):
    return rewards, mask


def _mask_truncated(rewards, mask, cut, g):
    """A truncated completion's tokens leave the loss: its completion_mask row is 0 (TRL does the
    same; the reward and the group's baseline still count it)."""
    return rewards, mask * (~cut).to(mask.dtype)[:, None]


def _soft_penalty(rewards, mask, cut, g):
    return rewards + soft_overlong_penalty(mask.sum(1), g.max_new_tokens, g.overlong_buffer_len,
                                           g.overlong_penalty_factor), mask


OVERLONG: dict[str, Overlong] = {"none": _keep, "mask": _mask_truncated, "soft_penalty": _soft_penalty}
