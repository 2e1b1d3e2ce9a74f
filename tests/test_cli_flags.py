"""The CLI is built from the typed configs: each flag's help default is its config field's default,
each flag sets the config field its table names, field default < preset < YAML < flag, and a table
entry that names no field fails when the command is built. Nothing runs: drivers are recorders."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rayrejuv.cli import COMMANDS, app, main
from rayrejuv.cli.flags import Command, build_command, nest
from rayrejuv.commands.demo.config import QUICK
from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.tune.config import TuneConfig
from rayrejuv.config.base import Config

TRACK = ["--tracking-uri", "--track/--no-track"]

# The flags of the hand-written CLI before it was generated (commit 2a7a320): none lost, none renamed
# (and those added since: rl --token-budget, demo --baselines, issue 16).
EXISTING_FLAGS = {
    "rejuvenate": ["--base", "--sft", "--out", "--alpha", "--reset-ratio", "--omega", "--tokens-per-example",
                   "--calibration", "--selection", "--chat-template", "--attribution-model", "--score-sign",
                   "--fusion-only/--with-reset", "--reset-untouched/--skip-untouched",
                   "--device", "--dtype", "--attribution-dtype", "--batch-size", "--max-length", "--max-shard-gb",
                   "--overwrite/--no-overwrite", "--allow-pickle/--no-allow-pickle", "--resume/--no-resume",
                   "--ray/--no-ray", "--ray-address", "--workers", "--placement", *TRACK, "--experiment"],
    "rl": ["--model", "--train-data", "--eval-data", "--out", "--steps", "--token-budget", "--seed", "--chat-template",
           "--backend", "--rollout-workers", "--learner-workers", "--lr", "--beta", "--overwrite/--no-overwrite",
           "--ray-address", "--verbose", *TRACK, "--experiment"],
    "tune": ["--base", "--sft", "--calibration", "--train-data", "--eval-data", "--ood-data", "--out", "--num-samples",
             "--max-concurrent", "--resume/--no-resume", "--ray-address", "--verbose", *TRACK],
    "testbed build": ["--out", "--seed", "--force/--no-force", *TRACK],
    "testbed real": ["--out", "--gguf", "--seed", "--overwrite/--no-overwrite"],  # new in issue 14
    "diagnose": ["--base", "--sft", "--data", "--out", "--max-examples", "--k", "--device", "--chat-template",
                 "--overwrite/--no-overwrite", *TRACK],
    "demo": ["--out", "--seeds", "--seed", "--quick", "--baselines", "--overwrite/--no-overwrite", "--ray-address",
             "--verbose", *TRACK, "--experiment"],
}

# The defaults the hand-written help strings showed; the generated help must show the same numbers.
OLD_HELP_DEFAULTS = {
    "rl": {"--steps": "100", "--seed": "0", "--backend": "hf", "--rollout-workers": "1", "--learner-workers": "1",
           "--lr": "1e-06", "--beta": "0.01", "--experiment": "rayrejuv"},
    "tune": {"--out": "rayrejuv-tune", "--num-samples": "8", "--max-concurrent": "2"},
    "testbed build": {"--out": "rayrejuv-testbed", "--seed": "0"},
    "testbed real": {},  # no hand-written help before it
    "diagnose": {"--max-examples": "200", "--k": "8", "--device": "cpu"},
    "demo": {"--out": "rayrejuv-demo", "--seeds": "3; --quick: 2", "--seed": "0", "--experiment": "rayrejuv"},
    "rejuvenate": {"--alpha": "0.5", "--reset-ratio": "0.01", "--omega": "1.0", "--placement": "pack",
                   "--experiment": "rayrejuv"},
}

# Per command: every flag given a non-default value, and what the config must hold then.
CASES: dict[str, tuple[list[str], dict[str, object]]] = {
    "rejuvenate": (
        ["--base", "b", "--sft", "s", "--out", "o", "--alpha", "0.3", "--reset-ratio", "0.02", "--omega", "0.5",
         "--tokens-per-example", "4", "--calibration", "c.jsonl", "--selection", "union", "--chat-template", "always",
         "--attribution-model", "fused", "--score-sign", "positive", "--fusion-only", "--reset-untouched",
         "--device", "cuda:1",
         "--dtype", "bfloat16",
         "--attribution-dtype", "float64", "--batch-size", "3", "--max-length", "64", "--max-shard-gb", "0.25",
         "--overwrite", "--allow-pickle", "--resume", "--no-ray", "--ray-address", "ray://h:10001", "--workers", "3",
         "--placement", "spread", "--tracking-uri", "sqlite:///t.db", "--no-track", "--experiment", "exp"],
        {"base": Path("b"), "sft": Path("s"), "out": Path("o"), "alpha": 0.3, "reset_ratio": 0.02, "omega": 0.5,
         "tokens_per_example": 4, "calibration": Path("c.jsonl"), "selection": "union", "attribution_model": "fused",
         "chat_template": "always",
         "score_sign": "positive", "fusion_only": True, "reset_untouched": True, "device": "cuda:1",
         "dtype": "bfloat16",
         "attribution_dtype": "float64", "batch_size": 3, "max_length": 64, "max_shard_gb": 0.25, "overwrite": True,
         "allow_pickle": True, "resume": True, "ray.enabled": False, "ray.address": "ray://h:10001",
         "ray.workers": 3, "ray.placement": "spread", "tracking.uri": "sqlite:///t.db", "tracking.enabled": False,
         "tracking.experiment": "exp"},
    ),
    "rl": (
        ["--model", "m", "--train-data", "t.jsonl", "--eval-data", "e.jsonl", "--out", "o", "--steps", "7",
         "--token-budget", "900", "--seed", "3", "--chat-template", "never",
         "--backend", "vllm", "--rollout-workers", "2", "--learner-workers", "2", "--lr", "3e-5",
         "--beta", "0.05", "--overwrite", "--ray-address", "ray://h:10001", "--verbose", "--tracking-uri",
         "sqlite:///t.db", "--no-track", "--experiment", "exp"],
        {"model": Path("m"), "train_data": Path("t.jsonl"), "eval_data": Path("e.jsonl"), "out": Path("o"),
         "steps": 7, "token_budget": 900, "seed": 3, "chat_template": "never",
         "rollout.backend": "vllm", "rollout.workers": 2, "learner.workers": 2,
         "grpo.lr": 3e-5, "grpo.beta": 0.05, "overwrite": True, "ray.address": "ray://h:10001", "ray.verbose": True,
         "tracking.uri": "sqlite:///t.db", "tracking.enabled": False, "tracking.experiment": "exp"},
    ),
    "tune": (
        ["--base", "b", "--sft", "s", "--calibration", "c.jsonl", "--train-data", "t.jsonl", "--eval-data", "e.jsonl",
         "--ood-data", "d.jsonl", "--out", "o", "--num-samples", "3", "--max-concurrent", "1", "--resume",
         "--ray-address", "ray://h:10001", "--verbose", "--tracking-uri", "sqlite:///t.db", "--no-track"],
        {"base": Path("b"), "sft": Path("s"), "calibration": Path("c.jsonl"), "train_data": Path("t.jsonl"),
         "eval_data": Path("e.jsonl"), "ood_data": Path("d.jsonl"), "out": Path("o"), "num_samples": 3,
         "max_concurrent": 1, "resume": True, "ray.address": "ray://h:10001", "ray.verbose": True,
         "tracking.uri": "sqlite:///t.db", "tracking.enabled": False},
    ),
    "testbed build": (
        ["--out", "o", "--seed", "5", "--force", "--tracking-uri", "sqlite:///t.db", "--no-track"],
        {"out": Path("o"), "seed": 5, "force": True, "tracking.uri": "sqlite:///t.db", "tracking.enabled": False},
    ),
    "testbed real": (
        ["--out", "o", "--gguf", "g.gguf", "--seed", "5", "--overwrite"],
        {"out": Path("o"), "gguf": Path("g.gguf"), "seed": 5, "overwrite": True},
    ),
    "diagnose": (
        ["--base", "b", "--sft", "s1", "--sft", "s2", "--data", "d.jsonl", "--out", "o", "--max-examples", "10",
         "--k", "2", "--device", "cuda", "--chat-template", "always",
         "--overwrite", "--tracking-uri", "sqlite:///t.db", "--no-track"],
        {"base": Path("b"), "sft": [Path("s1"), Path("s2")], "data": Path("d.jsonl"), "out": Path("o"),
         "max_examples": 10, "k": 2, "device": "cuda", "chat_template": "always",
         "overwrite": True, "tracking.uri": "sqlite:///t.db",
         "tracking.enabled": False},
    ),
    "demo": (
        ["--out", "o", "--seeds", "5", "--seed", "2", "--quick", "--baselines", "--overwrite", "--ray-address", "ray://h:10001",
         "--verbose", "--tracking-uri", "sqlite:///t.db", "--no-track", "--experiment", "exp"],
        {"out": Path("o"), "seeds": 5, "seed": 2, "quick": True, "baselines": True, "overwrite": True, "ray.address": "ray://h:10001",
         "ray.verbose": True, "tracking.uri": "sqlite:///t.db", "tracking.enabled": False,
         "tracking.experiment": "exp"},
    ),
}


def at(obj, path: str):
    """The value at a dotted path of a config (attributes) or of a nested dict (keys)."""
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def field_default(config: type[Config], path: str):
    """The config's default at a dotted path, read through the sections' defaults; None when required."""
    head, _, rest = path.partition(".")
    info = config.model_fields[head]
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    return at(value, rest) if rest else value


def at_description(config: type[Config], path: str) -> str:
    *sections, leaf = path.split(".")
    for s in sections:
        config = config.model_fields[s].annotation
    return config.model_fields[leaf].description


def help_rows(command: str) -> dict[str, str]:
    """{first option name: the text of its row} in `rayrejuv <command> --help` (rich panel, wide terminal)."""
    r = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "250"}, terminal_width=250)
    assert r.exit_code == 0, r.output
    rows: dict[str, str] = {}
    key = None
    for line in r.output.splitlines():
        text = line.strip().strip("│").strip()
        if text.startswith("-"):
            key = text.split()[0]
            rows[key] = text
        elif key and text and not text.startswith("╰"):
            rows[key] += " " + text  # a wrapped help text
    return rows


def shown(row: str) -> str | None:
    (default,) = re.findall(r"\[default: ([^\]]*)\]", row) or [None]
    return default


@pytest.fixture
def recorded(monkeypatch):
    """Every command's driver and report module replaced by recorders: nothing runs, the config is kept."""
    calls: list[tuple] = []

    def recorder(*args, **kwargs):
        calls.append(args)
        return {}

    for cmd in ("rejuvenate", "rl", "tune", "testbed", "diagnose", "demo"):
        for part in ("driver", "report"):
            fake = types.ModuleType(f"rayrejuv.commands.{cmd}.{part}")
            fake.__getattr__ = lambda name: recorder  # `from <fake> import run_rl` gets the recorder
            monkeypatch.setitem(sys.modules, fake.__name__, fake)
    return calls


