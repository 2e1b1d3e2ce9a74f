"""Token log-probabilities of completions: sampled by `generate`, and teacher-forced for a learner."""

from __future__ import annotations

import torch

from rayrejuv.errors import RejuvError
from rayrejuv.method.logprobs import token_logprobs_and_entropy
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
    generate, and their log-probs under the sampling distribution (logits / temperature), recorded
    step by step (SampledLogprobs): generate's (N, T, V) scores and its KV cache are not kept."""
    device = next(model.parameters()).device
    ids, attn = left_pad(prompt_ids, pad_id(tokenizer))
    enc = {"input_ids": ids.to(device), "attention_mask": attn.to(device)}
    from transformers import LogitsProcessorList, TemperatureLogitsWarper

    recorder = SampledLogprobs()
    torch.manual_seed(seed)
    sequences = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,  # the warper below divides, so the recorder sees logits / temperature
        logits_processor=LogitsProcessorList([TemperatureLogitsWarper(temperature), recorder]),
        top_p=1.0,
        top_k=0,
        num_return_sequences=n,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    P = enc["input_ids"].shape[1]
    completion = sequences[:, P:]  # (N, T)
    logp = recorder.logprobs(completion)  # (N, T)
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


class SampledLogprobs:
    """A logits processor, last in generate's list, that records log p(sampled token) one step
    behind: at step t it keeps log_softmax of the step's scores (N, V), and at step t + 1 reads the
    token sampled at t from input_ids. One (N, V) at a time instead of generate's T of them."""

    def __init__(self):
        self.previous: torch.Tensor | None = None  # (N, V) log-probs of the last step
        self.taken: list[torch.Tensor] = []  # (N,) per finished step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.taken.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def logprobs(self, completion: torch.Tensor) -> torch.Tensor:
        """(N, T) log-probs of the sampled `completion` (generate's new tokens, T steps)."""
        last = self.previous.gather(-1, completion[:, -1:]).squeeze(-1)
        self.previous = None
        return torch.stack([*self.taken, last], dim=1)


def teacher_forced_inputs(rollout: Rollout) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, position_ids of prompt + completion (N, P+T)."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # (N, P+T)
    attn = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    # Left-padded prompts: positions count from the first real token, as generate does.
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": position_ids}


def completion_logits(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced logits / temperature that predict each completion token.  -> (N, T, V) fp32.
    The whole (N, P+T, V) logits: the reference CompletionScorer is checked against."""
    P, T = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    logits = model(**teacher_forced_inputs(rollout)).logits  # (N, P+T, V)
    return logits[:, P - 1 : P + T - 1].float() / temperature


def token_logprobs(logits: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """log softmax(logits)[completion token]  (N, T, V) -> (N, T), 0 where masked."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1)
    return logp * rollout.completion_mask


def completion_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced log pi(completion token | prefix) under `model` from the whole logits: what the
    learner and the reference compute in chunks (CompletionScorer).  -> (N, T), 0 where masked."""
    return token_logprobs(completion_logits(model, rollout, temperature), rollout)


class CompletionScorer(torch.nn.Module):
    """A causal LM whose forward gives each completion token's log-prob and entropy (N, T), its LM
    head applied `chunk` tokens at a time (method.logprobs): the (N, P+T, V) logits of the LM's own
    forward never exist. A training engine (DDP, DeepSpeed) wraps this module, not the LM, so its
    hooks see the forward that trains; `lm` holds the parameters."""

    def __init__(self, lm: torch.nn.Module, chunk: int):
        super().__init__()
        for scaling in ("final_logit_softcapping", "logit_scale"):  # HF configs: logits != lm_head(hidden)
            if getattr(lm.config, scaling, None) not in (None, 1.0):
                raise RejuvError(f"{type(lm).__name__} rescales its logits ({scaling}); rl does not support it")
        self.lm, self.chunk = lm, chunk

    def forward(self, input_ids, attention_mask, position_ids, completion_ids, temperature: float):
        N, T = completion_ids.shape
        P = input_ids.shape[1] - T
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False)  # no KV cache of the whole sequence: nothing decodes after
        hidden = out.last_hidden_state[:, P - 1 : P + T - 1]  # (N, T, H): the states that predict the completion
        head = self.lm.get_output_embeddings()  # called per chunk: an engine's hooks on it run each time
        logp, entropy = token_logprobs_and_entropy(
            hidden.reshape(N * T, -1), head, completion_ids.reshape(N * T), self.chunk, temperature
        )
        return logp.view(N, T), entropy.view(N, T)


def score_completions(scorer, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) log-probs (0 where masked) and entropies of the rollout's completions under `scorer`
    (a CompletionScorer, or an engine that wraps one). Differentiable when grad is enabled."""
    logp, entropy = scorer(**teacher_forced_inputs(rollout), completion_ids=rollout.completion_ids,
                           temperature=temperature)
    return logp * rollout.completion_mask, entropy
