"""The supported families. Add a family here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayrejuv.arch.spec import ArchSpec, Axis, NeuronKind
from rayrejuv.errors import RejuvError

_ATTN_MLP_KINDS = (
    NeuronKind("q_proj", "self_attn.q_proj", Axis.ROW, writes_residual=False),
    NeuronKind("k_proj", "self_attn.k_proj", Axis.ROW, writes_residual=False),
    NeuronKind("v_proj", "self_attn.v_proj", Axis.ROW, writes_residual=False),
    NeuronKind("o_proj", "self_attn.o_proj", Axis.COL, writes_residual=True),
    NeuronKind("gate_proj", "mlp.gate_proj", Axis.ROW, writes_residual=False),
    NeuronKind("up_proj", "mlp.up_proj", Axis.ROW, writes_residual=False),
    NeuronKind("down_proj", "mlp.down_proj", Axis.COL, writes_residual=True),
)
_PROJ_WEIGHTS = tuple(f"{k.module}.weight" for k in _ATTN_MLP_KINDS)
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_ROW_BIASES = tuple(f"{k.module}.bias" for k in _ATTN_MLP_KINDS if k.axis is Axis.ROW)
_QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")

LLAMA = ArchSpec(
    family="llama",
    architectures=("LlamaForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    layer_tensors=_PROJ_WEIGHTS + _NORMS,
    # attention_bias / mlp_bias switch these on. o/down biases are not neurons: they are
    # constant residual writes, fused like any tensor and never reset.
    optional_layer_tensors=_ROW_BIASES + ("self_attn.o_proj.bias", "mlp.down_proj.bias"),
)
MISTRAL = ArchSpec(
    family="mistral",
    architectures=("MistralForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    layer_tensors=_PROJ_WEIGHTS + _NORMS,
    config_defaults={"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "num_key_value_heads": 8, "head_dim": None},
)
QWEN2 = ArchSpec(
    family="qwen2",
    architectures=("Qwen2ForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    layer_tensors=_PROJ_WEIGHTS + _NORMS + _QKV_BIASES,
    config_defaults={"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "num_key_value_heads": 32, "head_dim": None},
)
QWEN3 = ArchSpec(
    family="qwen3",
    architectures=("Qwen3ForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    # q_norm/k_norm act on head_dim and are shared by all heads: fused, never reset.
    layer_tensors=_PROJ_WEIGHTS + _NORMS + ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
    optional_layer_tensors=_QKV_BIASES + ("self_attn.o_proj.bias",),
    config_defaults={"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "num_key_value_heads": 32, "head_dim": 128},
)

ARCHITECTURES: dict[str, ArchSpec] = {
    arch: spec for spec in (LLAMA, MISTRAL, QWEN2, QWEN3) for arch in spec.architectures
}


def spec_for(architecture: str) -> ArchSpec:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise RejuvError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add its ArchSpec to rayrejuv/arch/registry.py if it is a Llama-style decoder."
        ) from None


@dataclass(frozen=True)
class ModelGeometry:
    """The config facts the method needs, read once from config.json."""

    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    rms_norm_eps: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelGeometry:
        """`config` is the parsed config.json; absent fields take the family's defaults."""
        archs = config.get("architectures") or []
        if len(archs) != 1:
            raise RejuvError(
                f"config.json must name exactly one architecture in 'architectures', found {archs}; "
                'set it to e.g. ["LlamaForCausalLM"]'
            )
        spec = spec_for(archs[0])
        c = {**spec.config_defaults, **{k: v for k, v in config.items() if v is not None}}
        required = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
        missing = [k for k in required if k not in c]
        if missing:
            raise RejuvError(f"config.json lacks {missing}; it is not a complete {spec.family} config")
        heads = c["num_attention_heads"]
        return cls(
            architecture=archs[0],
            num_layers=c["num_hidden_layers"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            vocab_size=c["vocab_size"],
            num_heads=heads,
            num_kv_heads=c["num_key_value_heads"] or heads,
            head_dim=c["head_dim"] or c["hidden_size"] // heads,
            tie_word_embeddings=bool(c["tie_word_embeddings"]),
            rms_norm_eps=float(c["rms_norm_eps"]),
        )

    @property
    def spec(self) -> ArchSpec:
        return spec_for(self.architecture)