def run(command: str, argv: list[str], calls: list[tuple]):
    """The config the command hands to its driver."""
    r = CliRunner().invoke(app, [*command.split(), *argv])
    assert r.exit_code == 0 and r.exception is None, (r.output, r.exception)
    (cfg,) = [args[0] for args in calls if args and isinstance(args[0], Config)]
    calls.clear()
    return cfg


def test_every_existing_flag_is_kept_and_no_other():
    assert {name: list(spec.flags) for name, spec in COMMANDS.items()} == EXISTING_FLAGS
    for name, flags in EXISTING_FLAGS.items():
        listed = {f.split("/")[0] for f in flags} | {"--config", "--quiet", "--help"}
        assert set(help_rows(name)) == listed, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_default_is_the_config_default(name):
    spec, rows = COMMANDS[name], help_rows(name)
    for decl, path in spec.flags.items():
        default = field_default(spec.config, path)
        if isinstance(default, bool):  # the flag in effect by default, as click shows it; none for a lone --flag
            on, _, off = decl.partition("/")
            expected = (on if default else off).lstrip("-") or None
        else:
            expected = None if default is None else str(default)  # None: known at run time, the help says how
        if spec.preset is not None and path in spec.preset[1]:
            expected = f"{expected}; {spec.preset[0]}: {spec.preset[1][path]}"
        row = rows[decl.split("/")[0]]
        assert shown(row) == expected, (name, decl, row)
        assert row.count("[default:") <= 1 and at_description(spec.config, path) in row
    assert all(shown(rows[flag]) == value for flag, value in OLD_HELP_DEFAULTS[name].items())
    assert shown(rows["--config"]) is None and "flags override it" in rows["--config"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_flag_sets_the_field_its_table_names(name, recorded):
    spec, (argv, expected) = COMMANDS[name], CASES[name]
    assert set(expected) == set(spec.flags.values()), "every flag of the table has a case"
    given = set(argv)
    for decl, path in spec.flags.items():
        assert given & set(decl.split("/")), f"{decl} is not given"
        assert expected[path] != field_default(spec.config, path), f"{path}: pick a non-default value"
    cfg = run(name, argv, recorded)
    assert {path: at(cfg, path) for path in expected} == expected


@pytest.mark.parametrize("name", list(COMMANDS))
def test_unset_flags_leave_the_yaml_alone(name, recorded, tmp_path):
    """The same values from YAML alone: a flag that is not given is None and overrides nothing."""
    _, expected = CASES[name]
    as_yaml = {p: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
               for p, v in expected.items()}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(nest(as_yaml)))
    cfg = run(name, ["--config", str(tmp_path / "c.yaml")], recorded)
    assert {path: at(cfg, path) for path in expected} == expected


