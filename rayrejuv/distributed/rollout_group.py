"""Rollout actors behind one object: the driver asks for rollouts of prompts and pushes weights;
it never sees actors. A crashed actor is restarted by Ray, given the current weights again, and
its share of the prompts is redone.

Weights travel one of two ways (rollout.sync, the SYNCS registry): `collective`, broadcast bucket
by bucket over a process group of learner rank 0 and every rollout engine (weight_sync.py), or
`object_store`, one ray.put of the state dict that every actor loads. Either way each actor then
reports checksums of the weights it holds, and a mismatch with the sent ones is an error.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Mapping

import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.faults import fault_env
from rayrejuv.distributed.partition import contiguous_ranges
from rayrejuv.distributed.weight_sync import (
    BUFFER_DEVICE,
    TIMEOUT,
    Rendezvous,
    SyncGroup,
    WeightSource,
    WeightSyncError,
    check_checksums,
    gpu_uuid,
    group_backend,
    send,
)
from rayrejuv.method.buckets import checksum, plan_buckets
from rayrejuv.models.rollout import Rollout, Sampling


class SharedWeights(dict):
    """A state dict that Ray stores without pickling the tensors' bytes: each tensor travels as a
    uint8 numpy view (pickle protocol 5 buffers, written once into the object store) and unpickles
    as a dict of tensors on the store's memory (read-only: load them, do not write them)."""

    def __reduce__(self):
        source = WeightSource.of(self)  # a tied alias travels as a name, its bytes once
        tensors = [t for _, t in source.walk()]
        flat = [t.contiguous().reshape(-1) for t in tensors]
        return _unshare, (list(source.shapes), [t.view(torch.uint8).numpy() for t in flat],
                          [str(t.dtype).removeprefix("torch.") for t in flat], [tuple(t.shape) for t in tensors],
                          source.aliases)


