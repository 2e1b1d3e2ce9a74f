"""Typer commands generated from typed configs.

A command is declared by a table `flag -> dotted config path` ("--lr": "grpo.lr"); the flag's
type, help text and shown default are read from that config field, so every default lives in
the config alone. Every flag defaults to None (unset), and unset flags do not override the YAML
(`merge_overrides`): field default < (preset <) YAML < flag. A table entry that names no field,
or a field that cannot be a flag, fails when the command is built (at import of `rayrejuv.cli`).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import typer
from pydantic import BaseModel
from rich.markup import escape

from rayrejuv.config.base import Config, load_yaml, merge_overrides, validate_config

SCALARS = (bool, int, float, str, Path)
NO_DEFAULT = object()  # a required field: the YAML or the flag must give it
CLI_ONLY = ("config", "quiet")  # parameters of every command that are not config fields


@dataclass(frozen=True)
class Command:
    """One CLI command: its typed config, its flags and its body (the driver, then the summary)."""

    config: type[Config]
    run: Callable[[Any, bool], None]  # (cfg, progress); its docstring is the command's help
    flags: dict[str, str]  # click declaration ("--lr", "--track/--no-track") -> dotted path ("grpo.lr")
    preset: tuple[str, dict[str, Any]] | None = None  # (a bool flag, values put under the YAML when it is on)


@dataclass(frozen=True)
class Flag:
    """A table entry resolved against the config: what typer needs to declare it."""

    decl: str
    path: str
    kind: Any  # the value type click parses: float, Path, list[Path], ...
    choices: tuple[str, ...] | None  # a Literal field's values (pydantic checks them; help shows them)
    description: str
    default: Any  # the config's default at `path`, or NO_DEFAULT

    @property
    def name(self) -> str:
        return self.path.replace(".", "__")


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def flag_type(annotation: Any, where: str) -> tuple[Any, tuple[str, ...] | None]:
    """(value type, choices) of a field: X | None -> X; Literal["a", "b"] -> str with choices; list[X]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
        return flag_type(next(a for a in args if a is not type(None)), where)
    if origin is Literal and len({type(a) for a in args}) == 1 and type(args[0]) in SCALARS:
        return type(args[0]), tuple(str(a) for a in args)
    if origin is list and len(args) == 1 and args[0] in SCALARS:
        return list[args[0]], None
    if annotation in SCALARS:
        return annotation, None
    raise ValueError(f"{where}: a field of type {annotation!r} cannot be a flag (set it in the YAML)")


def resolve_flag(config: type[Config], decl: str, path: str) -> Flag:
    """Walk `path` through the config's sections to its field; its default is read through the
    sections' own defaults (a section's default_factory may differ from the field's class default)."""
    where = f"{config.__name__}: flag {decl} -> {path}"
    model: Any = config
    default: Any = NO_DEFAULT
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if model is None:
            raise ValueError(f"{where}: {'.'.join(parts[:depth])} is a value, not a section")
        info = model.model_fields.get(part)
        if info is None:
            known = ", ".join(model.model_fields)
            raise ValueError(f"{where}: {model.__name__} has no field {part!r} (it has {known})")
        if depth == 0:
            default = NO_DEFAULT if info.is_required() else info.get_default(call_default_factory=True)
        elif default is not NO_DEFAULT:
            default = getattr(default, part)
        model = info.annotation if _is_section(info.annotation) else None
    if model is not None:
        raise ValueError(f"{where}: {path} is a section ({model.__name__}), not a value")
    kind, choices = flag_type(info.annotation, where)
    if "/" in decl and kind is not bool:
        raise ValueError(f"{where}: only a bool field takes an --on/--off pair")
    return Flag(decl, path, kind, choices, info.description or "", default)


def _text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def shown_default(flag: Flag) -> str | None:
    """The default as help shows it; None where it is known only at run time (the description says how).
    A bool shows the name of the flag that is in effect by default, as click does ('track', 'with-reset')."""
    if flag.default is NO_DEFAULT or flag.default is None:
        return None
    if flag.kind is bool:
        on, _, off = flag.decl.partition("/")
        return (on if flag.default else off).lstrip("-") or None
    return _text(flag.default)


