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
    max_shard_gb: float = Field(2.0, gt=0.0, description="largest output shard, in GB")
    overwrite: bool = Field(False, description="replace an existing output directory")
    allow_pickle: bool = Field(False, description="accept pytorch_model.bin inputs (loaded with weights_only=True)")
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
