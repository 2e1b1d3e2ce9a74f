"""Rollout workers: one interface, two backends (transformers `generate` and vLLM), chosen by config.

A worker holds a copy of the policy. Prompts arrive as token ids (rendered once by the driver,
rayrejuv.data.chat.encode_prompt). `generate` returns a `Rollout` (token ids and sampling
log-probs); `complete` returns texts only (evaluation). After every update the weights arrive
either over the sync process group (`join_sync` once, then `receive_sync`: rollout.sync=collective)
or as a state dict through the object store (`load_weights`); `weight_checksums` fingerprints what
the worker then holds. Workers know nothing of GRPO.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.faults import fault_point
from rayrejuv.distributed.weight_sync import Checksums, Receiver, WeightSyncError
from rayrejuv.method.buckets import BucketPlan, checksum, flat_layout
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
        self._receiver: Receiver | None = None  # the sync group, once joined
        self._layout: tuple | None = None  # (plan, flat buffer the parameters live in, each bucket's region of it)

    def generate(self, prompts: list[list[int]], s: Sampling) -> Rollout:
        from rayrejuv.models.loading import pad_id
        from rayrejuv.models.logprobs import sample

        fault_point()
        b = self.cfg.batch_size
        parts = [
            sample(
                self.model, self.tokenizer, prompts[i : i + b],
                n=s.n, temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=s.seed + i,
                share_prompts=s.share_prompts,
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

    def sync_info(self) -> dict:
        """What the sync needs to know: members in the group (one: this process), where the weights
        live (the device type, and the GPU of each member: NCCL needs one per rank) and their dtype
        (the sender casts to it)."""
        from rayrejuv.distributed.weight_sync import gpu_uuid

        return {"members": 1, "device": self.model.device.type, "gpus": [gpu_uuid(self.model.device)],
                "dtype": str(self.model.dtype).removeprefix("torch.")}

    def join_sync(self, rendezvous: dict, rank: int) -> None:
        """Join (or rejoin: a new generation) the sync group as `rank`. The plan must name exactly
        this model's parameters (tied ones once) with their shapes and dtypes; the parameters then
        move into one flat buffer laid out like the plan's buckets, so buckets land in them."""
        self._receiver = None  # the previous group's connections go first
        receiver = Receiver(rendezvous, rank, self.model.device)
        params = dict(self.model.named_parameters())
        if not (self._layout and self._layout[0] == receiver.plan and _inside(self._layout[1], params)):
            _check_plan(receiver.plan, params)
            self._layout = (receiver.plan, *_relayout(receiver.plan, params))
        self._receiver = receiver

    @torch.no_grad()
    def receive_sync(self, version: int) -> list[Checksums]:
        """One sync: each bucket is received straight into the parameters' memory (through a staging
        buffer when the group's device is not the model's: gloo for a CUDA model); each parameter is
        checksummed once its last bucket is in, while the next one arrives."""
        plan, _, regions = self._layout
        params = dict(self.model.named_parameters())
        staged = self._receiver.device != self.model.device
        sums: Checksums = {}
        for b, buf in self._receiver.buckets(into=None if staged else regions.__getitem__):
            if staged:
                regions[b].copy_(buf)
            for piece in plan.buckets[b].pieces:
                s = plan.specs[piece.tensor]
                if piece.stop == s.numel:
                    sums[s.name] = checksum(params[s.name])
        self.version = version
        return [sums]

    def weight_checksums(self) -> list[Checksums]:
        """The checksums of the parameters this worker samples with (tied ones once), one member."""
        return [{k: checksum(p) for k, p in self.model.named_parameters()}]

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


def _check_plan(plan: BucketPlan, params: dict[str, torch.Tensor]) -> None:
    """The plan's tensors are these parameters, in their shapes and dtypes, contiguous (copied into
    through flat views)."""
    names = [s.name for s in plan.specs]
    if sorted(names) != sorted(params):
        raise WeightSyncError(f"weight sync plan names {sorted(set(names) ^ set(params))[:5]} that the rollout "
                              "model lacks or that it does not send")
    for s in plan.specs:
        p = params[s.name]
        if tuple(p.shape) != s.shape or p.dtype != s.torch_dtype or not p.is_contiguous():
            raise WeightSyncError(f"weight sync: {s.name} is {tuple(p.shape)} {p.dtype} in the rollout model, "
                                  f"{s.shape} {s.dtype} in the plan (or not contiguous)")


@torch.no_grad()
def _relayout(plan: BucketPlan, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every parameter re-pointed (values kept) at its run in one flat uint8 buffer laid out like the
    plan (method.buckets.flat_layout); the buffer and each bucket's region of it. Old storages go as
    each parameter moves (one tensor's worth of extra memory, not a model's)."""
    starts, offsets, total = flat_layout(plan)
    device = next(iter(params.values())).device
    flat = torch.empty(total, dtype=torch.uint8, device=device)
    for s, at in zip(plan.specs, offsets):
        view = flat[at : at + s.nbytes].view(s.torch_dtype).view(s.shape)
        view.copy_(params[s.name])
        params[s.name].data = view
    return flat, [flat[start : start + b.nbytes] for start, b in zip(starts, plan.buckets)]


def _inside(flat: torch.Tensor, params: dict[str, torch.Tensor]) -> bool:
    """Every parameter still lives in `flat` (nothing replaced them since the re-layout)."""
    return all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in params.values())


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