def _unshare(names: list[str], buffers: list, dtypes: list[str], shapes: list[tuple],
             aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # the store's buffers are read-only; the tensors are only read
        warnings.simplefilter("ignore", UserWarning)
        out = {n: torch.from_numpy(b).view(getattr(torch, d)).reshape(s)
               for n, b, d, s in zip(names, buffers, dtypes, shapes)}
    return out | {alias: out[name] for alias, name in aliases.items()}


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
        self.info = ray.get([a.sync_info.remote() for a in self.actors])  # fail here, not mid-step
        self.weights = SYNCS[cfg.sync](self.actors, self.info, cfg)  # how weights reach the actors
        self.restarts = 0

    def _map(self, method: str, prompts: list[list[int]], s: Sampling) -> list:
        """Split prompts over the actors; per-actor seeds make the split reproducible. A share is
        redone when its actor died during the call, or answered from a restarted process that
        had not been given the current weights (it died while idle: Ray restarted it silently)."""
        import ray
        from ray.exceptions import RayActorError

        shares = contiguous_ranges([1] * len(prompts), len(self.actors))
        calls = {i: (self.actors[i], [prompts[j] for j in r], s.with_seed(s.seed + 100_003 * i))
                 for i, r in enumerate(shares)}
        refs = {i: getattr(a, method).remote(p, si) for i, (a, p, si) in calls.items()}
        out = {}
        for i, ref in refs.items():
            a, p, si = calls[i]
            for attempt in range(self.cfg.max_restarts + 1):
                error = None
                try:
                    out[i] = ray.get(ref)
                    if ray.get(a.policy_version.remote()) == self.weights.version:
                        break
                except RayActorError as e:
                    error = e
                if attempt == self.cfg.max_restarts:
                    raise RuntimeError(f"rollout actor {i} failed {attempt + 1} times: rollout.max_restarts") from error
                self.restarts += 1
                self._resend(a)  # waits for the restarted actor, which starts from the initial model
                ref = getattr(a, method).remote(p, si)
        return [out[i] for i in range(len(shares))]

    def _resend(self, actor) -> None:
        """Wait for a restarted actor (it starts from the initial model), then give it the current weights."""
        import ray
        from ray.exceptions import RayActorError

        for _ in range(60):
            try:
                ray.get(actor.policy_version.remote())
                break
            except RayActorError:  # still restarting
                time.sleep(1.0)
        else:
            raise RuntimeError("a rollout actor did not come back after a crash")
        self.weights.resend(actor)

    def generate(self, prompts: list[list[int]], s: Sampling, pad_id: int) -> Rollout:
        """All sequences of all actors, in prompt order; `group` indexes `prompts`."""
        return Rollout.cat(self._map("generate", prompts, s), pad_id)

    def complete(self, prompts: list[list[int]], s: Sampling) -> list[list[str]]:
        return [texts for part in self._map("complete", prompts, s) for texts in part]

    def sync(self, weights: WeightSource | Mapping[str, torch.Tensor], version: int) -> dict[str, float]:
        """Every actor gets the learner's weights (a WeightSource, or a state dict), cast by the sender
        to the actors' dtype, as policy `version`; checked by checksum. Returns the sync's metrics."""
        source = weights if isinstance(weights, WeightSource) else WeightSource.of(weights)
        return self.weights.sync(source, version)

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


def _rollout_dtype(info: list[dict]) -> torch.dtype:
    """The dtype every actor holds its weights in (the sender casts to it)."""
    dtypes = {i["dtype"] for i in info}
    if len(dtypes) != 1:
        raise WeightSyncError(f"rollout actors hold their weights in different dtypes: {sorted(dtypes)}")
    return getattr(torch, dtypes.pop())


def _member_names(info: list[dict]) -> list[str]:
    """Who each sync member is, in rank order (ranks 1..n)."""
    return [f"rollout actor {i} (member {j} of {n['members']})"
            for i, n in enumerate(info) for j in range(n["members"])]


class ObjectStoreSync:
    """rollout.sync=object_store: one ray.put of the state dict in the actors' dtype (SharedWeights:
    each tensor's bytes written once, mapped by every actor) that each loads; kept for restarts."""

    def __init__(self, actors: list, info: list[dict], cfg: RolloutConfig):
        self.actors, self.info, self.dtype = actors, info, _rollout_dtype(info)
        self._weights = None  # (object ref, version) of the latest sync, to re-send after a restart
        self._sent = None  # its checksums
        self.version = 0  # the policy version the actors hold (0: the model they loaded)

    def sync(self, source: WeightSource, version: int) -> dict[str, float]:
        import ray

        self._weights = None  # the previous sync's object can go before this one is written
        state = {k: v.to("cpu", self.dtype, copy=source.transient) for k, v in source.walk()}
        self._sent = {k: checksum(v) for k, v in state.items()}
        state |= {alias: state[name] for alias, name in source.aliases.items()}  # pickled as names (SharedWeights)
        self._weights = (ray.put(SharedWeights(state)), version)
        self.version = version
        del state
        ray.get([a.load_weights.remote(*self._weights) for a in self.actors])
        got = [m for sums in ray.get([a.weight_checksums.remote() for a in self.actors]) for m in sums]
        check_checksums(self._sent, got, _member_names(self.info))
        return {"sync/checksum_ok": 1.0, "sync/gbytes": _nbytes(source, self.dtype)}

    def resend(self, actor) -> None:
        import ray

        if self._weights is not None:
            ray.get(actor.load_weights.remote(*self._weights))


def _nbytes(source: WeightSource, dtype: torch.dtype) -> float:
    """GB of weights a sync sends to each member."""
    return sum(s.nbytes for s in source.specs(dtype)) / 1e9


class CollectiveSync:
    """rollout.sync=collective: this process (learner rank 0) broadcasts the weights bucket by bucket
    to every member (an hf actor; each vLLM tensor-parallel worker) over a process group built at the
    first sync (NCCL when the learner and every member hold a GPU of their own, else gloo) and rebuilt under a new
    generation when an actor restarts."""

    def __init__(self, actors: list, info: list[dict], cfg: RolloutConfig):
        self.actors, self.info, self.dtype = actors, info, _rollout_dtype(info)
        self.bucket_bytes = cfg.sync_bucket_mb << 20
        self.store = self.group = self.plan = self.source = None
        self.host, self.backend, self.generation, self.version = "", "gloo", 0, 0

    def __getstate__(self) -> dict:
        """A copy (each Ray Train worker gets one) builds its own group when it first syncs."""
        return self.__dict__ | {"store": None, "group": None, "source": None}

    def sync(self, source: WeightSource, version: int) -> dict[str, float]:
        """The group is built at the first sync, and again when the weights' names or shapes change
        (a pool's next run: the plan travels only at the join)."""
        if self.group is None or self.plan.specs != tuple(source.specs(self.dtype)):
            self._join(source)
        self.source, self.version = source, version
        return self._send()

    def resend(self, actor) -> None:
        """After `actor` restarted: every member joins a new generation of the group and gets the
        current weights again (the restarted one needs them, the others get the same bytes)."""
        if self.source is None:  # nothing synced yet: the actor starts from the model every one loaded
            return
        if self.source.collective:
            raise WeightSyncError(
                "a rollout actor restarted, and the learner's weights can only be walked by every learner rank "
                "together (ZeRO-3): the run fails here and Ray Train resumes it from its last checkpoint; use "
                "rollout.sync=object_store to re-send from the object store instead"
            )
        self._join(self.source)
        self._send()

    def _join(self, source: WeightSource) -> None:
        """The bucket plan and a new generation of the group: each actor's join and ours, concurrently."""
        import ray

        self.plan = plan_buckets(source.specs(self.dtype), self.bucket_bytes)
        backend = group_backend(gpu_uuid(source.device), [g for i in self.info for g in i["gpus"]])
        if self.store is None:
            self.host = ray.util.get_node_ip_address()
            self.store = torch.distributed.TCPStore(self.host, 0, None, True, TIMEOUT, wait_for_workers=False)
        members = [i["members"] for i in self.info]
        rdv = Rendezvous(self.host, self.store.port, 1 + sum(members), self.generation,
                         backend, self.plan.to_wire(), source.aliases)
        self.generation += 1
        firsts = [1 + sum(members[:i]) for i in range(len(members))]  # each actor's first rank
        refs = [a.join_sync.remote(rdv.to_wire(), r) for a, r in zip(self.actors, firsts)]
        self.group = None  # the previous generation's connections go first
        self.group = _alongside(lambda: SyncGroup(rdv, 0, self.store), refs)
        self.backend = rdv.backend

    def _send(self) -> dict[str, float]:
        import ray

        refs = [a.receive_sync.remote(self.version) for a in self.actors]
        device = BUFFER_DEVICE[self.backend](self.source.device)
        sent = send(self.group, self.plan, self.source.walk(), device)
        check_checksums(sent, [m for sums in ray.get(refs) for m in sums], _member_names(self.info))
        return {"sync/checksum_ok": 1.0, "sync/gbytes": self.plan.nbytes / 1e9,
                "sync/buckets": float(len(self.plan.buckets))}


def _alongside(build: Callable[[], SyncGroup], refs: list) -> SyncGroup:
    """Our side of a rendezvous (it blocks until every member has joined) in a thread while the
    members' join calls run: a member that fails to join raises here at once, not at the timeout."""
    import ray

    box: dict = {}

    def ours() -> None:
        try:
            box["group"] = build()
        except BaseException as e:  # re-raised below, in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=ours, daemon=True)
    thread.start()
    ray.get(refs)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["group"]


SYNCS = {"collective": CollectiveSync, "object_store": ObjectStoreSync}
