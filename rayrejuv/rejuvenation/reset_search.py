"""Which neurons to reset (paper section 3.4, steps 1-4) from a calibration set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.data.calibration import CalibrationBatch, batches, first_rendered, load_calibration
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.method.entropy import select_target_positions
from rayrejuv.method.fusion import fuse
from rayrejuv.method.neurons import NeuronIndex, ResetSet, changed_neurons
from rayrejuv.method.selection import SELECTORS, AggregateSelector, reset_count, token_relevance
from rayrejuv.models.loading import DTYPES, load_model, load_tokenizer, pad_id, resolve_device
from rayrejuv.models.probe import attribute_targets, response_entropy
from rayrejuv.timing import PhaseTimer


@dataclass
class AttributionStats:
    """What the search saw: the calibration, the entropies, the attribution's accuracy, and the
    candidates the reset set was chosen from."""

    examples: int
    target_tokens: int
    entropy_base: float  # mean over response positions
    entropy_sft: float
    target_gap: float  # mean |H_SFT - H_base| at the chosen targets
    reconstruction_error_max: float
    reconstruction_error_mean: float
    logit_abs_mean: float  # scale of the logits the error is measured against
    candidates: int  # neurons the reset set was chosen from
    excluded_untouched: int  # neurons SFT left bit-identical to the base, not candidates (0 with reset_untouched)
    reset_requested: int  # round(reset_ratio x candidates): the aggregate set's size, union's per-token size


@dataclass
class _Evidence:
    """What the attribution saw, per target token, for the stats: (K,) tensors per batch."""

    gaps: list[torch.Tensor] = field(default_factory=list)  # |H_SFT - H_base|
    errors: list[torch.Tensor] = field(default_factory=list)  # logit reconstruction error
    logits: list[torch.Tensor] = field(default_factory=list)  # |centred target logit|


def neuron_index(ckpt: Checkpoint) -> NeuronIndex:
    return NeuronIndex(ckpt.spec, ckpt.geometry.num_layers, lambda name: ckpt.meta(name).shape)


@torch.no_grad()
def fuse_in_place(model, base: Checkpoint, sft: Checkpoint, alpha: float) -> None:
    """Turn a loaded SFT model into the fused one (for attribution_model=fused)."""
    for name, p in model.named_parameters():
        if name in sft.names or name == sft.spec.lm_head:
            p.copy_(fuse(sft.get(name), base.get(name), alpha))


def calibration_batches(cfg: ResetSearchConfig, sft: Checkpoint) -> list[CalibrationBatch]:
    """The calibration file, tokenized with the SFT tokenizer and batched (refuses a bad file)."""
    tokenizer = load_tokenizer(sft)
    examples = load_calibration(cfg.calibration, tokenizer, cfg.max_length, cfg.chat_template)
    return batches(examples, cfg.batch_size, pad_id(tokenizer))


def calibration_example(cfg: ResetSearchConfig, sft: Checkpoint) -> str:
    """The first calibration row as the SFT model sees it (prompt and response, rendered)."""
    return first_rendered(cfg.calibration, load_tokenizer(sft), cfg.chat_template)


def entropies(model, calib: list[CalibrationBatch], side: str, progress: bool) -> list[torch.Tensor]:
    """Step 1: (B, T) predictive entropy per batch, on the CPU."""
    return [
        response_entropy(model, b).cpu()
        for b in tqdm(calib, desc=f"entropy ({side})", unit="batch", disable=not progress)
    ]


def attribute(
    model, cfg: ResetSearchConfig, sft: Checkpoint, index: NeuronIndex, selector: AggregateSelector,
    calib: list[CalibrationBatch], h_base: list[torch.Tensor], h_sft: list[torch.Tensor], progress: bool,
) -> _Evidence:  # fmt: skip
    """Steps 2-3: per-token neuron scores at the top-N entropy-gap positions, fed to the selector."""
    seen = _Evidence()
    for b, hb, hs in tqdm(list(zip(calib, h_base, h_sft)), desc="attribution", unit="batch", disable=not progress):
        positions, valid = select_target_positions(hs, hb, b.response_mask, cfg.tokens_per_example)
        seen.gaps.append((hs - hb).abs().gather(1, positions)[valid])
        for tok in attribute_targets(model, sft.spec, index, b, positions, valid, sft.geometry.rms_norm_eps):
            selector.update(token_relevance(tok.scores.cpu(), cfg.score_sign))
            seen.errors.append(tok.reconstruction_error.cpu())
            seen.logits.append(tok.logit.abs().cpu())
    return seen


def reset_candidates(cfg: ResetSearchConfig, base: Checkpoint, sft: Checkpoint, index: NeuronIndex) -> torch.Tensor:
    """(M,) bool: the neurons the reset may choose. By default those SFT changed (ours): after
    fusion a neuron SFT left bit-identical already equals the base, so resetting it would spend
    the budget on a no-op. `reset_untouched` keeps every neuron."""
    if cfg.reset_untouched:
        return torch.ones(index.total, dtype=torch.bool)
    return changed_neurons(index, sft.names, lambda name: (sft.get(name), base.get(name)))


def attribution_stats(
    seen: _Evidence, calib: list[CalibrationBatch], h_base: list[torch.Tensor], h_sft: list[torch.Tensor],
    selector: AggregateSelector,
) -> AttributionStats:  # fmt: skip
    err = torch.cat(seen.errors).double()
    resp_base = torch.cat([h[b.response_mask] for h, b in zip(h_base, calib)])
    resp_sft = torch.cat([h[b.response_mask] for h, b in zip(h_sft, calib)])
    return AttributionStats(
        examples=sum(b.input_ids.shape[0] for b in calib),
        target_tokens=int(err.numel()),
        entropy_base=float(resp_base.mean()),
        entropy_sft=float(resp_sft.mean()),
        target_gap=float(torch.cat(seen.gaps).mean()),
        reconstruction_error_max=float(err.max()),
        reconstruction_error_mean=float(err.mean()),
        logit_abs_mean=float(torch.cat(seen.logits).double().mean()),
        candidates=int(selector.candidates.sum()),
        excluded_untouched=int((~selector.candidates).sum()),
        reset_requested=selector.count,
    )


def find_reset_set(
    cfg: ResetSearchConfig, base: Checkpoint, sft: Checkpoint, timer: PhaseTimer, progress: bool = True
) -> tuple[ResetSet, AttributionStats]:
    """Steps 1-4 on the calibration set: entropies of base and SFT, neuron scores at the largest
    entropy gaps, the reset set (Eq. 4) among the candidates."""
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.attribution_dtype]
    calib = calibration_batches(cfg, sft)
    with timer.phase("entropy"):
        h_base = entropies(load_model(base, dtype, device), calib, "base", progress)  # base freed after
        model = load_model(sft, dtype, device)
        h_sft = entropies(model, calib, "sft", progress)
        if cfg.attribution_model == "fused":
            fuse_in_place(model, base, sft, cfg.alpha)
    index = neuron_index(sft)
    with timer.phase("candidates"):
        candidates = reset_candidates(cfg, base, sft, index)
    count = reset_count(cfg.reset_ratio, int(candidates.sum()))
    selector = SELECTORS[cfg.selection](index.total, count, candidates)
    with timer.phase("attribution"):
        seen = attribute(model, cfg, sft, index, selector, calib, h_base, h_sft, progress)
        selected = selector.select()  # step 4
    del model
    stats = attribution_stats(seen, calib, h_base, h_sft, selector)
    return ResetSet.from_global(index, selected, selector.relevance_sum), stats
