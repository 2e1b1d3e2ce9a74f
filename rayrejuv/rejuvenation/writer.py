"""Fusion (Eq. 1) and reset (Eq. 5) applied tensor by tensor, streamed into output shards.

Any subset of tensors (a layer range) can be processed on its own: each output tensor depends
only on the same-named base and SFT tensors, on alpha and omega and on the reset set (a Recipe).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rayrejuv.arch import Axis
from rayrejuv.config.rejuvenation import FusionParams
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.safetensors_format import TensorMeta
from rayrejuv.io.writer import ShardPatcher, ShardPlan, ShardWriter, fsync_file
from rayrejuv.method.fusion import fuse, fuse_into
from rayrejuv.method.neurons import ResetSet
from rayrejuv.method.reset import neuron_slice, reset
from rayrejuv.models.loading import DTYPES

Pair = tuple[torch.Tensor, torch.Tensor]  # (theta_sft, theta_base) of one tensor name
OnShardDone = Callable[[ShardPlan, dict[str, str]], None]
# Intra-op threads of the compute stage. The pipeline's own threads (read, hash + write, fsync)
# keep the other cores busy, and on a shared machine OpenMP's per-chunk barriers wait for
# descheduled threads: measured on 2 busy cores, fuse_into with 2 threads took 1-10x the time
# of 1 thread (a 0.29B pair: 10.7 s against ~1 s); idle, the whole write was 2.3 s vs 2.55 s.
COMPUTE_THREADS = 1


@dataclass(frozen=True)
class Recipe:
    """What every output tensor is computed from: the pair, Eq. 1 / Eq. 5's knobs, the reset set."""

    base: Checkpoint
    sft: Checkpoint
    fusion: FusionParams  # alpha (Eq. 1), omega (Eq. 5)
    reset_set: ResetSet

    def read(self, name: str) -> Pair:
        return self.sft.get(name), self.base.get(name)

    def reset_slice(self, name: str, ndim: int) -> tuple | None:
        """The indexing tuple of the neurons of tensor `name` to reset, or None."""
        role = self.sft.spec.role(name)
        index = self.reset_set.for_tensor(role.layer, role.kind)
        resettable = role.param == "weight" or (
            role.param == "bias" and role.kind is not None and role.kind.axis is Axis.ROW
        )
        if index is None or not resettable:
            return None
        return neuron_slice(role.kind.axis, index, ndim)


def output_entries(names: list[str], sft: Checkpoint, dtype: str) -> list[tuple[str, TensorMeta]]:
    """Name, dtype and shape of every output tensor: the SFT dtype ('auto') or the one asked for."""
    out = []
    for n in names:
        meta = sft.logical_meta(n)
        if dtype != "auto" and meta.dtype.is_floating_point:
            meta = TensorMeta(DTYPES[dtype], meta.shape)
        out.append((n, meta))
    return out


def rejuvenate_tensor(recipe: Recipe, name: str, pair: Pair, dtype: torch.dtype) -> torch.Tensor:
    """One output tensor from its (SFT, base) pair: Eq. 1 in float32, Eq. 5 on its reset
    rows/columns (if any), cast to `dtype`. The checkpoints name the culprit of a NaN/Inf."""
    theta_sft, theta_base = pair
    if not theta_sft.is_floating_point():
        return theta_sft  # integer buffers are not parameters: keep the SFT value
    out = torch.empty(theta_sft.shape, dtype=dtype)
    lo, hi = fuse_into(out, theta_sft, theta_base, recipe.fusion.alpha)
    theta = apply_reset_slices(recipe, name, out, pair)
    if theta is not None:
        lo, hi = torch.minimum(lo, theta.min()), torch.maximum(hi, theta.max())
    limit = torch.finfo(dtype).max
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and -limit <= float(lo) and float(hi) <= limit):
        recipe.sft.check_finite(name, theta_sft)  # name the input that holds NaN/Inf, if one does
        recipe.base.check_finite(name, theta_base)
        raise RejuvError(f"the rejuvenated tensor {name} overflows {dtype}; use --dtype float32")
    return out


def apply_reset_slices(recipe: Recipe, name: str, out: torch.Tensor, pair: Pair) -> torch.Tensor | None:
    """Eq. 5 on the reset rows/columns of `out` (which holds Eq. 1 already), in place.
    Returns the float32 values written, or None when the tensor has no reset neurons."""
    sl = recipe.reset_slice(name, out.ndim)
    if sl is None:
        return None
    theta_sft, theta_base = pair
    theta = reset(fuse(theta_sft[sl], theta_base[sl], recipe.fusion.alpha), theta_base[sl], recipe.fusion.omega)
    out[sl] = theta.to(out.dtype)
    return theta


