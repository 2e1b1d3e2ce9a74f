"""Typed config of `rayrejuv testbed build`: the world's spec (seed, model, data, train) plus
its directory and tracking; the keys stay flat (`seed: 1`, `model: {...}`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.config.world import WorldSpec


class TinyWorldConfig(WorldSpec):
    out: Path = Field(Path("rayrejuv-testbed"), description="testbed directory (base/, sft/epoch-<e>/, data/)")
    force: bool = Field(False, description="rebuild everything even if cached")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the artefacts (not where they go or how the run is tracked)."""
        return self.model_dump(mode="json", exclude={"out", "force", "tracking"})
