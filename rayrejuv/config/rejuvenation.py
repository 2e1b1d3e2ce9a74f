"""The method's knobs that the rejuvenation engine reads (paper Eq. 1, 4, 5 and the attribution run).

`rayrejuv rejuvenate`'s config extends these with its inputs, output and runtime sections, so
the flags and YAML keys stay flat (`--alpha`, `reset_ratio: 0.02`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rayrejuv.config.base import Config
from rayrejuv.config.prompts import PromptFormat


class FusionParams(Config):
    """Eq. 1 and Eq. 5: how the output tensors are computed from the pair."""

    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="fusion weight of the SFT model, Eq. 1; paper sweeps 0.40-0.60"
    )
    omega: float = Field(1.0, ge=0.0, le=1.0, description="reset strength, Eq. 5; 1.0 overwrites with base values")


class ResetSearchConfig(FusionParams, PromptFormat):
    """Steps 1-4 of the targeted reset: which neurons, found on a calibration set (its prompts
    rendered as `chat_template` says)."""

    reset_ratio: float = Field(
        0.01, gt=0.0, lt=1.0, description="fraction rho of the candidate neurons to reset, Eq. 4; paper: 0.005-0.04"
    )
    tokens_per_example: int = Field(8, ge=1, description="N target tokens per calibration example (ours: 8)")
    calibration: Path | None = Field(None, description="jsonl of {prompt, response} pairs for the reset")
    reset_untouched: bool = Field(
        False,
        description="also let the reset choose neurons SFT left bit-identical to the base (ours: they are not "
        "candidates, since after fusion they already equal the base); reset_ratio is a fraction of the candidates",
    )
    selection: Literal["aggregate", "union"] = Field(
        "aggregate", description="aggregate: normalised sum then global top-rho (ours); union: the paper's union"
    )
    attribution_model: Literal["sft", "fused"] = Field("sft", description="model whose neurons are attributed (ours)")
    score_sign: Literal["abs", "positive"] = Field(
        "abs", description="rank neurons by |effect| on the target logit, or by positive push only (ours)"
    )
    device: str = Field("cpu", description="device for the attribution passes (cpu, cuda, cuda:1)")
    attribution_dtype: Literal["float32", "float64", "bfloat16"] = Field(
        "float32", description="compute dtype of the attribution passes"
    )
    batch_size: int = Field(8, ge=1, description="calibration examples per forward pass")
    max_length: int = Field(512, ge=2, description="truncate calibration examples to this many tokens")
