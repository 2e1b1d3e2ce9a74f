"""Typed-config machinery: the base model, YAML loading, flag merging, one-line validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rayrejuv.errors import RejuvError


class Config(BaseModel):
    """Every typed config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


def validate_config(model: type[Config], values: dict[str, Any]) -> Any:
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
