"""Typed configs: the single source of defaults. YAML files and CLI flags only override them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayrejuv.errors import RejuvError


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrackingConfig(_Config):
    enabled: bool = Field(True, description="log the run to MLflow")
    uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here"
    )
    experiment: str = Field("rayrejuv", description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name; default: the command's")
    parent_run_id: str | None = Field(
        None, description="nest the run under this (running) MLflow run, as the demo does with its phases"
    )


class RayConfig(_Config):
    enabled: bool = Field(True, description="run on Ray (a local instance unless address / RAY_ADDRESS is set)")
    address: str | None = Field(None, description="Ray cluster address; default $RAY_ADDRESS, else a local instance")
    workers: int | None = Field(None, ge=1, description="LayerShard actors; default one per GPU, else one per CPU")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per LayerShard actor")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per LayerShard actor (fusion is IO-bound)")
    attribution_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the attribution actor")
    attribution_gpus: float | None = Field(None, ge=0, description="GPUs of the attribution actor; default 1 on cuda")
    placement: Literal["pack", "spread"] = Field("pack", description="placement group strategy of the workers")
    max_restarts: int = Field(3, ge=0, description="restarts of a crashed actor (its shards are redone)")


class RejuvenateConfig(_Config):
    base: Path = Field(description="base checkpoint directory (the model SFT started from)")
    sft: Path = Field(description="SFT checkpoint directory to rejuvenate")
    out: Path = Field(description="output checkpoint directory")
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="fusion weight of the SFT model, Eq. 1; paper sweeps 0.40-0.60"
    )
    reset_ratio: float = Field(
        0.01, gt=0.0, lt=1.0, description="fraction rho of neurons to reset, Eq. 4; paper sweeps 0.005-0.04"
    )
    omega: float = Field(1.0, ge=0.0, le=1.0, description="reset strength, Eq. 5; 1.0 overwrites with base values")
    tokens_per_example: int = Field(8, ge=1, description="N target tokens per calibration example (ours: 8)")
    calibration: Path | None = Field(None, description="jsonl of {prompt, response} pairs for the reset")
    selection: Literal["aggregate", "union"] = Field(
        "aggregate", description="aggregate: normalised sum then global top-rho (ours); union: the paper's union"
    )
    attribution_model: Literal["sft", "fused"] = Field("sft", description="model whose neurons are attributed (ours)")
    score_sign: Literal["abs", "positive"] = Field(
        "abs", description="rank neurons by |effect| on the target logit, or by positive push only (ours)"
    )
    fusion_only: bool = Field(False, description="skip the targeted reset")
    device: str = Field("cpu", description="device for the attribution passes (cpu, cuda, cuda:1)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="storage dtype of the output; auto keeps each tensor's dtype from the SFT checkpoint"
    )
    attribution_dtype: Literal["float32", "float64", "bfloat16"] = Field(
        "float32", description="compute dtype of the attribution passes"
    )
    batch_size: int = Field(8, ge=1, description="calibration examples per forward pass")
    max_length: int = Field(512, ge=2, description="truncate calibration examples to this many tokens")
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


def _describe(model: type[BaseModel], loc: tuple) -> str:
    fields = model.model_fields
    for part in loc:
        info = fields.get(part) if isinstance(part, str) else None
        if info is None:
            return ""
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model, fields = ann, ann.model_fields
            continue
        return info.description or ""
    return ""


def validate_config(model: type[_Config], values: dict[str, Any]) -> Any:
    """Build a config; a validation problem becomes one RejuvError line naming field and fix."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc) or "config"
        got = f" (got {err['input']!r})" if loc and err["type"] != "missing" else ""
        hint = _describe(model, loc)
        msg = err["msg"].removeprefix("Value error, ")
        raise RejuvError(f"{name}: {msg}{got}" + (f" [{name}: {hint}]" if hint else "")) from None


def load_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise RejuvError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise RejuvError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RejuvError(f"config file {path} must hold a mapping of option: value")
    return data


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line (not None) override the YAML; nested dicts merge."""
    out = dict(base)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, dict):
            nested = out[k] if isinstance(out.get(k), dict) else {}
            v = merge_overrides(nested, v)
            if not v:
                continue
        out[k] = v
    return out


class TinyModelConfig(_Config):
    family: Literal["llama", "mistral", "qwen2", "qwen3"] = Field("qwen3", description="architecture family")
    hidden_size: int = Field(128, ge=8, description="model width")
    intermediate_size: int = Field(384, ge=8, description="MLP width")
    num_layers: int = Field(4, ge=1, description="decoder layers")
    num_heads: int = Field(2, ge=1, description="attention heads")
    num_kv_heads: int = Field(1, ge=1, description="key/value heads (GQA)")
    head_dim: int = Field(64, ge=8, description="head dimension (vLLM's CPU kernels need 64 or more)")


class WorldDataConfig(_Config):
    id_max: int = Field(20, ge=2, description="largest number in in-distribution problems")
    ood_max: int = Field(
        30,
        ge=2,
        description="largest number in out-of-distribution, wide (RL) and base pre-training problems "
        "(30, not 40: a base pre-trained within the build budget does arithmetic in a smaller range)",
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


class WorldTrainConfig(_Config):
    pretrain_epochs: float = Field(2.0, gt=0, description="passes over the pre-training texts")
    pretrain_lr: float = Field(1e-3, gt=0, description="pre-training learning rate")
    pretrain_batch_size: int = Field(64, ge=1, description="pre-training batch size")
    sft_epochs: list[float] = Field(
        default_factory=lambda: [0.5, 1, 2, 4, 8, 16, 32], description="SFT epochs at which checkpoints are saved"
    )
    sft_lr: float = Field(3e-4, gt=0, description="SFT learning rate (constant, no warmup, no weight decay)")
    sft_batch_size: int = Field(32, ge=1, description="SFT batch size")

    @model_validator(mode="after")
    def _ladder_sorted(self) -> WorldTrainConfig:
        if (
            not self.sft_epochs
            or any(e <= 0 for e in self.sft_epochs)
            or sorted(set(self.sft_epochs)) != list(self.sft_epochs)
        ):
            raise ValueError("sft_epochs must be a non-empty, strictly increasing list of positive epochs")
        return self


class TinyWorldConfig(_Config):
    out: Path = Field(description="testbed directory (base/, sft/epoch-<e>/, data/)")
    seed: int = Field(0, description="seed of data, initialisation and data order")
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    data: WorldDataConfig = Field(default_factory=WorldDataConfig)
    train: WorldTrainConfig = Field(default_factory=WorldTrainConfig)
    force: bool = Field(False, description="rebuild everything even if cached")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the artefacts (not where they go or how the run is tracked)."""
        return self.model_dump(mode="json", exclude={"out", "force", "tracking"})


class DiagnoseConfig(_Config):
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
