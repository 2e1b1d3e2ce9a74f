"""LayerShard workers: each owns a contiguous range of output shards (hence of layers), reads
only its tensors from the base and SFT checkpoints, and writes its own shard files."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from rayrejuv.distributed.faults import fault_point
from rayrejuv.io.writer import ShardPlan, read_marker, write_marker
from rayrejuv.method.neurons import ResetSet
from rayrejuv.rejuvenation.job import RejuvenationJob
from rayrejuv.rejuvenation.writer import Recipe, patch_shards, write_shards
from rayrejuv.runs.resources import set_torch_threads


@dataclass
class ShardResult:
    file: str
    stage: str  # "fused" or "final"
    checksums: dict[str, str]
    seconds: float
    reused: bool
    worker: str  # host:pid
    peak_rss_mb: float  # this worker process's peak resident memory so far
    threads: int  # torch's intra-op threads in this worker (its reserved CPUs on Ray)


class ShardWorker:
    """Plain Python; `ray.remote(ShardWorker)` is the LayerShard actor."""

    def __init__(self, job: RejuvenationJob, reserved_cpus: float | None):
        """reserved_cpus: the actor's CPUs, which its torch threads are sized to; None in process
        (the caller's threads are left alone; the shard writer's compute keeps its own)."""
        if reserved_cpus is not None:
            set_torch_threads(reserved_cpus)
        self.job = job
        self.base, self.sft = job.open()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __enter__(self) -> ShardWorker:
        return self

    def __exit__(self, *exc) -> None:
        """In process: close its handles on the pair (an actor's go with its process)."""
        self.base.close()
        self.sft.close()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def write(self, plan: ShardPlan, reset_set: ResetSet | None, reset_hash: str) -> ShardResult:
        """Write one shard: fused only (reset_set None), or final (fuse + reset in one pass).
        A shard whose marker shows the same work already done is reused."""
        stage = "fused" if reset_set is None else "final"
        fp = self._fp(stage, reset_hash)
        done = read_marker(self.job.directory, plan, fp)
        if done is not None:
            return self._result(plan, stage, done["checksums"], None)
        t0 = time.perf_counter()

        def mark(p: ShardPlan, sums: dict[str, str]) -> None:
            fault_point()
            write_marker(self.job.directory, p, stage, fp, sums)

        recipe = self._recipe(reset_set or ResetSet.empty())
        sums = write_shards(recipe, self.job.directory, [plan], progress=False, on_shard_done=mark)
        return self._result(plan, stage, sums, t0)

    def patch(self, plan: ShardPlan, fused: ShardResult, reset_set: ResetSet, reset_hash: str) -> ShardResult:
        """Turn a fused shard into the final one by rewriting its reset neurons in place."""
        fp = self._fp("final", reset_hash)
        done = read_marker(self.job.directory, plan, fp)
        if done is not None:
            return self._result(plan, "final", done["checksums"], None)
        t0 = time.perf_counter()
        sums = {**fused.checksums, **patch_shards(self._recipe(reset_set), self.job.directory, [plan])}
        write_marker(self.job.directory, plan, "final", fp, sums)
        return self._result(plan, "final", sums, t0)

    def _recipe(self, reset_set: ResetSet) -> Recipe:
        return Recipe(self.base, self.sft, self.job.fusion, reset_set)

    def _fp(self, stage: str, reset_hash: str) -> str:
        return f"{self.job.fingerprint}:{stage}:{reset_hash if stage == 'final' else ''}"

    def _result(self, plan: ShardPlan, stage: str, sums: dict[str, str], t0: float | None) -> ShardResult:
        """t0 None: the shard was reused from its marker (no work, 0 s)."""
        seconds = 0.0 if t0 is None else time.perf_counter() - t0
        return ShardResult(plan.file, stage, sums, seconds, t0 is None, self.name, _peak_rss_mb(), _threads())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
