"""Fusion (Eq. 1) and reset (Eq. 5) applied tensor by tensor, streamed into output shards.

Any subset of tensors (a layer range) can be processed on its own: each output tensor depends
only on the same-named base and SFT tensors and on the reset set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rayrejuv.arch import Axis
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.safetensors_format import TensorMeta
from rayrejuv.io.writer import ShardPatcher, ShardPlan, ShardWriter, fsync_file
from rayrejuv.method.fusion import fuse, fuse_into
from rayrejuv.method.neurons import ResetSet
from rayrejuv.method.reset import neuron_slice, reset
from rayrejuv.models.loading import DTYPES


def output_entries(names: list[str], sft: Checkpoint, dtype: str) -> list[tuple[str, TensorMeta]]:
    """Name, dtype and shape of every output tensor: the SFT dtype ('auto') or the one asked for."""
    out = []
    for n in names:
        meta = sft.logical_meta(n)
        if dtype != "auto" and meta.dtype.is_floating_point:
            meta = TensorMeta(DTYPES[dtype], meta.shape)
        out.append((n, meta))
    return out


def read_pair(name: str, base: Checkpoint, sft: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    return sft.get(name), base.get(name)


def rejuvenate_tensor(
    name: str,
    pair: tuple[torch.Tensor, torch.Tensor],
    base: Checkpoint,
    sft: Checkpoint,
    reset_set: ResetSet,
    alpha: float,
    omega: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """One output tensor from its (SFT, base) pair: Eq. 1 in float32, Eq. 5 on its reset
    rows/columns (if any), cast to `dtype`. The checkpoints name the culprit of a NaN/Inf."""
    theta_sft, theta_base = pair
    if not theta_sft.is_floating_point():
        return theta_sft  # integer buffers are not parameters: keep the SFT value
    out = torch.empty(theta_sft.shape, dtype=dtype)
    lo, hi = fuse_into(out, theta_sft, theta_base, alpha)
    theta = apply_reset_slices(name, out, theta_sft, theta_base, sft, reset_set, alpha, omega)
    if theta is not None:
        lo, hi = torch.minimum(lo, theta.min()), torch.maximum(hi, theta.max())
    limit = torch.finfo(dtype).max
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and -limit <= float(lo) and float(hi) <= limit):
        sft.check_finite(name, theta_sft)  # name the input that holds NaN/Inf, if one does
        base.check_finite(name, theta_base)
        raise RejuvError(f"the rejuvenated tensor {name} overflows {dtype}; use --dtype float32")
    return out


def reset_slice(name: str, sft: Checkpoint, reset_set: ResetSet, ndim: int) -> tuple | None:
    """The indexing tuple of the neurons of tensor `name` to reset, or None."""
    role = sft.spec.role(name)
    index = reset_set.for_tensor(role.layer, role.kind)
    resettable = role.param == "weight" or (
        role.param == "bias" and role.kind is not None and role.kind.axis is Axis.ROW
    )
    if index is None or not resettable:
        return None
    return neuron_slice(role.kind.axis, index, ndim)


def apply_reset_slices(
    name: str,
    out: torch.Tensor,
    theta_sft,
    theta_base,
    sft: Checkpoint,
    reset_set: ResetSet,
    alpha: float,
    omega: float,
) -> torch.Tensor | None:
    """Eq. 5 on the reset rows/columns of `out` (which holds Eq. 1 already), in place.
    Returns the float32 values written, or None when the tensor has no reset neurons."""
    sl = reset_slice(name, sft, reset_set, out.ndim)
    if sl is None:
        return None
    theta = reset(fuse(theta_sft[sl], theta_base[sl], alpha), theta_base[sl], omega)
    out[sl] = theta.to(out.dtype)
    return theta


def patch_shards(
    directory: Path,
    plans: list[ShardPlan],
    base: Checkpoint,
    sft: Checkpoint,
    reset_set: ResetSet,
    alpha: float,
    omega: float,
) -> dict[str, str]:
    """Apply Eq. 5 to shards already written with fusion only (the Ray path writes fused shards
    while attribution runs). Only tensors with reset neurons are read back, patched and
    rewritten in place; the result is bit-identical to writing fuse + reset in one pass.
    Returns the sha256 of the rewritten tensors only."""
    checksums: dict[str, str] = {}
    for plan in plans:
        touched = {}
        for name, meta in plan.entries:
            if meta.dtype.is_floating_point and reset_slice(name, sft, reset_set, len(meta.shape)) is not None:
                touched[name] = meta
        if touched:
            with ShardPatcher(directory, plan) as patcher:
                for name in touched:
                    out = patcher.read(name)
                    theta_sft, theta_base = read_pair(name, base, sft)
                    apply_reset_slices(name, out, theta_sft, theta_base, sft, reset_set, alpha, omega)
                    patcher.write(name, out)
            checksums.update(patcher.checksums)
    return checksums


def write_shards(
    directory: Path,
    plans: list[ShardPlan],
    base: Checkpoint,
    sft: Checkpoint,
    reset_set: ResetSet,
    alpha: float,
    omega: float,
    progress: bool = True,
    on_shard_done: Callable[[ShardPlan, dict[str, str]], None] | None = None,
) -> dict[str, str]:
    """Write every planned shard; returns the sha256 of every tensor's bytes.
    `on_shard_done(plan, checksums)` runs (in the writer thread) once a shard is complete and durable.

    Three stages overlap: a reader thread prefetches the next (SFT, base) pair, this thread
    computes, a writer thread hashes and writes in plan order (file IO, sha256 and torch kernels
    all release the GIL). At most two tensors wait in each queue, so memory stays bounded.
    """
    jobs = [(plan, name, meta) for plan in plans for name, meta in plan.entries]
    total = sum(p.nbytes for p in plans)
    writers: dict[str, ShardWriter] = {}
    checksums: dict[str, str] = {}
    syncs: list[Future] = []

    def finish(plan: ShardPlan, w: ShardWriter) -> None:
        fsync_file(w.path)
        if on_shard_done is not None:
            on_shard_done(plan, w.checksums)

    def write(plan: ShardPlan, name: str, tensor: torch.Tensor) -> None:
        if plan.file not in writers:
            writers[plan.file] = ShardWriter(directory, plan)
        w = writers[plan.file]
        w.write(name, tensor)
        if name == plan.entries[-1][0]:
            w.close()
            checksums.update(w.checksums)
            syncs.append(syncer.submit(finish, plan, w))

    with (
        ThreadPoolExecutor(1, "rejuv-read") as reader,
        ThreadPoolExecutor(1, "rejuv-write") as writer,
        ThreadPoolExecutor(1, "rejuv-fsync") as syncer,
        tqdm(total=total, desc="fuse + reset", unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        reads = deque(reader.submit(read_pair, name, base, sft) for _, name, _ in jobs[:2])
        pending: deque[Future] = deque()
        for i, (plan, name, meta) in enumerate(jobs):
            pair = reads.popleft().result()
            if i + 2 < len(jobs):
                reads.append(reader.submit(read_pair, jobs[i + 2][1], base, sft))
            pending.append(
                writer.submit(
                    write, plan, name, rejuvenate_tensor(name, pair, base, sft, reset_set, alpha, omega, meta.dtype)
                )
            )
            del pair
            while len(pending) > 2:
                pending.popleft().result()
            bar.update(meta.nbytes)
        for f in pending:
            f.result()
        for f in syncs:  # appended by the writer thread: read only once every write is done
            f.result()
    return checksums
