"""Rollout actors behind one object: the driver asks for rollouts of prompts and pushes weights;
it never sees actors. A crashed actor is restarted by Ray, given the current weights again, and
its share of the prompts is redone."""

from __future__ import annotations

import time
import warnings

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.faults import fault_env
from rayrejuv.distributed.partition import contiguous_ranges
from rayrejuv.models.rollout import Rollout, Sampling


class SharedWeights(dict):
    """A state dict that Ray stores without pickling the tensors' bytes: each tensor travels as a
    uint8 numpy view (pickle protocol 5 buffers, written once into the object store) and unpickles
    as a dict of tensors on the store's memory (read-only: load them, do not write them)."""

    def __reduce__(self):
        flat = [t.detach().contiguous().reshape(-1) for t in self.values()]
        return _unshare, (list(self), [t.view(torch.uint8).numpy() for t in flat],
                          [str(t.dtype).removeprefix("torch.") for t in flat], [tuple(t.shape) for t in self.values()])


def _unshare(names: list[str], buffers: list, dtypes: list[str], shapes: list[tuple]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # the store's buffers are read-only; the tensors are only read
        warnings.simplefilter("ignore", UserWarning)
        return {n: torch.from_numpy(b).view(getattr(torch, d)).reshape(s)
                for n, b, d, s in zip(names, buffers, dtypes, shapes)}


class RolloutGroup:
    def __init__(self, model_dir: str, cfg: RolloutConfig, seed: int, placement: list[dict] | None = None):
        """`placement`: Ray options of actor i over the config's shares (rayrejuv.distributed.placement:
        its scheduling strategy and GPU share in a colocated placement group)."""
        import ray

        from rayrejuv.distributed.rollout import backends

        self.cfg = cfg
        self.seed = seed
        worker = ray.remote(backends()[cfg.backend])
        gpus = cfg.vllm.tensor_parallel_size if cfg.backend == "vllm" and cfg.gpus_per_worker else cfg.gpus_per_worker
        hooks = fault_env()
        options = {
            "num_cpus": cfg.cpus_per_worker,
            "num_gpus": gpus,
            "max_restarts": cfg.max_restarts,
            "scheduling_strategy": "DEFAULT",  # not inside a caller's placement group (a Tune trial's)
            "runtime_env": {"env_vars": hooks} if hooks else None,
        }
        self.actors = [
            worker.options(**options | (placement[i] if placement else {})).remote(
                str(model_dir), cfg.model_dump(mode="json"), cfg.cpus_per_worker
            )
            for i in range(cfg.workers)
        ]
        ray.get([a.policy_version.remote() for a in self.actors])  # fail here, not mid-step
        self._weights = None  # (object ref, version) of the latest sync, to re-send after a restart
        self.restarts = 0

    def _map(self, method: str, prompts: list[list[int]], s: Sampling) -> list:
        """Split prompts over the actors; per-actor seeds make the split reproducible."""
        import ray
        from ray.exceptions import RayActorError

        shares = contiguous_ranges([1] * len(prompts), len(self.actors))
        calls = {i: (self.actors[i], [prompts[j] for j in r], s.with_seed(s.seed + 100_003 * i))
                 for i, r in enumerate(shares)}
        refs = {i: getattr(a, method).remote(p, si) for i, (a, p, si) in calls.items()}
        out = {}
        for i, ref in refs.items():
            for attempt in range(self.cfg.max_restarts + 1):
                try:
                    out[i] = ray.get(ref)
                    break
                except RayActorError:
                    if attempt == self.cfg.max_restarts:
                        raise
                    self.restarts += 1
                    a, p, si = calls[i]
                    self._resend(a)  # waits for the restarted actor, which starts from the initial model
                    ref = getattr(a, method).remote(p, si)
        return [out[i] for i in range(len(shares))]

    def _resend(self, actor) -> None:
        import ray
        from ray.exceptions import RayActorError

        for _ in range(60):
            try:
                if self._weights is None:
                    ray.get(actor.policy_version.remote())
                else:
                    ray.get(actor.load_weights.remote(*self._weights))
                return
            except RayActorError:  # still restarting
                time.sleep(1.0)
        raise RuntimeError("a rollout actor did not come back after a crash")

    def generate(self, prompts: list[list[int]], s: Sampling, pad_id: int) -> Rollout:
        """All sequences of all actors, in prompt order; `group` indexes `prompts`."""
        return Rollout.cat(self._map("generate", prompts, s), pad_id)

    def complete(self, prompts: list[list[int]], s: Sampling) -> list[list[str]]:
        return [texts for part in self._map("complete", prompts, s) for texts in part]

    def sync(self, state_dict: dict, version: int) -> None:
        """Every actor loads the learner's weights, sent in the hf actors' dtype (vLLM: as given),
        through the object store without a pickled copy (SharedWeights); kept for restarts."""
        import ray

        from rayrejuv.models.loading import DTYPES

        dtype = DTYPES[self.cfg.dtype] if self.cfg.backend == "hf" else None
        self._weights = None  # the previous sync's object can go before this one is written
        ref = ray.put(SharedWeights({k: v if dtype is None else v.to(dtype) for k, v in state_dict.items()}))
        self._weights = (ref, version)
        ray.get([a.load_weights.remote(ref, version) for a in self.actors])

    def sleep(self) -> None:
        """Free accelerator memory while the learner trains (vLLM sleep mode; a no-op for hf)."""
        import ray

        ray.get([a.sleep.remote() for a in self.actors])

    def versions(self) -> list[int]:
        import ray

        return ray.get([a.policy_version.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
