"""Which neurons to reset (paper section 3.4, steps 1-4) from a calibration set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.data.calibration import batches, load_calibration
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.method.entropy import select_target_positions
from rayrejuv.method.fusion import fuse
from rayrejuv.method.neurons import NeuronIndex, ResetSet
from rayrejuv.method.selection import SELECTORS, reset_count, token_relevance
from rayrejuv.models.loading import DTYPES, load_model, load_tokenizer, pad_id, resolve_device
from rayrejuv.models.probe import attribute_targets, response_entropy
from rayrejuv.timing import PhaseTimer


@dataclass
class AttributionStats:
    examples: int
    target_tokens: int
    entropy_base: float  # mean over response positions
    entropy_sft: float
    target_gap: float  # mean |H_SFT - H_base| at the chosen targets
    reconstruction_error_max: float
    reconstruction_error_mean: float
    logit_abs_mean: float  # scale of the logits the error is measured against


def neuron_index(ckpt: Checkpoint) -> NeuronIndex:
    return NeuronIndex(ckpt.spec, ckpt.geometry.num_layers, lambda name: ckpt.meta(name).shape)


@torch.no_grad()
def fuse_in_place(model, base: Checkpoint, sft: Checkpoint, alpha: float) -> None:
    """Turn a loaded SFT model into the fused one (for attribution_model=fused)."""
    for name, p in model.named_parameters():
        if name in sft.names or name == sft.spec.lm_head:
            p.copy_(fuse(sft.get(name), base.get(name), alpha))


def find_reset_set(
    cfg: ResetSearchConfig, base: Checkpoint, sft: Checkpoint, timer: PhaseTimer, progress: bool = True
) -> tuple[ResetSet, AttributionStats]:
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.attribution_dtype]
    tokenizer = load_tokenizer(sft)
    examples = load_calibration(cfg.calibration, tokenizer, cfg.max_length)
    calib = batches(examples, cfg.batch_size, pad_id(tokenizer))

    # Step 1: entropies of base and SFT at every response position.
    with timer.phase("entropy"):
        model = load_model(base, dtype, device)
        h_base = [
            response_entropy(model, b).cpu()
            for b in tqdm(calib, desc="entropy (base)", unit="batch", disable=not progress)
        ]
        del model
        model = load_model(sft, dtype, device)
        h_sft = [
            response_entropy(model, b).cpu()
            for b in tqdm(calib, desc="entropy (sft)", unit="batch", disable=not progress)
        ]
        if cfg.attribution_model == "fused":
            fuse_in_place(model, base, sft, cfg.alpha)

    # Steps 2-4: per-token neuron scores at the top-N entropy-gap positions, then the reset set.
    index = neuron_index(sft)
    count = reset_count(cfg.reset_ratio, index.total)
    selector = SELECTORS[cfg.selection](index.total, count)
    errors, logits, gaps = [], [], []
    with timer.phase("attribution"):
        for b, hb, hs in tqdm(list(zip(calib, h_base, h_sft)), desc="attribution", unit="batch", disable=not progress):
            positions, valid = select_target_positions(hs, hb, b.response_mask, cfg.tokens_per_example)
            gaps.append((hs - hb).abs().gather(1, positions)[valid])
            for tok in attribute_targets(model, sft.spec, index, b, positions, valid, sft.geometry.rms_norm_eps):
                selector.update(token_relevance(tok.scores.cpu(), cfg.score_sign))
                errors.append(tok.reconstruction_error.cpu())
                logits.append(tok.logit.abs().cpu())
        selected = selector.select()
    del model

    err = torch.cat(errors).double()
    resp_base = torch.cat([h[b.response_mask] for h, b in zip(h_base, calib)])
    resp_sft = torch.cat([h[b.response_mask] for h, b in zip(h_sft, calib)])
    stats = AttributionStats(
        examples=len(examples),
        target_tokens=int(err.numel()),
        entropy_base=float(resp_base.mean()),
        entropy_sft=float(resp_sft.mean()),
        target_gap=float(torch.cat(gaps).mean()),
        reconstruction_error_max=float(err.max()),
        reconstruction_error_mean=float(err.mean()),
        logit_abs_mean=float(torch.cat(logits).double().mean()),
    )
    return ResetSet.from_global(index, selected, selector.relevance_sum), stats
