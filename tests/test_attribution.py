"""Direct logit attribution: exact reconstruction, exact column scores, first-order row scores."""

import pytest
import torch

from rayrejuv.arch import Axis
from rayrejuv.data.calibration import collate, tokenize_pairs
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.method.attribution import centred_unembedding, component_contribution, frozen_norm_readout
from rayrejuv.method.entropy import select_target_positions
from rayrejuv.models.loading import load_model
from rayrejuv.models.probe import attribute_targets, capture, response_entropy
from rayrejuv.rejuvenation.reset_search import neuron_index
from rayrejuv.testbed import arith


def _float64_norm_forward(self, x):
    # HF's RMSNorm normalises in float32 even in a float64 model; keep float64 end to end so
    # the identities below can be checked at float64 precision.
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _setup(make_pair, tokenizer, family, n=3, tie=False):
    _, sft_dir = make_pair(family, tie_base=tie, tie_sft=tie)
    ckpt = Checkpoint(sft_dir)
    model = load_model(ckpt, torch.float64, torch.device("cpu"))
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = _float64_norm_forward.__get__(module)
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in arith.problems(4, 9, seed=5)]
    batch = collate(tokenize_pairs(tokenizer, rows, 64, "auto"), tokenizer.pad_token_id)
    h = response_entropy(model, batch)
    positions, valid = select_target_positions(h, torch.zeros_like(h), batch.response_mask, n)
    return ckpt, model, batch, positions, valid


@pytest.mark.parametrize("family,tie", [("llama", False), ("qwen2", False), ("qwen3", True), ("mistral", True)])
def test_contributions_sum_to_the_real_logit(make_pair, tokenizer, family, tie):
    ckpt, model, batch, positions, valid = _setup(make_pair, tokenizer, family, tie=tie)
    index = neuron_index(ckpt)
    toks = list(attribute_targets(model, ckpt.spec, index, batch, positions, valid, ckpt.geometry.rms_norm_eps))
    assert len(toks) == positions.shape[1]
    err = torch.cat([t.reconstruction_error for t in toks])
    logit = torch.cat([t.logit for t in toks])
    assert err.numel() == int(valid.sum())
    assert float((err / logit.abs()).max()) < 1e-6
    assert all(t.scores.shape == (t.logit.shape[0], index.total) for t in toks)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_writer_column_scores_sum_to_their_component(make_pair, tokenizer, family):
    ckpt, model, batch, positions, valid = _setup(make_pair, tokenizer, family, n=1)
    spec, index = ckpt.spec, neuron_index(ckpt)
    (tok,) = attribute_targets(model, spec, index, batch, positions, valid, ckpt.geometry.rms_norm_eps)
    b = torch.arange(batch.input_ids.shape[0])
    t = positions[:, 0]
    with torch.no_grad(), capture(model, spec, ckpt.geometry.num_layers) as cap:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    u = centred_unembedding(model.get_submodule(spec.lm_head_module).weight, batch.input_ids[b, t + 1])
    g = frozen_norm_readout(
        cap.final_in[b, t], model.get_submodule(spec.final_norm_module).weight, u, ckpt.geometry.rms_norm_eps
    )
    checked = 0
    for blk in index.blocks:
        if blk.kind.axis is not Axis.COL:
            continue
        block_sum = tok.scores[:, blk.offset : blk.offset + blk.size].sum(1)
        component = component_contribution(cap.writer_out[(blk.layer, blk.kind.name)][b, t], g)
        torch.testing.assert_close(block_sum, component, rtol=1e-9, atol=1e-12)
        checked += 1
    assert checked == 2 * ckpt.geometry.num_layers


def _frozen_logit(model, spec, batch, b, t, g, hook_module=None, row=None, eps_scale=0.0):
    """g . x_final with an optional scaling of one row's output by (1 + eps_scale)."""
    handle = None
    if hook_module is not None:

        def scale(_m, _inp, out):
            out = out.clone()
            out[..., row] *= 1.0 + eps_scale
            return out

        handle = hook_module.register_forward_hook(scale)
    spec_final = model.get_submodule(spec.final_norm_module)
    seen = {}
    h2 = spec_final.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    h2.remove()
    if handle is not None:
        handle.remove()
    return (seen["x"][b, t] * g).sum(-1)


@pytest.mark.parametrize(
    "kind_name,layer,row", [("k_proj", 0, 3), ("up_proj", 1, 5), ("q_proj", 1, 7), ("v_proj", 0, 1)]
)
def test_gradient_x_activation_matches_finite_difference_ablation(make_pair, tokenizer, kind_name, layer, row):
    ckpt, model, batch, positions, valid = _setup(make_pair, tokenizer, "qwen2", n=1)
    spec, index = ckpt.spec, neuron_index(ckpt)
    (tok,) = attribute_targets(model, spec, index, batch, positions, valid, ckpt.geometry.rms_norm_eps)
    kind = spec.kind(kind_name)
    blk = next(x for x in index.blocks if x.layer == layer and x.kind is kind)
    score = tok.scores[:, blk.offset + row]  # (B,)
    b, t = torch.arange(batch.input_ids.shape[0]), positions[:, 0]
    with torch.no_grad(), capture(model, spec, ckpt.geometry.num_layers) as cap:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    u = centred_unembedding(model.get_submodule(spec.lm_head_module).weight, batch.input_ids[b, t + 1])
    g = frozen_norm_readout(
        cap.final_in[b, t], model.get_submodule(spec.final_norm_module).weight, u, ckpt.geometry.rms_norm_eps
    )
    module = model.get_submodule(spec.module_path(layer, kind))
    eps = 1e-4  # central difference: truncation error O(eps^2)
    z_plus = _frozen_logit(model, spec, batch, b, t, g, module, row, eps)
    z_minus = _frozen_logit(model, spec, batch, b, t, g, module, row, -eps)
    fd = (z_plus - z_minus) / (2 * eps)  # d z / d(scale) = sum_p y_p * dz/dy_p = gradient x activation
    assert score.abs().max() > 1e-6  # a neuron that matters, so the check means something
    torch.testing.assert_close(fd, score, rtol=1e-3, atol=1e-8)
