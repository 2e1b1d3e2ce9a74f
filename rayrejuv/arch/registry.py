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
)
QWEN2 = ArchSpec(
    family="qwen2",
    architectures=("Qwen2ForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    layer_tensors=_PROJ_WEIGHTS + _NORMS + _QKV_BIASES,
)
QWEN3 = ArchSpec(
    family="qwen3",
    architectures=("Qwen3ForCausalLM",),
    neuron_kinds=_ATTN_MLP_KINDS,
    # q_norm/k_norm act on head_dim and are shared by all heads: fused, never reset.
    layer_tensors=_PROJ_WEIGHTS + _NORMS + ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
    optional_layer_tensors=_QKV_BIASES + ("self_attn.o_proj.bias",),
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
    def from_config(cls, config: Any) -> "ModelGeometry":
        """`config` is a transformers PretrainedConfig (defaults of its class applied)."""
        archs = getattr(config, "architectures", None) or []
        if len(archs) != 1:
            raise RejuvError(
                f"config.json must name exactly one architecture in 'architectures', found {archs}; "
                "set it to e.g. [\"LlamaForCausalLM\"]"
            )
        spec = spec_for(archs[0])
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            architecture=archs[0],
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            tie_word_embeddings=bool(config.tie_word_embeddings),
            rms_norm_eps=float(getattr(config, spec.rms_eps_key)),
        )

    @property
    def spec(self) -> ArchSpec:
        return spec_for(self.architecture)
