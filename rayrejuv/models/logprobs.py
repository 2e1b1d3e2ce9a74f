"""Token log-probabilities of completions: sampled by `generate`, and teacher-forced for a learner."""

from __future__ import annotations

import torch

from rayrejuv.models.loading import pad_id
from rayrejuv.models.rollout import Rollout, left_pad


def completion_mask(completion_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 after.  (N, T) -> (N, T) long."""
    if eos_id is None:
        return torch.ones_like(completion_ids)
    is_eos = completion_ids == eos_id
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after).long()


@torch.no_grad()
def sample(
    model, tokenizer, prompt_ids: list[list[int]], *, n: int, temperature: float, max_new_tokens: int, seed: int
) -> Rollout:
    """n completions per prompt (token ids, rayrejuv.data.chat.encode_prompt's) with transformers'
    generate, and their log-probs under the sampling distribution (logits / temperature), from the
    scores generate returns."""
    device = next(model.parameters()).device
    ids, attn = left_pad(prompt_ids, pad_id(tokenizer))
    enc = {"input_ids": ids.to(device), "attention_mask": attn.to(device)}
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        num_return_sequences=n,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    P = enc["input_ids"].shape[1]
    completion = out.sequences[:, P:]  # (N, T)
    # out.scores: T tensors (N, V), the processed logits (temperature applied) of each step
    logits = torch.stack(out.scores, dim=1).float()  # (N, T, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, completion[..., None]).squeeze(-1)  # (N, T)
    mask = completion_mask(completion, tokenizer.eos_token_id)
    return Rollout(
        prompt_ids=enc["input_ids"].repeat_interleave(n, dim=0).cpu(),
        prompt_mask=enc["attention_mask"].repeat_interleave(n, dim=0).cpu(),
        completion_ids=completion.cpu(),
        completion_mask=mask.cpu(),
        logprobs=(logp * mask).cpu(),
        texts=tokenizer.batch_decode(completion, skip_special_tokens=True),
        group=torch.arange(len(prompt_ids)).repeat_interleave(n),
    )


def completion_logits(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced logits / temperature that predict each completion token.  -> (N, T, V) fp32."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # (N, P+T)
    attn = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    P, T = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    # Left-padded prompts: positions count from the first real token, as generate does.
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits  # (N, P+T, V)
    return logits[:, P - 1 : P + T - 1].float() / temperature


def token_logprobs(logits: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """log softmax(logits)[completion token]  (N, T, V) -> (N, T), 0 where masked."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1)
    return logp * rollout.completion_mask


def completion_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced log pi(completion token | prefix) under `model`, as the learner and the
    reference compute them.  -> (N, T), 0 where masked. Differentiable."""
    return token_logprobs(completion_logits(model, rollout, temperature), rollout)