def preset_default(flag: Flag, preset: tuple[str, dict[str, Any]] | None) -> str | None:
    """'--quick: 2' where the preset sets this flag's field."""
    if preset is None:
        return None
    value: Any = preset[1]
    for part in flag.path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return f"{preset[0]}: {_text(value)}"


def help_text(flag: Flag, preset: tuple[str, dict[str, Any]] | None) -> str:
    """The field's description and its default, escaped: typer reads help as rich markup."""
    shown = [s for s in (shown_default(flag), preset_default(flag, preset)) if s]
    return escape(flag.description + (f" [default: {'; '.join(shown)}]" if shown else ""))


def config_help(config: type[Config]) -> str:
    fields = config.model_fields.items()
    sections = [n for n, f in fields if _is_section(f.annotation) or typing.get_origin(f.annotation) is dict]
    listed = f" (any field; sections {', '.join(sections)})" if sections else " (any field)"
    return f"YAML config{listed}; flags override it"


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"grpo.lr": 1e-6, "out": p} -> {"grpo": {"lr": 1e-6}, "out": p} (unset values stay None)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *sections, leaf = path.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = value
    return out


def resolve_table(spec: Command) -> list[Flag]:
    flags = [resolve_flag(spec.config, decl, path) for decl, path in spec.flags.items()]
    paths = [f.path for f in flags]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"{spec.config.__name__}: several flags set {', '.join(repeated)}")
    clash = [f.decl for f in flags if f.name in CLI_ONLY or f.decl.split("/")[0] in ("--config", "--quiet")]
    if clash:
        raise ValueError(f"{spec.config.__name__}: {', '.join(clash)} clash with --config / --quiet")
    if spec.preset is not None and spec.preset[0] not in spec.flags:
        raise ValueError(f"{spec.config.__name__}: preset flag {spec.preset[0]} is not in the table")
    return flags


def parameters(spec: Command, flags: list[Flag]) -> list[inspect.Parameter]:
    """The typer signature: one Optional option per flag (default None = unset), then --config, --quiet."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(f.name, kw, annotation=Optional[f.kind], default=typer.Option(
            None, f.decl, help=help_text(f, spec.preset), show_default=False,
            metavar="|".join(f.choices) if f.choices else None))
        for f in flags
    ]
    config = typer.Option(None, "--config", help=escape(config_help(spec.config)), show_default=False)
    quiet = typer.Option(False, "--quiet", help="no progress bars", show_default=False)
    return params + [inspect.Parameter("config", kw, annotation=Optional[Path], default=config),
                     inspect.Parameter("quiet", kw, annotation=bool, default=quiet)]


def build_config(spec: Command, flags: list[Flag], config: Path | None, given: dict[str, Any]) -> Any:
    """Field defaults < the preset (when its flag is on) < the YAML < the flags given."""
    by_decl = {f.decl: f for f in flags}
    values = load_yaml(config)
    if spec.preset is not None and given[by_decl[spec.preset[0]].name]:
        values = merge_overrides(spec.preset[1], values)
    # a repeatable flag never given may arrive as an empty tuple: unset, like None
    overrides = nest({f.path: given[f.name] if given[f.name] != () else None for f in flags})
    return validate_config(spec.config, merge_overrides(values, overrides))


def build_command(spec: Command) -> Callable[..., None]:
    """A typer-ready function for `spec`: typer reads its `__signature__`, its docstring is the help."""
    flags = resolve_table(spec)

    def command(*, config: Path | None, quiet: bool, **given: Any) -> None:
        spec.run(build_config(spec, flags, config, given), not quiet)

    command.__signature__ = inspect.Signature(parameters(spec, flags))
    command.__doc__ = spec.run.__doc__
    command.__name__ = spec.run.__name__
    return command
