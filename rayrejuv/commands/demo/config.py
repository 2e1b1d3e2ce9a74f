"""Typed config of `rayrejuv demo`: the paper's ablation in miniature, the single source of its
defaults. `--quick` applies QUICK on top (a smoke run of a few minutes); YAML and flags override.

The demo embeds the sections of the commands it drives (the world's spec, the reset search's
knobs, GRPO's step) with the demo's own recipe as their defaults; nothing is declared twice.
The world has one prompt format: `rejuvenation.chat_template` (the reset search's field) renders
the prompts of every phase (calibration, diagnosis, RL, scores).
The recipe (world, rungs, alpha, learning rate, steps) was measured on 2 cores; docs/testbed.md
("A weaker base and smaller SFT numbers", "Which RL distribution") gives the numbers behind each choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from rayrejuv.config.base import Config, merge_overrides
from rayrejuv.config.rejuvenation import ResetSearchConfig
from rayrejuv.config.rl import GRPOConfig, LearnerConfig, RolloutConfig
from rayrejuv.config.runtime import RayConfig, TrackingConfig
from rayrejuv.config.world import TinyModelConfig, WorldDataConfig, WorldSpec, WorldTrainConfig

# The measured recipe; every knob not named here is its building block's own default.
# The world (docs/testbed.md, "A weaker base and smaller SFT numbers"): a smaller model (3 layers,
# MLP 256: half the time per step) pre-trained for 2.5 epochs (547 steps: it solves 0.69 of its own
# problems, which SFT makes it forget), a 3-step SFT task on numbers <= 15 from 200 examples with a
# ladder to 64 epochs (OverSFT: its entropy 0.008, 56% of its GRPO groups without variance), RL on the
# same templates with numbers <= 30 (the base's range, the `hard` split): OverSFT is at 0.70 there
# before RL, so RL has room above it.
# One padded batch per training step (world.train.micro_batches 1): 3 length-sorted micro-batches
# train the same steps 25-30% faster, but their floats build another world, and on it OverSFT is not
# rigid under RL (docs/testbed.md, "Faster steps", session 13: it gains more than ModSFT on 3 of 3 seeds).
# 1000 held-out prompts per eval split (the world's weights do not depend on it: the eval sets are the
# tail slices of their pools): the findings are counted per seed, on differences of four pass@1 scores,
# whose standard error at 200 prompts (0.035-0.050) was as large as the effect (docs/testbed.md,
# "How many prompts a per-seed finding needs").
WORLD_RECIPE = WorldSpec(model=TinyModelConfig(intermediate_size=256, num_layers=3),
                         data=WorldDataConfig(id_steps=3, id_max=15, sft_examples=200, eval_examples=1000),
                         train=WorldTrainConfig(pretrain_epochs=2.5, sft_epochs=[*WorldTrainConfig().sft_epochs, 64]))
REJUVENATION_RECIPE = ResetSearchConfig(alpha=0.5, reset_ratio=0.01, omega=1.0, tokens_per_example=8)
# Each group's prompt is computed once (share_prompts: in the rollouts' prefill and the learner's forward;
# a prompt is ~85 tokens, a completion ~35) and the learner takes the step's 64 sequences in one
# micro-batch; the tiny model's activations are small, so no gradient checkpointing. Measured on one
# core (session 17), a learner update: 0.953 s (whole batch, checkpointing), 0.664 s (one group per
# micro-batch), 0.315 s (shared prompts, one micro-batch): benchmarks/bench_demo_steps.py.
GRPO_RECIPE = GRPOConfig(prompts_per_step=8, group_size=8, lr=3e-5, beta=0.0, temperature=1.0, max_new_tokens=48,
                         micro_batch_size=64, share_prompts=True)
LEARNER_RECIPE = LearnerConfig(gradient_checkpointing=False)


def _over_recipe(recipe: Config):
    """A partial section (YAML, flags, QUICK) fills its gaps from the demo's recipe: validated on
    its own, pydantic would fill them from the building block's defaults (GRPO's lr 1e-6). Nested
    sections (the world's data, train) merge field by field."""
    return lambda given: merge_overrides(recipe.model_dump(), given) if isinstance(given, dict) else given


def _grpo_over_recipe(given: Any) -> Any:
    """As _over_recipe; and unless given, a micro-batch is the whole step (prompts_per_step x group_size)."""
    if not isinstance(given, dict):
        return given
    merged = _over_recipe(GRPO_RECIPE)(given)
    if "micro_batch_size" not in given:
        merged["micro_batch_size"] = merged["prompts_per_step"] * merged["group_size"]
    return merged


class DemoRungs(Config):
    modsft_epoch: float = Field(2.0, gt=0, description="ladder epoch used as ModSFT (moderately trained)")
    oversft_epoch: float = Field(64.0, gt=0, description="ladder epoch used as OverSFT (over-trained)")


class DemoRL(Config):
    """The one GRPO recipe every start gets (same data, prompts, hyperparameters and seeds)."""

    steps: int = Field(
        40, ge=1, description="GRPO steps per run (40: at 12, OverSFT gains as much as ModSFT on 1000 prompts, "
        "+0.069 vs +0.070; at 40, +0.151 vs +0.233; docs/testbed.md, \"How many prompts a per-seed finding needs\")"
    )
    concurrent: int = Field(2, ge=1, description="RL runs at a time (each holds about one core on CPU)")
    grpo: Annotated[GRPOConfig, BeforeValidator(_grpo_over_recipe)] = Field(
        default_factory=lambda: GRPO_RECIPE.model_copy(), description="the GRPO step (defaults: the demo's recipe)"
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout actors (hf or vllm)")
    learner: Annotated[LearnerConfig, BeforeValidator(_over_recipe(LEARNER_RECIPE))] = Field(
        default_factory=lambda: LEARNER_RECIPE.model_copy(),
        description="Ray Train learner (DDP or DeepSpeed; defaults: the demo's recipe)",
    )

    @model_validator(mode="after")
    def _learner_supports_grpo(self) -> DemoRL:
        self.learner.check_grpo(self.grpo)
        return self


class DemoEval(Config):
    examples: int = Field(
        1000, ge=1, description="prompts per eval split (greedy pass@1; at most world.data.eval_examples): at 1000 "
        "a seed's pass@1 has a standard error of at most 0.016"
    )
    entropy_examples: int = Field(
        200, ge=1, description="eval_id prompt/response pairs the teacher-forced token entropy of a checkpoint "
        "averages over (at most eval.examples): 200 pairs are ~6,800 response tokens, the mean within 0.001 of "
        "1000 pairs' (measured on ModSFT and OverSFT), at a fifth of the time"
    )
    max_new_tokens: int = Field(48, ge=1, description="generation length")
    diagnose_k: int = Field(8, ge=1, description="k of the diagnosis' pass@k")
    diagnose_examples: int = Field(
        64, ge=1, description="eval_id prompts the diagnosis scores per checkpoint (base, ModSFT, OverSFT; "
        "greedy and k samples each): its verdicts need the signs of rigidity, not a third digit "
        "(measured: 27 s at 64, 44 s at 100, 60 s at 200)"
    )


class DemoConfig(Config):
    out: Path = Field(Path("rayrejuv-demo"), description="working directory (re-run to resume)")
    seeds: int = Field(3, ge=1, description="RL seeds per start")
    seed: int = Field(0, description="first RL seed; the runs use seed, seed+1, ...")
    quick: bool = Field(False, description="smoke run: a smaller world, fewer and shorter RL runs")
    baselines: bool = Field(
        False, description="also GRPO from OverSFT with each RL-side remedy (dynamic sampling, clip-higher, an "
        "entropy bonus; commands/demo/baselines.py), compared with Rejuvenation at the same steps and tokens"
    )
    overwrite: bool = Field(False, description="delete OUT's previous demo (other settings) and start again")
    world: Annotated[WorldSpec, BeforeValidator(_over_recipe(WORLD_RECIPE))] = Field(
        default_factory=lambda: WORLD_RECIPE.model_copy(deep=True),
        description="the tiny world built (or reused) in OUT/testbed (defaults: the demo's world)",
    )
    world_cache: bool = Field(
        True, description="copy the world from the user's cache ($XDG_CACHE_HOME or ~/.cache, rayrejuv/world-*: "
        "keyed by the world and the torch/transformers versions) when a demo built it before, and cache a new one"
    )
    rungs: DemoRungs = Field(default_factory=DemoRungs)
    rejuvenation: Annotated[ResetSearchConfig, BeforeValidator(_over_recipe(REJUVENATION_RECIPE))] = Field(
        default_factory=lambda: REJUVENATION_RECIPE.model_copy(),
        description="fusion and targeted reset of OverSFT (defaults: the demo's recipe)",
    )
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
        if self.eval.examples > self.world.data.eval_examples:
            raise ValueError(
                f"eval.examples={self.eval.examples} is more than the world holds per eval split "
                f"(world.data.eval_examples={self.world.data.eval_examples}): lower eval.examples or raise "
                "world.data.eval_examples (another world directory; its weights are the same)"
            )
        if self.eval.entropy_examples > self.eval.examples:
            raise ValueError(f"eval.entropy_examples={self.eval.entropy_examples} is more than eval.examples="
                             f"{self.eval.examples}: lower eval.entropy_examples")
        if not self.rungs.modsft_epoch < self.rungs.oversft_epoch:
            raise ValueError("rungs.modsft_epoch must be smaller than rungs.oversft_epoch")
        if self.rejuvenation.calibration is not None:
            raise ValueError(
                "rejuvenation.calibration: the demo calibrates the reset on its world's calibration set; leave it unset"
            )
        return self

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def fingerprint(self) -> dict:
        """What a resumed demo must share with the one it continues. Not the seeds: RL runs live
        under rl/<start>/seed-<s>, so other or more seeds reuse the world, the rejuvenated
        checkpoints and every finished run, and results.json reports the seeds asked for. Nor
        `baselines`: their runs live beside the starts' (rl/<remedy>/seed-<s>)."""
        return self.model_dump(mode="json", exclude={"overwrite", "ray", "tracking", "out", "seeds", "seed",
                                                      "baselines", "world_cache"})


# `--quick`: every phase runs for real, on a world and budget small enough for a test.
QUICK: dict[str, Any] = {
    "seeds": 2,
    "world": {
        "model": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2},
        "data": {  # the 2-step task on numbers <= 20: its answers fit the quick runs' 32 new tokens
            "id_steps": 2,
            "id_max": 20,
            "sft_examples": 96,
            "calibration_examples": 16,
            "rl_train_examples": 64,
            "eval_examples": 24,
            "pretrain_texts": 512,
        },
        "train": {"pretrain_epochs": 1.0, "sft_epochs": [1.0, 4.0]},
    },
    "rungs": {"modsft_epoch": 1.0, "oversft_epoch": 4.0},
    "rl": {"steps": 3, "grpo": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 32}},
    "eval": {"examples": 24, "entropy_examples": 24, "max_new_tokens": 32, "diagnose_k": 4, "diagnose_examples": 16},
}
