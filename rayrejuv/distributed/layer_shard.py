"""LayerShard workers: each owns a contiguous range of output shards (hence of layers), reads
only its tensors from the base and SFT checkpoints, and writes its own shard files."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.distributed.faults import fault_point
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.writer import ShardPlan, read_marker, write_marker
from rayrejuv.method.neurons import ResetSet
from rayrejuv.rejuvenation.writer import patch_shards, write_shards


@dataclass
class ShardResult:
    file: str
    stage: str  # "fused" or "final"
    checksums: dict[str, str]
    seconds: float
    reused: bool
    worker: str  # host:pid
    peak_rss_mb: float  # this worker process's peak resident memory so far


class ShardWorker:
    """Plain Python; `ray.remote(ShardWorker)` is the LayerShard actor."""

    def __init__(
        self, base: str, sft: str, allow_pickle: bool, directory: str, alpha: float, omega: float, fingerprint: str
    ):
        self.base = Checkpoint(base, role="base", allow_pickle=allow_pickle)
        self.sft = Checkpoint(sft, role="SFT", allow_pickle=allow_pickle)
        self.directory = Path(directory)
        self.alpha, self.omega, self.fingerprint = alpha, omega, fingerprint
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def write(self, plan: ShardPlan, reset_set: ResetSet | None, reset_hash: str) -> ShardResult:
        """Write one shard: fused only (reset_set None), or final (fuse + reset in one pass).
        A shard whose marker shows the same work already done is reused."""
        stage = "fused" if reset_set is None else "final"
        fp = self._fp(stage, reset_hash)
        done = read_marker(self.directory, plan, fp)
        if done is not None:
            return ShardResult(plan.file, stage, done["checksums"], 0.0, True, self.name, _peak_rss_mb())
        t0 = time.perf_counter()

        def mark(p: ShardPlan, sums: dict[str, str]) -> None:
            fault_point()
            write_marker(self.directory, p, stage, fp, sums)

        sums = write_shards(
            self.directory,
            [plan],
            self.base,
            self.sft,
            reset_set or ResetSet.empty(),
            self.alpha,
            self.omega,
            progress=False,
            on_shard_done=mark,
        )
        return ShardResult(plan.file, stage, sums, time.perf_counter() - t0, False, self.name, _peak_rss_mb())

    def patch(self, plan: ShardPlan, fused: ShardResult, reset_set: ResetSet, reset_hash: str) -> ShardResult:
        """Turn a fused shard into the final one by rewriting its reset neurons in place."""
        fp = self._fp("final", reset_hash)
        done = read_marker(self.directory, plan, fp)
        if done is not None:
            return ShardResult(plan.file, "final", done["checksums"], 0.0, True, self.name, _peak_rss_mb())
        t0 = time.perf_counter()
        sums = dict(fused.checksums)
        sums.update(patch_shards(self.directory, [plan], self.base, self.sft, reset_set, self.alpha, self.omega))
        write_marker(self.directory, plan, "final", fp, sums)
        return ShardResult(plan.file, "final", sums, time.perf_counter() - t0, False, self.name, _peak_rss_mb())

    def _fp(self, stage: str, reset_hash: str) -> str:
        return f"{self.fingerprint}:{stage}:{reset_hash if stage == 'final' else ''}"


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
