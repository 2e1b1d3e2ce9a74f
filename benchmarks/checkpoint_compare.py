"""Tensor-by-tensor comparison of safetensors checkpoints, one tensor in memory at a time.

Two values ``a`` and ``b`` agree "within bf16 rounding" when

    |a - b| <= bf16_eps * max(|a|, |b|) + atol_floor

with ``bf16_eps = 2**-7``. ``bf16_eps * |x|`` is at least one bf16 ulp at the magnitude
of ``x`` (and less than two), so a result rounded the other way passes and anything
larger does not. ``atol_floor`` only matters for values close to zero.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import torch
from safetensors import safe_open

BF16_EPS = torch.finfo(torch.bfloat16).eps


@dataclasses.dataclass
class Comparison:
    label: str
    names_equal: bool
    only_in_a: list[str]
    only_in_b: list[str]
    tensors_compared: int
    shape_or_dtype_mismatches: list[str]
    tensors_with_any_difference: int
    tensors_beyond_tolerance: list[str]
    elements_compared: int
    elements_different: int
    max_abs_diff: float
    max_ulp_ratio: float  # max over elements of |a-b| / (bf16_eps * max(|a|,|b|) + floor)

    @property
    def ok(self) -> bool:
        return (self.names_equal and not self.shape_or_dtype_mismatches
                and not self.tensors_beyond_tolerance)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}


class Checkpoint:
    """Read access to every tensor of a directory of safetensors files."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files = self._shard_files(directory)
        if not self.files:
            raise FileNotFoundError(f"no .safetensors files in {directory}")
        self._stack = ExitStack()
        self._location: dict[str, object] = {}
        for path in self.files:
            handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name in self._location:
                    raise ValueError(f"tensor {name} appears twice in {directory}")
                self._location[name] = handle

    @staticmethod
    def _shard_files(directory: Path) -> list[Path]:
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [directory / name for name in sorted(set(weight_map.values()))]
        return sorted(directory.glob("*.safetensors"))

    def names(self) -> set[str]:
        return set(self._location)

    def get(self, name: str) -> torch.Tensor:
        return self._location[name].get_tensor(name)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tensor_stats(a: torch.Tensor, b: torch.Tensor, atol_floor: float) -> tuple[int, float, float]:
    """(elements different, max |a-b|, max |a-b| / tolerance), computed in float32."""
    a32, b32 = a.float(), b.float()
    diff = (a32 - b32).abs_()
    tolerance = torch.maximum(a32.abs_(), b32.abs_()).mul_(BF16_EPS).add_(atol_floor)
    different = int(torch.count_nonzero(diff))
    max_diff = float(diff.max()) if diff.numel() else 0.0
    max_ratio = float(diff.div_(tolerance).max()) if diff.numel() else 0.0
    return different, max_diff, max_ratio


def compare(
    label: str,
    a: Checkpoint,
    b_names: set[str],
    get_b,
    atol_floor: float,
) -> Comparison:
    """Compare checkpoint ``a`` with tensors given by ``get_b(name)`` over common names."""
    names_a = a.names()
    result = Comparison(
        label=label,
        names_equal=names_a == b_names,
        only_in_a=sorted(names_a - b_names),
        only_in_b=sorted(b_names - names_a),
        tensors_compared=0,
        shape_or_dtype_mismatches=[],
        tensors_with_any_difference=0,
        tensors_beyond_tolerance=[],
        elements_compared=0,
        elements_different=0,
        max_abs_diff=0.0,
        max_ulp_ratio=0.0,
    )
    for name in sorted(names_a & b_names):
        ta, tb = a.get(name), get_b(name)
        result.tensors_compared += 1
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            result.shape_or_dtype_mismatches.append(
                f"{name}: {tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}")
            continue
        different, max_diff, max_ratio = _tensor_stats(ta, tb, atol_floor)
        result.elements_compared += ta.numel()
        result.elements_different += different
        result.tensors_with_any_difference += int(different > 0)
        if max_ratio > 1.0:
            result.tensors_beyond_tolerance.append(name)
        result.max_abs_diff = max(result.max_abs_diff, max_diff)
        result.max_ulp_ratio = max(result.max_ulp_ratio, max_ratio)
    return result


def compare_checkpoints(label: str, dir_a: Path, dir_b: Path, atol_floor: float) -> Comparison:
    with Checkpoint(dir_a) as a, Checkpoint(dir_b) as b:
        return compare(label, a, b.names(), b.get, atol_floor)


def compare_with_fusion_reference(
    label: str, out_dir: Path, base_dir: Path, sft_dir: Path, alpha: float, atol_floor: float
) -> Comparison:
    """Compare ``out_dir`` with ``bf16(base + alpha * (sft - base))`` computed in float32."""
    with Checkpoint(out_dir) as out, Checkpoint(base_dir) as base, Checkpoint(sft_dir) as sft:
        if base.names() != sft.names():
            raise ValueError("base and sft have different tensor names")

        def reference(name: str) -> torch.Tensor:
            b = base.get(name).float()
            s = sft.get(name).float()
            return s.sub_(b).mul_(alpha).add_(b).to(torch.bfloat16)

        return compare(label, out, base.names(), reference, atol_floor)
