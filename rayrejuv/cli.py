"""Command line: typer commands that build a typed config and call a pipeline. Nothing else."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from rayrejuv.errors import RejuvError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rejuvenate over-fine-tuned LLM checkpoints.")


def _tracking(uri: str | None, experiment: str | None, track: bool | None) -> dict:
    return {"uri": uri, "experiment": experiment, "enabled": track}


def _opt(name: str, *decls: str):
    """A flag whose help and default come from RejuvenateConfig (the single source of defaults)."""
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig

    field = RejuvenateConfig.model_fields[name]
    default = "" if field.is_required() else f" [default: {field.get_default(call_default_factory=True)}]"
    return typer.Option(None, *decls, help=f"{field.description}{default}", show_default=False)


@app.command()
def rejuvenate(
    base: Optional[Path] = _opt("base"),
    sft: Optional[Path] = _opt("sft"),
    out: Optional[Path] = _opt("out"),
    alpha: Optional[float] = _opt("alpha"),
    reset_ratio: Optional[float] = _opt("reset_ratio"),
    omega: Optional[float] = _opt("omega"),
    tokens_per_example: Optional[int] = _opt("tokens_per_example"),
    calibration: Optional[Path] = _opt("calibration"),
    selection: Optional[str] = _opt("selection"),
    attribution_model: Optional[str] = _opt("attribution_model"),
    score_sign: Optional[str] = _opt("score_sign"),
    fusion_only: Optional[bool] = _opt("fusion_only", "--fusion-only/--with-reset"),
    device: Optional[str] = _opt("device"),
    dtype: Optional[str] = _opt("dtype"),
    attribution_dtype: Optional[str] = _opt("attribution_dtype"),
    batch_size: Optional[int] = _opt("batch_size"),
    max_length: Optional[int] = _opt("max_length"),
    max_shard_gb: Optional[float] = _opt("max_shard_gb"),
    overwrite: Optional[bool] = _opt("overwrite", "--overwrite/--no-overwrite"),
    allow_pickle: Optional[bool] = _opt("allow_pickle", "--allow-pickle/--no-allow-pickle"),
    resume: Optional[bool] = _opt("resume", "--resume/--no-resume"),
    use_ray: Optional[bool] = typer.Option(None, "--ray/--no-ray", help="run on Ray [default: on]"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address [default: $RAY_ADDRESS, else local]"),
    workers: Optional[int] = typer.Option(None, help="LayerShard actors [default: one per GPU, else per CPU]"),
    placement: Optional[str] = typer.Option(None, help="pack | spread the workers over nodes [default: pack]"),
    config: Optional[Path] = typer.Option(None, help="YAML config; flags override it"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db]"
    ),
    experiment: Optional[str] = typer.Option(None, help="MLflow experiment [default: rayrejuv]"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log the run to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Base-anchored fusion + targeted neuron reset -> a Hugging Face checkpoint."""
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.commands.rejuvenate.driver import rejuvenate as run
    from rayrejuv.commands.rejuvenate.report import print_rejuvenation_summary
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {k: v for k, v in locals().items() if k not in {"config", "tracking_uri", "experiment", "track", "quiet"}}
    flags = {k: v for k, v in flags.items() if k in RejuvenateConfig.model_fields}
    flags["tracking"] = _tracking(tracking_uri, experiment, track)
    flags["ray"] = {"enabled": use_ray, "address": ray_address, "workers": workers, "placement": placement}
    cfg = validate_config(RejuvenateConfig, merge_overrides(load_yaml(config), flags))
    t0 = time.perf_counter()
    report = run(cfg, progress=not quiet)
    print_rejuvenation_summary(report, time.perf_counter() - t0)


