"""Typed config of `rayrejuv tune`: the search space, the RL probe, the objective, the search."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.config.base import Config, merge_overrides
from rayrejuv.config.runtime import RayConfig, TrackingConfig


class Range(Config):
    """A float searched in [low, high] (log-uniform with `log`), or one of `choices`."""

    low: float | None = Field(None, description="lower bound")
    high: float | None = Field(None, description="upper bound")
    log: bool = Field(False, description="sample log-uniformly")
    choices: list[Any] | None = Field(None, description="a categorical choice instead of a range")
    grid: bool = Field(False, description="try every choice (a grid; needs search_alg random)")

    @model_validator(mode="after")
    def _one_kind(self) -> Range:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.grid and self.choices is None:
            raise ValueError("grid needs choices")
        return self


def _default_space() -> dict[str, Range]:
    # around the paper's sweeps: alpha 0.40-0.60, rho 0.5-4%, omega 1 (full reset), N 8 (ours)
    return {
        "alpha": Range(low=0.4, high=0.9),
        "reset_ratio": Range(low=0.005, high=0.04, log=True),
        "omega": Range(low=0.5, high=1.0),
        "tokens_per_example": Range(choices=[4, 8, 16]),
        "selection": Range(choices=["aggregate", "union"]),
    }


SEARCHABLE = ("alpha", "reset_ratio", "omega", "tokens_per_example", "selection")


def _first_error(e: ValidationError, *within: str) -> str:
    """One line naming the offending key, e.g. "rl.grpo.lr: Input should be greater than 0"."""
    err = e.errors()[0]
    key = ".".join([*within, *(str(p) for p in err["loc"])])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}" if key else msg


class ProbeConfig(Config):
    steps: int = Field(8, ge=1, description="GRPO steps of the probe")
    report_every: int = Field(2, ge=1, description="report to the scheduler (ASHA) every K probe steps")
    rl: dict[str, Any] = Field(
        default_factory=dict, description="RLConfig overrides for the probe (grpo, rollout, learner, reward sections)"
    )

    def rl_config(self, model: Path, train_data: Path, out: Path, seed: int) -> RLConfig:
        """The probe's `rayrejuv rl` run: the overrides in `rl` under what the search sets itself."""
        fixed = {"model": model, "train_data": train_data, "eval_data": None, "out": out, "steps": self.steps,
                 "checkpoint_every": self.report_every, "keep_checkpoints": 1, "eval_every": 0, "seed": seed,
                 "overwrite": True, "tracking": {"enabled": False}}
        return RLConfig.model_validate(merge_overrides(self.rl, fixed))

    @model_validator(mode="after")
    def _rl_overrides_are_an_rl_config(self) -> ProbeConfig:
        try:  # placeholders for the paths the search fills in per trial
            self.rl_config(Path("model"), Path("train.jsonl"), Path("probe"), 0)
        except ValidationError as e:
            raise ValueError(_first_error(e, "rl")) from None
        return self


class TuneConfig(Config):
    base: Path = Field(description="base checkpoint")
    sft: Path = Field(description="SFT checkpoint to rejuvenate")
    calibration: Path = Field(description="jsonl of {prompt, response} for the targeted reset")
    train_data: Path = Field(description="jsonl of {prompt, answer} for the RL probe")
    eval_data: Path = Field(description="jsonl of {prompt, answer}: in-distribution evaluation")
    ood_data: Path | None = Field(None, description="jsonl of {prompt, answer}: out-of-distribution evaluation")
    out: Path = Field(Path("rayrejuv-tune"), description="search directory (trials, best.yaml, leaderboard)")
    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    resume: bool = Field(False, description="continue an interrupted search in --out (finished trials are kept)")
    seed: int = Field(0, description="seed of the search algorithm and of every probe")
    space: dict[str, Range] = Field(default_factory=_default_space, description="search space (see SEARCHABLE)")
    fixed: dict[str, Any] = Field(
        default_factory=dict, description="RejuvenateConfig fields held fixed in every trial (e.g. dtype)"
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    objective: Literal["probe_reward_end", "probe_reward_auc", "eval_pass_at_1"] = Field(
        "probe_reward_auc", description="what the search maximises"
    )
    ood_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="eval_pass_at_1 objective: weight of OOD vs ID pass@1 (needs --ood-data)"
    )
    eval_examples: int = Field(100, ge=1, description="prompts per eval set after the probe")
    search_alg: Literal["optuna", "random"] = Field("optuna", description="Optuna TPE, or random search")
    asha: bool = Field(True, description="ASHA early stopping on the probe's reports")
    grace_period: int = Field(1, ge=1, description="ASHA: reports before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA: fraction 1/eta of trials kept at each rung")
    cpus_per_trial: float = Field(0.5, gt=0, description="CPUs of the trial process (its actors reserve their own)")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs of the trial process")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial before it is recorded as failed")
    keep_best: int = Field(2, ge=1, description="rejuvenated checkpoints kept (the best K trials)")
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("fixed")
    @classmethod
    def _fixed_are_rejuvenate_fields(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(fixed) - set(RejuvenateConfig.model_fields))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a RejuvenateConfig field")
        try:  # placeholders for what the search sets per trial
            RejuvenateConfig.model_validate({**fixed, "base": "base", "sft": "sft", "calibration": "calib.jsonl",
                                             "out": "trial"})
        except ValidationError as e:
            raise ValueError(_first_error(e)) from None
        return fixed

    def rejuvenate_config(self, params: dict[str, Any], out: Path) -> RejuvenateConfig:
        """A trial's rejuvenation: the fixed fields + the sampled hyperparameters `params`."""
        return RejuvenateConfig.model_validate(
            {**self.fixed, "base": self.base, "sft": self.sft, "calibration": self.calibration, **params, "out": out,
             "overwrite": True, "ray": {"enabled": False}, "tracking": {"enabled": False}}
        )

    def cpu_demand(self) -> float:
        """Logical CPUs the search reserves: each running trial's process and its probe's actors,
        plus one trial's worth of headroom (the learner placement group of a trial ASHA stopped is
        freed by Ray Train's cleaner actor a little later; measured: a next trial can time out on it)."""
        probe = self.probe.rl_config(self.sft, self.train_data, self.out, self.seed)
        return (self.cpus_per_trial + probe.cpu_demand()) * (self.max_concurrent + 1)

    @model_validator(mode="after")
    def _checks(self) -> TuneConfig:
        unknown = set(self.space) - set(SEARCHABLE)
        if unknown:
            raise ValueError(f"space: cannot search {sorted(unknown)}; searchable: {list(SEARCHABLE)}")
        if self.objective == "eval_pass_at_1" and self.ood_weight > 0 and self.ood_data is None:
            raise ValueError("ood_weight > 0 needs --ood-data")
        if any(r.grid for r in self.space.values()) and self.search_alg != "random":
            raise ValueError("a grid in the space needs search_alg: random (Optuna samples, it does not enumerate)")
        if self.probe.report_every > self.probe.steps:
            raise ValueError("probe.report_every cannot exceed probe.steps")
        return self