def patch_shards(recipe: Recipe, directory: Path, plans: list[ShardPlan]) -> dict[str, str]:
    """Apply Eq. 5 to shards already written with fusion only (the Ray path writes fused shards
    while attribution runs). Only tensors with reset neurons are read back, patched and
    rewritten in place; the result is bit-identical to writing fuse + reset in one pass.
    Returns the sha256 of the rewritten tensors only."""
    checksums: dict[str, str] = {}
    for plan in plans:
        touched = [
            name
            for name, meta in plan.entries
            if meta.dtype.is_floating_point and recipe.reset_slice(name, len(meta.shape)) is not None
        ]
        if touched:
            with ShardPatcher(directory, plan) as patcher:
                for name in touched:
                    out = patcher.read(name)
                    apply_reset_slices(recipe, name, out, recipe.read(name))
                    patcher.write(name, out)
            checksums.update(patcher.checksums)
    return checksums


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block (it is per process)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class _ShardSink:
    """The writer thread's side of write_shards: tensors arrive in plan order, a shard's last
    tensor closes its file, and the fsync thread makes it durable, then calls on_shard_done."""

    directory: Path
    syncer: ThreadPoolExecutor
    on_shard_done: OnShardDone | None
    checksums: dict[str, str] = field(default_factory=dict)
    syncs: list[Future] = field(default_factory=list)
    shard: ShardWriter | None = None  # the one open shard: tensors arrive in plan order

    def write(self, plan: ShardPlan, name: str, tensor: torch.Tensor) -> None:
        if self.shard is None or self.shard.plan.file != plan.file:
            self.shard = ShardWriter(self.directory, plan)
        w = self.shard
        w.write(name, tensor)
        if name == plan.entries[-1][0]:
            w.close()
            self.checksums.update(w.checksums)
            self.syncs.append(self.syncer.submit(self._durable, plan, w))

    def _durable(self, plan: ShardPlan, w: ShardWriter) -> None:
        fsync_file(w.path)
        if self.on_shard_done is not None:
            self.on_shard_done(plan, w.checksums)

    def wait_durable(self) -> None:
        for f in self.syncs:  # appended by the writer thread: read only once every write is done
            f.result()


def write_shards(
    recipe: Recipe,
    directory: Path,
    plans: list[ShardPlan],
    progress: bool = True,
    on_shard_done: OnShardDone | None = None,
) -> dict[str, str]:
    """Write every planned shard; returns the sha256 of every tensor's bytes.
    `on_shard_done(plan, checksums)` runs (in the fsync thread) once a shard is complete and durable.

    Three stages overlap: a reader thread prefetches the next (SFT, base) pairs, this thread
    computes, a writer thread hashes and writes in plan order (file IO, sha256 and torch kernels
    all release the GIL). At most two tensors wait in each queue, so memory stays bounded.
    """
    jobs = [(plan, name, meta) for plan in plans for name, meta in plan.entries]
    with (
        torch_threads(COMPUTE_THREADS),
        ThreadPoolExecutor(1, "rejuv-read") as reader,
        ThreadPoolExecutor(1, "rejuv-write") as writer,
        ThreadPoolExecutor(1, "rejuv-fsync") as syncer,
        tqdm(
            total=sum(p.nbytes for p in plans), desc="fuse + reset", unit="B", unit_scale=True, disable=not progress
        ) as bar,
    ):
        sink = _ShardSink(directory, syncer, on_shard_done)
        reads = deque(reader.submit(recipe.read, name) for _, name, _ in jobs[:2])
        pending: deque[Future] = deque()
        for i, (plan, name, meta) in enumerate(jobs):
            pair = reads.popleft().result()
            if i + 2 < len(jobs):
                reads.append(reader.submit(recipe.read, jobs[i + 2][1]))
            pending.append(writer.submit(sink.write, plan, name, rejuvenate_tensor(recipe, name, pair, meta.dtype)))
            del pair
            while len(pending) > 2:
                pending.popleft().result()
            bar.update(meta.nbytes)
        for f in pending:
            f.result()
        sink.wait_durable()
    return sink.checksums
