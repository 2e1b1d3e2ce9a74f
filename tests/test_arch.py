"""Architecture maps: valid data, name parsing, agreement with the real transformers modules."""

import pytest
import torch
from conftest import FAMILIES

from rayrejuv.arch import ARCHITECTURES, ArchSpec, Axis, NeuronKind, spec_for
from rayrejuv.errors import RejuvError


def test_registry_covers_the_required_families():
    assert {s.family for s in ARCHITECTURES.values()} == set(FAMILIES)


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="residual writers are COL"):
        NeuronKind("x", "mlp.x", Axis.ROW, writes_residual=True)
    k = NeuronKind("q_proj", "self_attn.q_proj", Axis.ROW, writes_residual=False)
    with pytest.raises(ValueError, match="no weight in layer_tensors"):
        ArchSpec("bad", ("Bad",), (k,), layer_tensors=("mlp.up_proj.weight",))


def test_role_parsing():
    spec = spec_for("Qwen2ForCausalLM")
    r = spec.role("model.layers.11.self_attn.k_proj.bias")
    assert (r.layer, r.kind.name, r.param) == (11, "k_proj", "bias")
    r = spec.role("model.layers.3.input_layernorm.weight")
    assert (r.layer, r.kind, r.param) == (3, None, "weight")
    assert spec.role("model.embed_tokens.weight").layer is None


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(
        RejuvError, match="supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
    ):
        spec_for("FalconForCausalLM")


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_the_transformers_model(family, tokenizer):
    """Every neuron module exists with the axis sizes the spec implies (GQA included), and the
    checkpoint holds exactly the spec's tensors."""
    from rayrejuv.testbed.tiny import build_model, tiny_config

    cfg = tiny_config(family, len(tokenizer), num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=48)
    model = build_model(cfg, seed=0)
    spec = spec_for(cfg.architectures[0])
    state = model.state_dict()
    required = set(spec.required_tensors(cfg.num_hidden_layers, tied=False))
    assert required <= set(state)
    allowed = required | {spec.layer_tensor(i, t) for i in range(2) for t in spec.optional_layer_tensors}
    assert set(state) <= allowed
    for kind in spec.neuron_kinds:
        w = state[spec.weight_name(0, kind)]
        if kind.name in ("k_proj", "v_proj"):
            assert w.shape[0] == 2 * 16  # GQA: kv heads x head_dim rows
        if kind.name == "o_proj":
            assert w.shape == (48, 4 * 16)
        assert isinstance(model.get_submodule(spec.module_path(0, kind)), torch.nn.Linear)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("explicit", [False, True])
def test_geometry_from_config_json_matches_transformers(family, explicit, tokenizer):
    """Reading config.json without transformers gives the values transformers would use,
    whether optional fields are present or omitted (then the family's defaults apply)."""
    import transformers

    from rayrejuv.arch import ModelGeometry
    from rayrejuv.testbed.tiny import FAMILY_CONFIGS

    raw = {
        "architectures": [FAMILY_CONFIGS[family][1]],
        "model_type": family,
        "num_hidden_layers": 3,
        "hidden_size": 64,
        "intermediate_size": 96,
        "vocab_size": 77,
        "num_attention_heads": 4,
    }
    if explicit:
        raw.update({"num_key_value_heads": 2, "head_dim": 8, "tie_word_embeddings": True, "rms_norm_eps": 1e-5})
    ours = ModelGeometry.from_config(raw)
    hf = getattr(transformers, FAMILY_CONFIGS[family][0])(**{k: v for k, v in raw.items() if k != "model_type"})
    assert ours.num_kv_heads == (hf.num_key_value_heads or hf.num_attention_heads)
    assert ours.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    assert ours.tie_word_embeddings == hf.tie_word_embeddings
    assert ours.rms_norm_eps == hf.rms_norm_eps
