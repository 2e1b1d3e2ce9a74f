"""Token log-probabilities of completions: sampled by `generate`, and teacher-forced for a learner."""

from __future__ import annotations

import torch

from rayrejuv.errors import RejuvError
from rayrejuv.method.logprobs import token_logprobs_and_entropy
from rayrejuv.models.loading import cache_kwarg, pad_id
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
    model, tokenizer, prompt_ids: list[list[int]], *, n: int, temperature: float, max_new_tokens: int, seed: int,
    share_prompts: bool = False,
) -> Rollout:
    """n completions per prompt (token ids, rayrejuv.data.chat.encode_prompt's) with transformers'
    generate, and their log-probs under the sampling distribution (logits / temperature), recorded
    step by step (SampledLogprobs): generate's (N, T, V) scores and its KV cache are not kept.
    `share_prompts`: each prompt's prefill runs once and its KV cache is copied to its n rows
    (generate alone runs it n times); the samples are the same tokens (tested)."""
    device = next(model.parameters()).device
    ids, attn = left_pad(prompt_ids, pad_id(tokenizer))
    ids, attn = ids.to(device), attn.to(device)  # (R, P)
    from transformers import LogitsProcessorList, TemperatureLogitsWarper

    recorder = SampledLogprobs()
    torch.manual_seed(seed)
    sequences = model.generate(
        **generate_inputs(model, ids, attn, n, share_prompts),
        do_sample=True,
        temperature=1.0,  # the warper below divides, so the recorder sees logits / temperature
        logits_processor=LogitsProcessorList([TemperatureLogitsWarper(temperature), recorder]),
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    P = ids.shape[1]
    completion = sequences[:, P:]  # (N, T)
    logp = recorder.logprobs(completion)  # (N, T)
    mask = completion_mask(completion, tokenizer.eos_token_id)
    return Rollout(
        prompt_ids=ids.repeat_interleave(n, dim=0).cpu(),
        prompt_mask=attn.repeat_interleave(n, dim=0).cpu(),
        completion_ids=completion.cpu(),
        completion_mask=mask.cpu(),
        logprobs=(logp * mask).cpu(),
        texts=tokenizer.batch_decode(completion, skip_special_tokens=True),
        group=torch.arange(len(prompt_ids)).repeat_interleave(n),
    )


def generate_inputs(model, ids: torch.Tensor, attn: torch.Tensor, n: int, share_prompts: bool) -> dict:
    """generate's inputs for n completions of each prompt (ids, attn: (R, P), left-padded): with
    share_prompts (and n > 1) the rows repeated (N = R x n) and each prompt's prefill done once
    (prefilled); else generate's own expansion, which runs the prefill of every row."""
    if share_prompts and n > 1 and ids.shape[1] > 1:
        return {"input_ids": ids.repeat_interleave(n, dim=0), "attention_mask": attn.repeat_interleave(n, dim=0),
                cache_kwarg(model): prefilled(model, ids, attn, n), "num_return_sequences": 1}
    return {"input_ids": ids, "attention_mask": attn, "num_return_sequences": n}


def prefilled(model, ids: torch.Tensor, attn: torch.Tensor, n: int):
    """The KV cache of every prompt but its last token, computed once per prompt (R, P-1) and
    repeated for its n rows (N = R x n): generate then runs only the last token before decoding."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    body = model.base_model  # the hidden states only: no (R, P, V) logits
    body(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=positions(attn[:, :-1]), use_cache=True,
         **{cache_kwarg(body): cache})
    cache.batch_repeat_interleave(n)
    return cache


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
    return _teacher_forced(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)


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
    hooks see the forward that trains; `lm` holds the parameters.

    Shared prompts (`prompt_of_row` given): `prompt_ids` holds each distinct prompt once (R, P) and
    row i answers prompt prompt_of_row[i]. The prompts run once; their keys and values (a KV cache
    that keeps its gradient) serve every row's completion, and the hidden state that predicts a
    row's first token is its prompt's last. The same function of the parameters as the whole-sequence
    forward, for R x P + N x T tokens instead of N x (P + T): a GRPO group's G rows share one prompt."""

    def __init__(self, lm: torch.nn.Module, chunk: int):
        super().__init__()
        for scaling in ("final_logit_softcapping", "logit_scale"):  # HF configs: logits != lm_head(hidden)
            if getattr(lm.config, scaling, None) not in (None, 1.0):
                raise RejuvError(f"{type(lm).__name__} rescales its logits ({scaling}); rl does not support it")
        self.lm, self.chunk = lm, chunk

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float,
                prompt_of_row=None):
        N, T = completion_ids.shape
        if prompt_of_row is None:
            hidden = self._whole_sequences(prompt_ids, prompt_mask, completion_ids, completion_mask)
        else:
            hidden = self._shared_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_of_row)
        head = self.lm.get_output_embeddings()  # called per chunk: an engine's hooks on it run each time
        logp, entropy = token_logprobs_and_entropy(
            hidden.reshape(N * T, -1), head, completion_ids.reshape(N * T), self.chunk, temperature
        )
        return logp.view(N, T), entropy.view(N, T)

    def _whole_sequences(self, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        """(N, T, H): the states that predict the completion, from one forward of prompt + completion."""
        P, T = prompt_ids.shape[1], completion_ids.shape[1]
        inputs = _teacher_forced(prompt_ids, prompt_mask, completion_ids, completion_mask)
        out = self.lm.base_model(**inputs, use_cache=False)  # no KV cache of the whole sequence: nothing decodes after
        return out.last_hidden_state[:, P - 1 : P + T - 1]

    def _shared_prompts(self, prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_of_row) -> torch.Tensor:
        """(N, T, H) as _whole_sequences, each distinct prompt (R, P) run once."""
        from transformers import DynamicCache

        P, model = prompt_ids.shape[1], self.lm.base_model
        cache = DynamicCache(config=self.lm.config)
        kv = {cache_kwarg(model): cache}
        prefix = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                       use_cache=True, **kv)  # (R, P, H)
        cache.batch_select_indices(prompt_of_row)  # (R, ..., P, d) -> (N, ..., P, d): each row its prompt's
        attn = torch.cat([prompt_mask[prompt_of_row], completion_mask], dim=1)  # (N, P+T)
        out = model(input_ids=completion_ids, attention_mask=attn, position_ids=positions(attn)[:, P:], use_cache=True,
                    **kv)  # (N, T, H)
        first = prefix.last_hidden_state[prompt_of_row, -1:]  # (N, 1, H): a prompt's last state predicts token 0
        return torch.cat([first, out.last_hidden_state[:, :-1]], dim=1)


