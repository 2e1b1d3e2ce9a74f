"""A global numbering of neurons across layers and modules, and the reset set built on it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass

import torch

from rayrejuv.arch import ArchSpec, Axis, NeuronKind


@dataclass(frozen=True)
class NeuronBlock:
    layer: int
    kind: NeuronKind
    offset: int  # first global index of this block
    size: int


class NeuronIndex:
    """Blocks in (layer, kind) order; global index = block.offset + local index."""

    def __init__(self, spec: ArchSpec, num_layers: int, weight_shape):
        """`weight_shape(name) -> tuple` gives the shape of a weight tensor by name."""
        self.spec = spec
        self.blocks: list[NeuronBlock] = []
        offset = 0
        for layer in range(num_layers):
            for kind in spec.neuron_kinds:
                shape = weight_shape(spec.weight_name(layer, kind))
                size = shape[0] if kind.axis is Axis.ROW else shape[1]
                self.blocks.append(NeuronBlock(layer, kind, offset, size))
                offset += size
        self.total = offset

    def split(self, global_index: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Global indices -> {(layer, kind name): sorted local indices}, empty blocks omitted."""
        global_index = global_index.sort().values
        out = {}
        for b in self.blocks:
            lo = torch.searchsorted(global_index, b.offset)
            hi = torch.searchsorted(global_index, b.offset + b.size)
            if hi > lo:
                out[(b.layer, b.kind.name)] = global_index[lo:hi] - b.offset
        return out


# Same-size integer views: two floats are "bit-identical" when these are equal (-0.0 != 0.0, NaN == NaN).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def neuron_tensors(spec: ArchSpec, layer: int, kind: NeuronKind, names: Container[str]) -> list[tuple[str, Axis]]:
    """The tensors that form the neurons of (layer, kind), with the axis a neuron indexes: the
    weight, and for a ROW kind its bias when the checkpoint has one (entry i belongs to row i;
    a COL kind's bias is shared by its columns and is never reset)."""
    out = [(spec.weight_name(layer, kind), kind.axis)]
    if kind.axis is Axis.ROW and spec.bias_name(layer, kind) in names:
        out.append((spec.bias_name(layer, kind), Axis.ROW))
    return out


def changed_slices(theta_sft: torch.Tensor, theta_base: torch.Tensor, axis: Axis) -> torch.Tensor:
    """(n,) bool: True where neuron i (row i for ROW, column i for COL; entry i of a 1-D bias)
    differs in any bit between SFT and base (by value when their dtypes differ)."""
    a, b = theta_sft, theta_base
    if a.dtype == b.dtype and a.is_floating_point():
        a, b = a.view(_BITS[a.element_size()]), b.view(_BITS[b.element_size()])
    differs = a != b
    if differs.ndim == 1:
        return differs
    return differs.any(dim=1) if axis is Axis.ROW else differs.any(dim=0)


def changed_neurons(index: NeuronIndex, names: Container[str], read_pair) -> torch.Tensor:
    """(M,) bool over the global numbering: True where SFT changed any bit of the neuron's
    tensors. `read_pair(name) -> (theta_sft, theta_base)`; one pair is held at a time."""
    mask = torch.zeros(index.total, dtype=torch.bool)
    for b in index.blocks:
        for name, axis in neuron_tensors(index.spec, b.layer, b.kind, names):
            mask[b.offset : b.offset + b.size] |= changed_slices(*read_pair(name), axis)
    return mask


@dataclass
class ResetSet:
    """The neurons to reset: {(layer, kind name): local indices} with their selection scores.

    The one object passed from attribution to the tensor writers (in process or on Ray actors).
    """

    indices: dict[tuple[int, str], torch.Tensor]
    scores: dict[tuple[int, str], torch.Tensor]
    num_neurons: int

    @classmethod
    def empty(cls, num_neurons: int = 0) -> ResetSet:
        return cls({}, {}, num_neurons)

    @classmethod
    def from_global(cls, index: NeuronIndex, selected: torch.Tensor, score: torch.Tensor) -> ResetSet:
        """selected (S,) global indices; score (M,) the relevance each neuron was ranked by."""
        local = index.split(selected)
        offsets = {(b.layer, b.kind.name): b.offset for b in index.blocks}
        scores = {key: score[idx + offsets[key]].detach().cpu() for key, idx in local.items()}
        return cls({k: v.cpu() for k, v in local.items()}, scores, index.total)

    def digest(self) -> str:
        """A hash of which neurons are reset (and how many neurons exist)."""
        import hashlib

        h = hashlib.sha256(str(self.num_neurons).encode())
        for key in sorted(self.indices):
            h.update(repr(key).encode())
            h.update(self.indices[key].to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]

    def for_tensor(self, layer: int | None, kind: NeuronKind | None) -> torch.Tensor | None:
        if layer is None or kind is None:
            return None
        return self.indices.get((layer, kind.name))

    @property
    def size(self) -> int:
        return sum(int(v.numel()) for v in self.indices.values())

    def count_by_kind(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for (_, kind), idx in self.indices.items():
            c[kind] += int(idx.numel())
        return dict(c)

    def count_by_layer(self) -> dict[int, int]:
        c: Counter[int] = Counter()
        for (layer, _), idx in self.indices.items():
            c[layer] += int(idx.numel())
        return dict(sorted(c.items()))

    def records(self) -> list[dict]:
        """Every reset neuron as {layer, module, index, score}, highest score first."""
        rows = [
            {"layer": layer, "module": kind, "index": int(i), "score": float(s)}
            for (layer, kind), idx in self.indices.items()
            for i, s in zip(idx.tolist(), self.scores[(layer, kind)].tolist())
        ]
        return sorted(rows, key=lambda r: -r["score"])
