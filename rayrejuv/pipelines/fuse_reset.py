"""Fusion (Eq. 1) and reset (Eq. 5) applied tensor by tensor, streamed into output shards.

Any subset of tensors (a layer range) can be processed on its own: each output tensor depends
only on the same-named base and SFT tensors and on the reset set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from rayrejuv.arch import Axis
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.safetensors_format import TensorMeta
from rayrejuv.io.writer import ShardPlan, ShardWriter
from rayrejuv.method.fusion import fuse
from rayrejuv.method.neurons import ResetSet
from rayrejuv.method.reset import reset_neurons
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


def rejuvenate_tensor(
    name: str, base: Checkpoint, sft: Checkpoint, reset: ResetSet, alpha: float, omega: float, dtype: torch.dtype
) -> torch.Tensor:
    """One output tensor: fused in float32, its reset rows/columns (if any) set, cast to `dtype`."""
    theta_sft, theta_base = sft.get(name), base.get(name)
    if not theta_sft.is_floating_point():
        return theta_sft  # integer buffers are not parameters: keep the SFT value
    theta = fuse(theta_sft, theta_base, alpha)
    role = sft.spec.role(name)
    index = reset.for_tensor(role.layer, role.kind)
    resettable = role.param == "weight" or (role.param == "bias" and role.kind is not None and role.kind.axis is Axis.ROW)
    if index is not None and resettable:
        reset_neurons(theta, theta_base, index, role.kind.axis, omega)
    theta = theta.to(dtype)
    if not bool(torch.isfinite(theta).all()):
        raise RejuvError(f"the rejuvenated tensor {name} overflows {dtype} (NaN/Inf); use --dtype float32")
    return theta


def write_shards(
    directory: Path,
    plans: list[ShardPlan],
    base: Checkpoint,
    sft: Checkpoint,
    reset: ResetSet,
    alpha: float,
    omega: float,
    progress: bool = True,
) -> dict[str, str]:
    """Write every planned shard; returns the sha256 of every tensor's bytes."""
    checksums: dict[str, str] = {}
    total = sum(p.nbytes for p in plans)
    with tqdm(total=total, desc="fuse + reset", unit="B", unit_scale=True, disable=not progress) as bar:
        for plan in plans:
            writer = ShardWriter(directory, plan)
            for name, meta in plan.entries:
                writer.write(name, rejuvenate_tensor(name, base, sft, reset, alpha, omega, meta.dtype))
                bar.update(meta.nbytes)
            writer.close()
            checksums.update(writer.checksums)
    return checksums