@app.command()
def rl(
    model: Optional[Path] = typer.Option(None, help="starting checkpoint (also the KL reference)"),
    train_data: Optional[Path] = typer.Option(None, help="jsonl of {prompt, answer} for RL"),
    eval_data: Optional[Path] = typer.Option(None, help="jsonl of {prompt, answer} for pass@1 / pass@k"),
    out: Optional[Path] = typer.Option(None, help="run directory; re-run with the same --out to resume"),
    steps: Optional[int] = typer.Option(None, help="GRPO steps [default: 100]"),
    seed: Optional[int] = typer.Option(None, help="seed [default: 0]"),
    backend: Optional[str] = typer.Option(None, help="rollout backend: hf | vllm [default: hf]"),
    rollout_workers: Optional[int] = typer.Option(None, help="rollout actors [default: 1]"),
    learner_workers: Optional[int] = typer.Option(None, help="Ray Train learner workers [default: 1]"),
    lr: Optional[float] = typer.Option(None, help="learning rate [default: 1e-6]"),
    beta: Optional[float] = typer.Option(None, help="KL coefficient [default: 0.01]"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="restart a finished run"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address [default: $RAY_ADDRESS, else local]"),
    config: Optional[Path] = typer.Option(None, help="YAML config (grpo, rollout, learner, reward sections)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI"),
    experiment: Optional[str] = typer.Option(None, help="MLflow experiment [default: rayrejuv]"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log the run to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """GRPO on Ray: rollout actors (hf or vLLM), a Ray Train learner (DDP or DeepSpeed), MLflow."""
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.commands.rl.report import print_rl_summary
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {
        "model": model,
        "train_data": train_data,
        "eval_data": eval_data,
        "out": out,
        "steps": steps,
        "seed": seed,
        "overwrite": overwrite,
        "grpo": {"lr": lr, "beta": beta},
        "rollout": {"backend": backend, "workers": rollout_workers},
        "learner": {"workers": learner_workers},
        "ray": {"address": ray_address},
        "tracking": _tracking(tracking_uri, experiment, track),
    }
    cfg = validate_config(RLConfig, merge_overrides(load_yaml(config), flags))
    print_rl_summary(run_rl(cfg, progress=not quiet))


@app.command()
def tune(
    base: Optional[Path] = typer.Option(None, help="base checkpoint"),
    sft: Optional[Path] = typer.Option(None, help="SFT checkpoint to rejuvenate"),
    calibration: Optional[Path] = typer.Option(None, help="jsonl of {prompt, response} for the targeted reset"),
    train_data: Optional[Path] = typer.Option(None, help="jsonl of {prompt, answer} for the RL probe"),
    eval_data: Optional[Path] = typer.Option(None, help="jsonl of {prompt, answer}: in-distribution eval"),
    ood_data: Optional[Path] = typer.Option(None, help="jsonl of {prompt, answer}: out-of-distribution eval"),
    out: Optional[Path] = typer.Option(None, help="search directory [default: rayrejuv-tune]"),
    num_samples: Optional[int] = typer.Option(None, help="trials [default: 8]"),
    max_concurrent: Optional[int] = typer.Option(None, help="trials at once [default: 2]"),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="continue an interrupted search"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address [default: $RAY_ADDRESS, else local]"),
    config: Optional[Path] = typer.Option(None, help="YAML config (space, probe, objective, ...)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log the search to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="less output"),
) -> None:
    """Ray Tune over alpha, rho, omega, N, selection; each trial = rejuvenate + a short GRPO probe."""
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.commands.tune.driver import run_tune
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {k: v for k, v in locals().items() if k in TuneConfig.model_fields and k not in {"tracking", "ray"}}
    flags["ray"] = {"address": ray_address}
    flags["tracking"] = _tracking(tracking_uri, None, track)
    cfg = validate_config(TuneConfig, merge_overrides(load_yaml(config), flags))
    summary = run_tune(cfg, progress=not quiet)
    print((Path(cfg.out) / "leaderboard.md").read_text())
    print(f"best: {summary['best_yaml']} (checkpoint {summary['best_checkpoint']})")
    print(f"search {summary['wall_seconds']:.0f}s; sum of trial times {summary['trial_seconds_sum']:.0f}s")


testbed_app = typer.Typer(no_args_is_help=True, help="The tiny verifiable math world (built locally).")
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("build")
def testbed_build(
    out: Optional[Path] = typer.Option(None, help="testbed directory [default: rayrejuv-testbed]"),
    seed: Optional[int] = typer.Option(None, help="seed of data, init and data order [default: 0]"),
    force: Optional[bool] = typer.Option(None, "--force/--no-force", help="rebuild everything"),
    config: Optional[Path] = typer.Option(None, help="YAML config (model, data, train sections); flags override"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log the run to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Build (or reuse) the tokenizer, base model, SFT ladder and data files."""
    from rayrejuv.commands.testbed.config import TinyWorldConfig
    from rayrejuv.commands.testbed.driver import build_testbed
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {"out": out, "seed": seed, "force": force, "tracking": _tracking(tracking_uri, None, track)}
    values = merge_overrides({"out": "rayrejuv-testbed", **load_yaml(config)}, flags)
    cfg = validate_config(TinyWorldConfig, values)
    t0 = time.perf_counter()
    manifest = build_testbed(cfg, progress=not quiet)
    print(f"testbed ready in {cfg.out} ({time.perf_counter() - t0:.1f}s; build timings {manifest['timings_s']})")


@app.command()
def diagnose(
    base: Optional[Path] = typer.Option(None, help="base checkpoint directory"),
    sft: Optional[list[Path]] = typer.Option(None, help="SFT checkpoint; repeat for a ladder"),
    data: Optional[Path] = typer.Option(None, help="jsonl: prompt + response (loss, entropy) and/or answer (pass@k)"),
    out: Optional[Path] = typer.Option(None, help="report directory [default: diagnose-<last sft>]"),
    max_examples: Optional[int] = typer.Option(None, help="examples of --data used [default: 200]"),
    k: Optional[int] = typer.Option(None, help="k of pass@k [default: 8]"),
    device: Optional[str] = typer.Option(None, help="evaluation device [default: cpu]"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="replace --out"),
    config: Optional[Path] = typer.Option(None, help="YAML config; flags override it"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log the run to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Is this checkpoint rigid? Entropy, SFT loss, pass@k gap, drift from base; report + figures."""
    from rayrejuv.commands.diagnose.config import DiagnoseConfig
    from rayrejuv.commands.diagnose.driver import diagnose as run
    from rayrejuv.commands.diagnose.report import print_diagnose_summary
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {
        "base": base,
        "sft": sft or None,
        "data": data,
        "out": out,
        "max_examples": max_examples,
        "k": k,
        "device": device,
        "overwrite": overwrite,
        "tracking": _tracking(tracking_uri, None, track),
    }
    cfg = validate_config(DiagnoseConfig, merge_overrides(load_yaml(config), flags))
    print_diagnose_summary(run(cfg, progress=not quiet))


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, help="working directory; re-run to resume [default: rayrejuv-demo]"),
    seeds: Optional[int] = typer.Option(None, help="RL seeds per start [default: 3; --quick: 2]"),
    seed: Optional[int] = typer.Option(None, help="first RL seed [default: 0]"),
    quick: bool = typer.Option(False, "--quick", help="smoke run of a few minutes (small world, short RL)"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="replace another demo in --out"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address [default: $RAY_ADDRESS, else local]"),
    config: Optional[Path] = typer.Option(None, help="YAML config (world, rungs, rejuvenation, rl, eval sections)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI"),
    experiment: Optional[str] = typer.Option(None, help="MLflow experiment [default: rayrejuv]"),
    track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log to MLflow [default: on]"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The paper's ablation in miniature: build a tiny world, diagnose, rejuvenate, GRPO from four starts."""
    from rayrejuv.commands.demo.config import QUICK, DemoConfig
    from rayrejuv.commands.demo.driver import run_demo
    from rayrejuv.commands.demo.report import print_demo_summary
    from rayrejuv.config.base import load_yaml, merge_overrides, validate_config

    flags = {
        "out": out,
        "seeds": seeds,
        "seed": seed,
        "quick": quick or None,
        "overwrite": overwrite,
        "ray": {"address": ray_address},
        "tracking": _tracking(tracking_uri, experiment, track),
    }
    values = merge_overrides(QUICK if quick else {}, load_yaml(config))
    cfg = validate_config(DemoConfig, merge_overrides(values, flags))
    print_demo_summary(run_demo(cfg, progress=not quiet))


def main() -> None:
    """Usage errors are click's (exit 2); a RejuvError is one line on stderr (exit 2)."""
    try:
        app()
    except RejuvError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
