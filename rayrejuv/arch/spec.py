"""The shape of an architecture family, as validated data.

A *neuron* is a slice of one weight matrix that the reset can overwrite:
  - ROW neurons: row i of a projection that reads the residual stream (q/k/v/gate/up),
    together with entry i of its bias when there is one. Scored by gradient x activation.
  - COL neurons: column j of a projection that writes the residual stream (o/down).
    Scored exactly by direct logit attribution under the frozen final RMSNorm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Axis(str, Enum):
    ROW = "row"  # W[i, :] and b[i]
    COL = "col"  # W[:, j]


@dataclass(frozen=True)
class NeuronKind:
    name: str  # short name used in reports and configs, e.g. "k_proj"
    module: str  # module path inside a decoder layer, e.g. "self_attn.k_proj"
    axis: Axis
    writes_residual: bool  # True for o/down: their output is added to the residual stream

    def __post_init__(self) -> None:
        if self.writes_residual != (self.axis is Axis.COL):
            raise ValueError(f"neuron kind {self.name}: residual writers are COL neurons, readers ROW")


@dataclass(frozen=True)
class TensorRole:
    """What one tensor name means in its architecture."""

    layer: int | None  # None for embeddings, final norm, lm_head
    kind: NeuronKind | None  # None for tensors without neurons (norms, embeddings)
    param: str  # "weight" or "bias" (or the last name component otherwise)


@dataclass(frozen=True)
class ArchSpec:
    family: str
    architectures: tuple[str, ...]  # HF `config.architectures[0]` values of this family
    neuron_kinds: tuple[NeuronKind, ...]
    layer_tensors: tuple[str, ...]  # required in every decoder layer, relative to the layer prefix
    optional_layer_tensors: tuple[str, ...] = ()  # e.g. biases switched on by the config
    layer_prefix: str = "model.layers."
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    # Values transformers' config class of this family assumes when config.json omits a field
    # (None: derived, kv heads = heads, head_dim = hidden / heads). Checked against
    # transformers in tests/test_arch.py, so config.json can be read without importing it.
    config_defaults: dict[str, Any] = field(
        default_factory=lambda: {
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
            "num_key_value_heads": None,
            "head_dim": None,
        }
    )

    def __post_init__(self) -> None:
        names = [k.name for k in self.neuron_kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.family}: duplicate neuron kinds {names}")
        for kind in self.neuron_kinds:
            if f"{kind.module}.weight" not in self.layer_tensors:
                raise ValueError(f"{self.family}: neuron kind {kind.name} has no weight in layer_tensors")
        if not any(k.writes_residual for k in self.neuron_kinds):
            raise ValueError(f"{self.family}: no residual-writing neuron kind; attribution impossible")
        overlap = set(self.layer_tensors) & set(self.optional_layer_tensors)
        if overlap:
            raise ValueError(f"{self.family}: tensors both required and optional: {sorted(overlap)}")
        object.__setattr__(self, "_layer_re", re.compile(re.escape(self.layer_prefix) + r"(\d+)\.(.+)$"))
        object.__setattr__(self, "_by_module", {k.module: k for k in self.neuron_kinds})

    # ---- names -------------------------------------------------------------------------
    def layer_tensor(self, layer: int, rel: str) -> str:
        return f"{self.layer_prefix}{layer}.{rel}"

    def module_path(self, layer: int, kind: NeuronKind) -> str:
        return f"{self.layer_prefix}{layer}.{kind.module}"

    def weight_name(self, layer: int, kind: NeuronKind) -> str:
        return self.layer_tensor(layer, f"{kind.module}.weight")

    def bias_name(self, layer: int, kind: NeuronKind) -> str:
        return self.layer_tensor(layer, f"{kind.module}.bias")

    @staticmethod
    def module_of(tensor_name: str) -> str:
        return tensor_name.rsplit(".", 1)[0]

    @property
    def embed_module(self) -> str:
        return self.module_of(self.embed)

    @property
    def final_norm_module(self) -> str:
        return self.module_of(self.final_norm)

    @property
    def lm_head_module(self) -> str:
        return self.module_of(self.lm_head)

    def kind(self, name: str) -> NeuronKind:
        for k in self.neuron_kinds:
            if k.name == name:
                return k
        raise KeyError(f"{self.family} has no neuron kind {name!r}; kinds: {[k.name for k in self.neuron_kinds]}")

    # ---- parsing -----------------------------------------------------------------------
    def role(self, tensor_name: str) -> TensorRole:
        m = self._layer_re.match(tensor_name)  # type: ignore[attr-defined]
        if m is None:
            return TensorRole(layer=None, kind=None, param=tensor_name.rsplit(".", 1)[-1])
        layer, rel = int(m.group(1)), m.group(2)
        module, _, param = rel.rpartition(".")
        return TensorRole(layer=layer, kind=self._by_module.get(module), param=param)  # type: ignore[attr-defined]

    def required_tensors(self, num_layers: int, tied: bool) -> list[str]:
        names = [self.embed]
        for layer in range(num_layers):
            names += [self.layer_tensor(layer, rel) for rel in self.layer_tensors]
        names.append(self.final_norm)
        if not tied:
            names.append(self.lm_head)
        return names

    def allowed_layer_tensors(self) -> set[str]:
        return set(self.layer_tensors) | set(self.optional_layer_tensors)
