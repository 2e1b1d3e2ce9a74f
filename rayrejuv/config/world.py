"""The tiny world's model, data and training sections (built by rayrejuv.testbed), and the spec that holds them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrejuv.config.base import Config


class TinyModelConfig(Config):
    family: Literal["llama", "mistral", "qwen2", "qwen3"] = Field("qwen3", description="architecture family")
    hidden_size: int = Field(128, ge=8, description="model width")
    intermediate_size: int = Field(384, ge=8, description="MLP width")
    num_layers: int = Field(4, ge=1, description="decoder layers")
    num_heads: int = Field(2, ge=1, description="attention heads")
    num_kv_heads: int = Field(1, ge=1, description="key/value heads (GQA)")
    head_dim: int = Field(64, ge=8, description="head dimension (vLLM's CPU kernels need 64 or more)")


class WorldDataConfig(Config):
    id_max: int = Field(20, ge=2, description="largest number in in-distribution problems")
    ood_max: int = Field(
        30,
        ge=2,
        description="largest number in out-of-distribution and base pre-training problems, and in the hard and "
        "wide (RL) problems unless hard_max is set "
        "(30, not 40: a base pre-trained within the build budget does arithmetic in a smaller range)",
    )
    id_steps: Literal[2, 3] = Field(
        2, description="steps of the ID problems (the SFT set, calibration, eval_id and the hard split): "
        "2, or 3 for the ID templates' 3-step variants (a harder task for a stronger base)",
    )
    hard_max: int | None = Field(
        None, ge=2, description="largest number in the hard and wide (RL) problems; unset: ood_max "
        "(the base's range); above it, numbers the base never saw as an operand",
    )
    sft_examples: int = Field(
        600, ge=8, description="size of the fixed SFT set (600 x 32 epochs = 600 steps at batch 32: the build budget)"
    )
    calibration_examples: int = Field(64, ge=1, description="prompt/response pairs for the targeted reset")
    rl_train_examples: int = Field(2000, ge=1, description="RL prompts, drawn from rl_distribution")
    eval_examples: int = Field(200, ge=1, description="prompts per eval split (id, ood, wide)")
    pretrain_texts: int = Field(
        14000, ge=100, description="texts (about 80 characters each) in the base's pre-training corpus"
    )
    pretrain_qa_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the pre-training corpus that is Q/A word problems from the base's phrase bank "
        "(the rest is generic equation text); 0 gives a base that never saw the task format",
    )
    pretrain_qa_max_steps: int = Field(3, ge=1, description="most steps of a pre-training Q/A problem")
    # Measured (docs/testbed.md): on 'id' OverSFT is at 0.93 greedy pass@1 and RL has nothing left
    # to gain; the 3-step half of 'wide' is out of every SFT rung's reach (each writes 2 steps);
    # on 'hard' every rung is at 0.43-0.54 with room to grow, as the paper's RL math is harder
    # than its SFT data.
    rl_distribution: Literal["id", "hard", "wide"] = Field(
        "hard",
        description="RL prompts: 'id' = the SFT distribution; 'hard' = the ID templates with numbers up to "
        "ood_max; 'wide' = 'hard' plus 3-step variants of the ID templates",
    )


class WorldTrainConfig(Config):
    pretrain_epochs: float = Field(2.0, gt=0, description="passes over the pre-training texts")
    pretrain_lr: float = Field(1e-3, gt=0, description="pre-training learning rate")
    pretrain_batch_size: int = Field(64, ge=1, description="pre-training batch size")
    sft_epochs: list[float] = Field(
        default_factory=lambda: [0.5, 1, 2, 4, 8, 16, 32], description="SFT epochs at which checkpoints are saved"
    )
    sft_lr: float = Field(3e-4, gt=0, description="SFT learning rate (constant, no warmup, no weight decay)")
    sft_batch_size: int = Field(32, ge=1, description="SFT batch size")
    micro_batches: int = Field(
        1, ge=1, description="micro-batches per step of pre-training and SFT: a step's rows sorted by length, cut in "
        "this many runs, each padded to its own longest, gradients accumulated (the same step with less padding; "
        "the floats differ, so a world built with another count is another world)"
    )

    @model_validator(mode="after")
    def _ladder_sorted(self) -> WorldTrainConfig:
        if (
            not self.sft_epochs
            or any(e <= 0 for e in self.sft_epochs)
            or sorted(set(self.sft_epochs)) != list(self.sft_epochs)
        ):
            raise ValueError("sft_epochs must be a non-empty, strictly increasing list of positive epochs")
        return self


class WorldSpec(Config):
    """What determines a tiny world's artefacts: the seed and the model, data and training sections
    (`rayrejuv testbed build` adds where it goes and how it is tracked; the demo embeds it as is)."""

    seed: int = Field(0, description="seed of data, initialisation and data order")
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    data: WorldDataConfig = Field(default_factory=WorldDataConfig)
    train: WorldTrainConfig = Field(default_factory=WorldTrainConfig)