def test_yaml_below_flags_and_nested_sections_merge(recorded, tmp_path):
    (tmp_path / "rl.yaml").write_text(yaml.safe_dump({
        "model": "m", "train_data": "t.jsonl", "out": "o", "overwrite": True,
        "grpo": {"lr": 1e-4, "beta": 0.5, "group_size": 4}, "rollout": {"workers": 3},
    }))
    cfg = run("rl", ["--config", str(tmp_path / "rl.yaml"), "--lr", "3e-5", "--no-overwrite", "--backend", "vllm"],
              recorded)
    assert cfg.grpo.lr == 3e-5 and cfg.overwrite is False and cfg.rollout.backend == "vllm"
    assert cfg.grpo.beta == 0.5 and cfg.grpo.group_size == 4 and cfg.rollout.workers == 3  # siblings kept
    assert cfg.model == Path("m") and cfg.steps == RLConfig.model_fields["steps"].default


def test_demo_quick_preset_is_below_the_yaml_and_the_flags(recorded, tmp_path):
    from rayrejuv.config.world import TinyModelConfig

    plain = run("demo", [], recorded)
    assert (plain.quick, plain.seeds, plain.world.model.hidden_size) == (False, 3, TinyModelConfig().hidden_size)
    cfg = run("demo", ["--quick"], recorded)
    assert cfg.quick and cfg.seeds == QUICK["seeds"] and cfg.rl.steps == QUICK["rl"]["steps"]
    assert cfg.world.model.hidden_size == QUICK["world"]["model"]["hidden_size"]
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"seeds": 4, "rl": {"steps": 9}}))
    cfg = run("demo", ["--quick", "--config", str(tmp_path / "d.yaml")], recorded)
    assert (cfg.seeds, cfg.rl.steps) == (4, 9)
    assert cfg.world.model.hidden_size == QUICK["world"]["model"]["hidden_size"]  # the rest of the preset stays
    cfg = run("demo", ["--quick", "--config", str(tmp_path / "d.yaml"), "--seeds", "6"], recorded)
    assert (cfg.seeds, cfg.rl.steps) == (6, 9)
    cfg = run("demo", ["--config", str(tmp_path / "d.yaml")], recorded)  # no --quick: no preset
    assert (cfg.quick, cfg.seeds, cfg.world.model.hidden_size) == (False, 4, TinyModelConfig().hidden_size)


