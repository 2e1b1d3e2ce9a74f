"""Rollout workers: one interface, two backends (transformers `generate` and vLLM), chosen by config.

A worker holds a copy of the policy. Prompts arrive as token ids (rendered once by the driver,
rayrejuv.data.chat.encode_prompt). `generate` returns a `Rollout` (token ids and sampling
log-probs); `complete` returns texts only (evaluation); `load_weights` takes the learner's
state dict after every update. Workers know nothing of GRPO.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.faults import fault_point
from rayrejuv.models.rollout import Rollout, Sampling


class HFRolloutWorker:
    """Batched transformers sampling on CPU or one GPU."""

    def __init__(self, model_dir: str, cfg: dict, threads: float):
        from rayrejuv.io.checkpoint import Checkpoint
        from rayrejuv.models.loading import DTYPES, load_model, load_tokenizer, resolve_device
        from rayrejuv.runs.resources import set_torch_threads

        set_torch_threads(threads)  # the CPUs this actor reserved
        self.cfg = RolloutConfig.model_validate(cfg)  # its dtype: the start checkpoint's unless chosen
        ckpt = Checkpoint(Path(model_dir), role="policy")
        self.model = load_model(ckpt, DTYPES[self.cfg.dtype], resolve_device(self.cfg.device))
        # Frozen bf16 weights on CPU send generate's prefill head (lm_head on the non-contiguous
        # hidden[:, -1:]) down a path that copies the weight once per sequence (measured: +0.9 GB
        # for 16 sequences of a 135M model, and 1.7x slower); sampling runs under no_grad anyway.
        self.model.requires_grad_(True)
        self.tokenizer = load_tokenizer(ckpt)
        self.version = 0

    def generate(self, prompts: list[list[int]], s: Sampling) -> Rollout:
        from rayrejuv.models.loading import pad_id
        from rayrejuv.models.logprobs import sample

        fault_point()
        b = self.cfg.batch_size
        parts = [
            sample(
                self.model, self.tokenizer, prompts[i : i + b],
                n=s.n, temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=s.seed + i,
            )
            for i in range(0, len(prompts), b)
        ]
        out = parts[0] if len(parts) == 1 else Rollout.cat(parts, pad_id(self.tokenizer))
        out.version = self.version
        return out

    def complete(self, prompts: list[list[int]], s: Sampling) -> list[list[str]]:
        """n texts per prompt; temperature 0 is greedy."""
        from rayrejuv.models.evaluate import generate

        return generate(
            self.model, self.tokenizer, prompts, num_samples=s.n, do_sample=s.temperature > 0,
            temperature=s.temperature or 1.0, max_new_tokens=s.max_new_tokens,
            batch_size=max(1, self.cfg.batch_size // s.n), seed=s.seed,
        )

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if unexpected or [k for k in missing if k not in _tied_keys(self.model)]:
            raise RuntimeError(f"weight sync: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.version = version
        return version

    def sleep(self) -> None:
        """The hf backend keeps its weights resident; on CUDA it returns the caching allocator's
        free blocks (generate's scores: N x V floats per new token) to a GPU it may share with
        the learner and the reference."""
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def policy_version(self) -> int:
        return self.version

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def _tied_keys(model) -> set[str]:
    """Parameter names that alias another (tied embeddings): a state dict may omit them."""
    seen, tied = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


def backends() -> dict[str, type]:
    """Registry of rollout backends (vllm is imported only when chosen)."""
    from rayrejuv.distributed.vllm_rollout import VLLMRolloutWorker

    return {"hf": HFRolloutWorker, "vllm": VLLMRolloutWorker}
