"""Teacher-forced passes over calibration batches: entropies, and per-token neuron scores.

Hooks capture what the attribution needs from a running transformers model: the embedding
output, the residual stream entering the final norm, the final norm's output, every row-neuron
projection output (q/k/v/gate/up) and every residual writer's input and output (o/down).
Module paths come from the ArchSpec, never from string literals here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rayrejuv.arch import ArchSpec, Axis
from rayrejuv.data.calibration import CalibrationBatch
from rayrejuv.method.attribution import (
    centred_unembedding,
    component_contribution,
    frozen_norm_readout,
    grad_x_act_row_scores,
    writer_column_scores,
)
from rayrejuv.method.entropy import token_entropy
from rayrejuv.method.neurons import NeuronIndex


@torch.no_grad()
def response_entropy(model, batch: CalibrationBatch) -> torch.Tensor:
    """(B, T) predictive entropy at every position, on the model's device."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
    ).logits  # (B, T, V)
    return token_entropy(logits)


@dataclass
class Captures:
    embed: torch.Tensor | None = None  # (B, T, D)
    final_in: torch.Tensor | None = None  # (B, T, D) residual stream before the final norm
    final_out: torch.Tensor | None = None  # (B, T, D) after the final norm
    rows: dict | None = None  # (layer, kind) -> (B, T, O) projection output
    writer_in: dict | None = None  # (layer, kind) -> (B, T, I) projection input
    writer_out: dict | None = None  # (layer, kind) -> (B, T, D) projection output


@contextmanager
def capture(model, spec: ArchSpec, num_layers: int) -> Iterator[Captures]:
    cap = Captures(rows={}, writer_in={}, writer_out={})
    handles = []

    def on_embed(_m, _inp, out):
        out = out.detach().requires_grad_(True)  # the graph starts here: no parameter grads
        cap.embed = out
        return out

    def on_final(_m, inp, out):
        cap.final_in, cap.final_out = inp[0], out

    def on_row(key):
        def hook(_m, _inp, out):
            cap.rows[key] = out

        return hook

    def on_writer(key):
        def hook(_m, inp, out):
            cap.writer_in[key], cap.writer_out[key] = inp[0], out

        return hook

    handles.append(model.get_submodule(spec.embed_module).register_forward_hook(on_embed))
    handles.append(model.get_submodule(spec.final_norm_module).register_forward_hook(on_final))
    for layer in range(num_layers):
        for kind in spec.neuron_kinds:
            key = (layer, kind.name)
            module = model.get_submodule(spec.module_path(layer, kind))
            hook = on_writer(key) if kind.writes_residual else on_row(key)
            handles.append(module.register_forward_hook(hook))
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()


@dataclass
class TokenAttribution:
    scores: torch.Tensor  # (K, M) signed per-token neuron scores, NeuronIndex order
    logit: torch.Tensor  # (K,) the real centred target logit
    reconstruction_error: torch.Tensor  # (K,) |sum of component contributions - logit|


def attribute_targets(
    model,
    spec: ArchSpec,
    index: NeuronIndex,
    batch: CalibrationBatch,
    positions: torch.Tensor,
    valid: torch.Tensor,
    eps: float,
) -> Iterator[TokenAttribution]:
    """One forward pass, then one backward per target rank k (targets of different examples
    share a backward: examples do not interact). Yields the valid targets of rank k.

    positions, valid: (B, N) from select_target_positions.
    """
    device = next(model.parameters()).device
    num_layers = len({b.layer for b in index.blocks})
    input_ids = batch.input_ids.to(device)
    rows = torch.arange(input_ids.shape[0], device=device)
    with torch.enable_grad(), capture(model, spec, num_layers) as cap:
        # logits_to_keep=1: the full (B, T, V) logits are not needed; we read the real logit
        # from the final norm's output and lm_head below.
        model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device), logits_to_keep=1)
        for k in range(positions.shape[1]):
            ok_cpu = valid[:, k]  # positions and valid live on the CPU: index them with a CPU mask
            ok = ok_cpu.to(device)
            if not bool(ok.any()):
                continue
            b, t = rows[ok], positions[ok_cpu, k].to(device)  # (K,)
            yield attribute_tokens(model, spec, index, cap, input_ids[b, t + 1], b, t, eps)


def attribute_tokens(
    model, spec: ArchSpec, index: NeuronIndex, cap: Captures, target: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
    eps: float,
) -> TokenAttribution:  # fmt: skip
    """The K targets at (b, t) of one captured forward pass; target (K,) the teacher-forced next tokens."""
    u = centred_unembedding(model.get_submodule(spec.lm_head_module).weight, target)  # (K, D); tied = embedding
    x = cap.final_in[b, t]  # (K, D), carries the graph
    gamma = model.get_submodule(spec.final_norm_module).weight  # (D,)
    g = frozen_norm_readout(x.detach(), gamma, u, eps)  # (K, D), frozen scale
    with torch.no_grad():
        real = model.get_submodule(spec.lm_head_module)(cap.final_out[b, t])  # (K, V)
        logit = real.gather(1, target[:, None]).squeeze(1) - real.mean(-1)  # (K,)
        parts = [component_contribution(cap.embed[b, t], g)]
        parts += [component_contribution(o[b, t], g) for o in cap.writer_out.values()]
        recon = torch.stack(parts).sum(0)
    row_keys = list(cap.rows)
    z = (x * g).sum()  # sum over the K targets: their gradients do not mix
    grads = torch.autograd.grad(z, [cap.rows[key] for key in row_keys], retain_graph=True)
    with torch.no_grad():
        rows = {key: grad_x_act_row_scores(cap.rows[key][b], gy[b]) for key, gy in zip(row_keys, grads)}
        scores = torch.cat([_block_scores(model, spec, cap, blk, rows, b, t, g) for blk in index.blocks], dim=1)
    return TokenAttribution(scores=scores, logit=logit, reconstruction_error=(recon - logit).abs())


def _block_scores(model, spec: ArchSpec, cap: Captures, blk, rows: dict, b, t, g: torch.Tensor) -> torch.Tensor:
    """(K, O) scores of one neuron block: grad x act for row neurons, the column readout for writers."""
    key = (blk.layer, blk.kind.name)
    if blk.kind.axis is Axis.ROW:
        return rows[key]
    weight = model.get_submodule(spec.module_path(blk.layer, blk.kind)).weight  # (D, I)
    return writer_column_scores(cap.writer_in[key][b, t], weight, g)