def _noop(cfg, progress):
    """A command that does nothing."""


@pytest.mark.parametrize("config, flags, message", [
    (RLConfig, {"--lr": "grpo.lrr"}, r"RLConfig: flag --lr -> grpo.lrr: GRPOConfig has no field 'lrr'"),
    (RLConfig, {"--stepz": "stepz"}, r"RLConfig: flag --stepz -> stepz: RLConfig has no field 'stepz'"),
    (RLConfig, {"--grpo": "grpo"}, r"grpo is a section \(GRPOConfig\), not a value"),
    (RLConfig, {"--x": "steps.y"}, r"flag --x -> steps.y: steps is a value, not a section"),
    (RLConfig, {"--x": "grpo.lr.y.z"}, r"flag --x -> grpo.lr.y.z: grpo.lr is a value, not a section"),
    (RLConfig, {"--steps/--no-steps": "steps"}, r"only a bool field takes an --on/--off pair"),
    (RLConfig, {"--lr": "grpo.lr", "--rate": "grpo.lr"}, r"several flags set grpo.lr"),
    (RLConfig, {"--quiet": "overwrite"}, r"--quiet clash with --config / --quiet"),
    (TuneConfig, {"--space": "space"}, r"flag --space -> space: a field of type .* cannot be a flag"),
])
def test_a_bad_table_entry_fails_when_the_command_is_built(config, flags, message):
    with pytest.raises(ValueError, match=message):
        build_command(Command(config, _noop, flags))


def test_a_preset_needs_its_flag_in_the_table():
    with pytest.raises(ValueError, match="preset flag --quick is not in the table"):
        build_command(Command(RLConfig, _noop, {"--steps": "steps"}, preset=("--quick", {"steps": 1})))


def test_a_config_error_is_one_line_on_stderr_exit_2(monkeypatch, capsys, recorded):
    monkeypatch.setattr(sys, "argv", ["rayrejuv", "rl", "--train-data", "t.jsonl", "--out", "o"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: model: Field required [model: starting checkpoint") and not recorded
