"""The one batch type of the RL stage: prompts, sampled completions, and what GRPO adds to them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


def _pad_to(x: torch.Tensor, width: int, value: int | float, left: bool) -> torch.Tensor:
    """(N, w) -> (N, width), padded on the left or the right."""
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (ids, mask), both (N, P) long, padded on the left (generation continues
    from the right edge), as a tokenizer with padding_side="left" pads them."""
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids, mask


@dataclass
class Rollout:
    """N = prompts x G sequences. Prompts are left-padded, completions right-padded.

    Filled by the rollout worker: the token tensors, `logprobs` (sampling log-probs), `texts`,
    `group`. Filled by the GRPO driver: `rewards`, `advantages`, `ref_logprobs`.
    """

    prompt_ids: torch.Tensor  # (N, P)
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, T) pad after EOS
    completion_mask: torch.Tensor  # (N, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (N, T) log pi_rollout(token | prefix); 0 where masked
    texts: list[str] = field(default_factory=list)  # N decoded completions
    group: torch.Tensor | None = None  # (N,) index of the prompt each sequence answers
    version: int = 0  # policy version (learner updates) that sampled it
    rewards: torch.Tensor | None = None  # (N,)
    advantages: torch.Tensor | None = None  # (N,)
    ref_logprobs: torch.Tensor | None = None  # (N, T)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, index: torch.Tensor | slice) -> Rollout:
        """The sequences at `index` (rows), every per-sequence field with them."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[index]
            elif isinstance(v, list):
                idx = range(len(v))[index] if isinstance(index, slice) else index.tolist()
                v = [v[i] for i in idx]
            out[f.name] = v
        return Rollout(**out)

    def trimmed(self) -> Rollout:
        """Without the columns that are padding in every row (the prompts' leading ones, the
        completions' trailing ones): a micro-batch of a few groups pads to its own longest prompt
        and completion, not the batch's. Positions count from each row's first real token
        (teacher_forced_inputs), so nothing a row computes changes."""
        first = int(self.prompt_mask.any(0).long().argmax())  # (P,) -> the first column any row uses
        used = self.completion_mask.any(0).nonzero()  # (k, 1)
        T = int(used.max()) + 1 if len(used) else 1
        per_token = {name: getattr(self, name)[:, :T] for name in ("completion_ids", "completion_mask", "logprobs")}
        if self.ref_logprobs is not None:
            per_token["ref_logprobs"] = self.ref_logprobs[:, :T]
        return replace(self, prompt_ids=self.prompt_ids[:, first:], prompt_mask=self.prompt_mask[:, first:],
                       **per_token)

    def to(self, device: torch.device | str) -> Rollout:
        return replace(
            self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                     if isinstance(getattr(self, f.name), torch.Tensor)}
        )

    @classmethod
    def cat(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """Concatenate rollouts from several workers: prompts re-padded on the left, completions
        on the right, group indices offset so they stay distinct."""
        P = max(p.prompt_ids.shape[1] for p in parts)
        T = max(p.completion_ids.shape[1] for p in parts)
        offset, groups = 0, []
        for p in parts:
            g = p.group if p.group is not None else torch.arange(len(p))
            groups.append(g + offset)
            offset += int(g.max()) + 1 if len(g) else 0

        def stack(name: str, width: int, value, left: bool) -> torch.Tensor | None:
            xs = [getattr(p, name) for p in parts]
            if any(x is None for x in xs):
                return None
            return torch.cat([_pad_to(x, width, value, left) for x in xs])

        per_seq = {
            name: (torch.cat(xs) if all(x is not None for x in xs) else None)
            for name in ("rewards", "advantages")
            for xs in [[getattr(p, name) for p in parts]]
        }
        return cls(
            prompt_ids=stack("prompt_ids", P, pad_id, True),
            prompt_mask=stack("prompt_mask", P, 0, True),
            completion_ids=stack("completion_ids", T, pad_id, False),
            completion_mask=stack("completion_mask", T, 0, False),
            logprobs=stack("logprobs", T, 0.0, False),
            texts=[t for p in parts for t in p.texts],
            group=torch.cat(groups),
            version=min(p.version for p in parts),
            ref_logprobs=stack("ref_logprobs", T, 0.0, False),
            **per_seq,
        )


@dataclass(frozen=True)
class Sampling:
    """How a rollout worker samples: n completions per prompt; temperature 0 is greedy."""

    n: int
    temperature: float
    max_new_tokens: int
    seed: int
    share_prompts: bool = False  # hf: each prompt's prefill once for its n rows (vLLM caches prefixes itself)

    def with_seed(self, seed: int) -> Sampling:
        return replace(self, seed=seed)
