"""Typed config of `rayrejuv rejuvenate`: the method's knobs plus inputs, output and runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.config.runtime import RayConfig, TrackingConfig


class RejuvenateConfig(ResetSearchConfig):
    base: Path = Field(description="base checkpoint directory (the model SFT started from)")
    sft: Path = Field(description="SFT checkpoint directory to rejuvenate")
    out: Path = Field(description="output checkpoint directory")
    fusion_only: bool = Field(False, description="skip the targeted reset")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="storage dtype of the output; auto keeps each tensor's dtype from the SFT checkpoint"
    )
    max_shard_gb: float = Field(
        0.5, gt=0.0, description="largest output shard, in GB (shards are the unit of parallel work on Ray)"
    )
    overwrite: bool = Field(False, description="replace an existing output directory")
    allow_pickle: bool = Field(False, description="accept pytorch_model.bin inputs (loaded with weights_only=True)")
    resume: bool = Field(False, description="finish an interrupted run into the same --out, reusing verified shards")
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _reset_needs_calibration(self) -> RejuvenateConfig:
        if not self.fusion_only and self.calibration is None:
            raise ValueError(
                "the targeted reset needs a calibration set: pass --calibration FILE (jsonl of "
                "{prompt, response}), or --fusion-only to skip the reset"
            )
        for side in ("base", "sft"):
            if Path(getattr(self, side)).resolve() == Path(self.out).resolve():
                raise ValueError(f"--out is the {side} checkpoint itself; choose a new output directory")
        return self
