"""Typed config of `rayrejuv demo`: the paper's ablation in miniature, the single source of its
defaults. `--quick` applies QUICK on top (a smoke run of a few minutes); YAML and flags override.

The recipe (rungs, alpha, learning rate, steps) was measured on the default tiny world; the
closing notes of issue 7 and docs/testbed.md ("Which RL distribution") give the numbers behind
each choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rayrejuv.config.base import Config
from rayrejuv.config.rl import LearnerConfig, RolloutConfig
from rayrejuv.config.runtime import RayConfig, TrackingConfig
from rayrejuv.config.world import TinyModelConfig, WorldDataConfig, WorldTrainConfig


class DemoWorld(Config):
    """The tiny world the demo builds (or reuses) under OUT/testbed."""

    seed: int = Field(0, description="seed of the world's data, initialisation and data order")
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    data: WorldDataConfig = Field(default_factory=WorldDataConfig)  # RL on the 'hard' split
    train: WorldTrainConfig = Field(default_factory=WorldTrainConfig)


class DemoRungs(Config):
    modsft_epoch: float = Field(4.0, gt=0, description="ladder epoch used as ModSFT (moderately trained)")
    oversft_epoch: float = Field(32.0, gt=0, description="ladder epoch used as OverSFT (over-trained)")


class DemoRejuvenation(Config):
    alpha: float = Field(0.6, ge=0.0, le=1.0, description="fusion weight of OverSFT (Eq. 1)")
    reset_ratio: float = Field(0.01, gt=0.0, lt=1.0, description="fraction rho of neurons reset (Eq. 4)")
    omega: float = Field(1.0, ge=0.0, le=1.0, description="reset strength (Eq. 5)")
    tokens_per_example: int = Field(8, ge=1, description="N target tokens per calibration example")


class DemoRL(Config):
    """The one GRPO recipe every start gets (same data, prompts, hyperparameters and seeds)."""

    steps: int = Field(40, ge=1, description="GRPO steps per run")
    prompts_per_step: int = Field(8, ge=1, description="prompts per step")
    group_size: int = Field(8, ge=2, description="samples per prompt")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the start")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    max_new_tokens: int = Field(48, ge=1, description="completion length limit")
    concurrent: int = Field(2, ge=1, description="RL runs at a time (each holds about one core on CPU)")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout actors (hf or vllm)")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Ray Train learner (DDP or DeepSpeed)")


class DemoEval(Config):
    examples: int = Field(200, ge=1, description="prompts per eval split (greedy pass@1)")
    max_new_tokens: int = Field(48, ge=1, description="generation length")
    diagnose_k: int = Field(8, ge=1, description="k of the diagnosis' pass@k")


class DemoConfig(Config):
    out: Path = Field(Path("rayrejuv-demo"), description="working directory (re-run to resume)")
    seeds: int = Field(3, ge=1, description="RL seeds per start")
    seed: int = Field(0, description="first RL seed; the runs use seed, seed+1, ...")
    quick: bool = Field(False, description="smoke run: a smaller world, fewer and shorter RL runs")
    overwrite: bool = Field(False, description="delete OUT's previous demo (other settings) and start again")
    world: DemoWorld = Field(default_factory=DemoWorld)
    rungs: DemoRungs = Field(default_factory=DemoRungs)
    rejuvenation: DemoRejuvenation = Field(default_factory=DemoRejuvenation)
    rl: DemoRL = Field(default_factory=DemoRL)
    eval: DemoEval = Field(default_factory=DemoEval)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _rungs_on_ladder(self) -> DemoConfig:
        ladder = self.world.train.sft_epochs
        for name in ("modsft_epoch", "oversft_epoch"):
            e = getattr(self.rungs, name)
            if e not in ladder:
                raise ValueError(
                    f"rungs.{name}={e:g} is not a saved ladder epoch {ladder}: pick one of them, or add it to "
                    "world.train.sft_epochs"
                )
        if not self.rungs.modsft_epoch < self.rungs.oversft_epoch:
            raise ValueError("rungs.modsft_epoch must be smaller than rungs.oversft_epoch")
        return self

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def fingerprint(self) -> dict:
        """What a resumed demo must share with the one it continues. Not the seeds: RL runs live
        under rl/<start>/seed-<s>, so other or more seeds reuse the world, the rejuvenated
        checkpoints and every finished run, and results.json reports the seeds asked for."""
        return self.model_dump(mode="json", exclude={"overwrite", "ray", "tracking", "out", "seeds", "seed"})


# `--quick`: every phase runs for real, on a world and budget small enough for a test.
QUICK: dict[str, Any] = {
    "seeds": 2,
    "world": {
        "model": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2},
        "data": {
            "sft_examples": 96,
            "calibration_examples": 16,
            "rl_train_examples": 64,
            "eval_examples": 24,
            "pretrain_texts": 512,
        },
        "train": {"pretrain_epochs": 1.0, "sft_epochs": [1.0, 4.0]},
    },
    "rungs": {"modsft_epoch": 1.0, "oversft_epoch": 4.0},
    "rl": {"steps": 3, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 32},
    "eval": {"examples": 24, "max_new_tokens": 32, "diagnose_k": 4},
}
