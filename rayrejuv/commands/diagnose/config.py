"""Typed config of `rayrejuv diagnose`: the ladder to examine, the data, the symptoms' thresholds."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rayrejuv.config.prompts import PromptFormat
from rayrejuv.config.runtime import TrackingConfig


class DiagnoseConfig(PromptFormat):
    base: Path = Field(description="base checkpoint directory")
    sft: list[Path] = Field(min_length=1, description="SFT checkpoint(s); several make a ladder")
    data: Path | None = Field(
        None, description="jsonl with prompt and response (loss, entropy) and/or answer (pass@k) fields"
    )
    out: Path | None = Field(None, description="report directory; default diagnose-<last sft name>")
    max_examples: int = Field(200, ge=1, description="examples of --data used")
    k: int = Field(8, ge=1, description="k of pass@k (k samples per prompt)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for pass@k")
    max_new_tokens: int = Field(64, ge=1, description="generation length")
    batch_size: int = Field(32, ge=1, description="prompts per forward pass")
    device: str = Field("cpu", description="evaluation device")
    seed: int = Field(0, description="sampling seed")
    include_base: bool = Field(True, description="also evaluate the base model, as a reference row")
    entropy_threshold: float = Field(
        0.05, ge=0, description="mean token entropy (nats) below which entropy has collapsed"
    )
    loss_threshold: float = Field(0.01, ge=0, description="SFT loss below which it has saturated")
    gap_threshold: float = Field(0.05, ge=0, description="pass@k - pass@1 below which diversity has collapsed")
    heatmaps: int = Field(4, ge=0, description="number of most-drifted matrices drawn as heat maps")
    overwrite: bool = Field(False, description="replace an existing report directory")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