def positions(attn: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows (N, L) -> (N, L): counted from each row's first real token, as
    generate counts them (padding at 0)."""
    return (attn.cumsum(1) - 1).clamp(min=0)


def _teacher_forced(prompt_ids, prompt_mask, completion_ids, completion_mask) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, position_ids of prompt + completion (N, P+T)."""
    attn = torch.cat([prompt_mask, completion_mask], dim=1)
    return {"input_ids": torch.cat([prompt_ids, completion_ids], dim=1), "attention_mask": attn,
            "position_ids": positions(attn)}


def prompt_runs(rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that share a prompt come in runs of equal `group` (a GRPO group's G rows are consecutive,
    prompt-major): the first row of each run (R,) and the run of each row (N,). Checked: every row
    of a run holds its first row's prompt."""
    N = len(rollout)
    group = rollout.group.cpu() if rollout.group is not None else torch.arange(N)
    starts = torch.ones(N, dtype=torch.bool)
    starts[1:] = group[1:] != group[:-1]
    first, run = starts.nonzero().squeeze(1), starts.long().cumsum(0) - 1  # (R,), (N,)
    for name in ("prompt_ids", "prompt_mask"):
        x = getattr(rollout, name)  # checked where it lives: no copy to the host on the learner's hot path
        if not torch.equal(x, x[first.to(x.device)][run.to(x.device)]):
            raise RejuvError(f"shared prompts: rows of one group hold different {name}; the batch's `group` must "
                             "name the prompt each row answers (grpo.share_prompts: false scores rows on their own)")
    return first, run


def score_completions(scorer, rollout: Rollout, temperature: float,
                      share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) log-probs (0 where masked) and entropies of the rollout's completions under `scorer`
    (a CompletionScorer, or an engine that wraps one). Differentiable when grad is enabled.
    `share_prompts`: each run of rows with one prompt (prompt_runs) runs its prompt once."""
    prompts = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask}
    if share_prompts:
        first, run = prompt_runs(rollout)
        device = rollout.prompt_ids.device
        prompts = {k: v[first.to(device)] for k, v in prompts.items()} | {"prompt_of_row": run.to(device)}
    logp, entropy = scorer(**prompts, completion_ids=rollout.completion_ids, completion_mask=rollout.completion_mask,
                           temperature=temperature)
    return logp * rollout.completion_mask, entropy
