"""Typed config of `rayrejuv testbed build`: the tiny world's directory, seed and sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from rayrejuv.config.base import Config
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.config.world import TinyModelConfig, WorldDataConfig, WorldTrainConfig


class TinyWorldConfig(Config):
    out: Path = Field(Path("rayrejuv-testbed"), description="testbed directory (base/, sft/epoch-<e>/, data/)")
    seed: int = Field(0, description="seed of data, initialisation and data order")
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    data: WorldDataConfig = Field(default_factory=WorldDataConfig)
    train: WorldTrainConfig = Field(default_factory=WorldTrainConfig)
    force: bool = Field(False, description="rebuild everything even if cached")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the artefacts (not where they go or how the run is tracked)."""
        return self.model_dump(mode="json", exclude={"out", "force", "tracking"})


