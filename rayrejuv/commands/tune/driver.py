"""`rayrejuv tune`: Ray Tune over rejuvenation hyperparameters, each trial scored by a short GRPO probe.

    claim --out                              search.json: the search's MLflow run id (--resume continues)
    tuner = Tuner(run_trial, space)          Optuna TPE or random search; ASHA on the probe's reports
    grid = tuner.fit()                       each trial (trial.py): rejuvenate -> probe -> evaluate
    finish                                   leaderboard, best.yaml, plots, summary.json (TuneSummary)

Every trial is a nested MLflow run under the search's parent run; the parent holds the
leaderboard and the objective-vs-hyperparameter plots. `best.yaml` feeds `rayrejuv rejuvenate`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from rayrejuv.commands.tune.config import Range, TuneConfig
from rayrejuv.commands.tune.results import TrialRow, TuneSummary, leaderboard_markdown, ranked
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.errors import RejuvError
from rayrejuv.io.writer import atomic_write_text
from rayrejuv.runs.directory import RunDir
from rayrejuv.runs.tracking import Run

NAME = "search"  # Tune's experiment under --out/ray


def search_space(space: dict[str, Range]) -> dict[str, Any]:
    from ray import tune

    def one(r: Range):
        if r.grid:
            return tune.grid_search(r.choices)
        if r.choices is not None:
            return tune.choice(r.choices)
        return (tune.loguniform if r.log else tune.uniform)(r.low, r.high)

    return {name: one(r) for name, r in space.items()}


def _optuna(cfg: TuneConfig):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=cfg.max_concurrent)


def _random(cfg: TuneConfig):
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent)


SEARCH_ALGS = {"optuna": _optuna, "random": _random}


def claim_search(cfg: TuneConfig) -> RunDir:
    """--out holds one search: a new one (missing or empty directory), or the one there with --resume."""
    out = Path(cfg.out)
    manifest = out / "search.json"
    if out.exists() and not out.is_dir():
        raise RejuvError(f"--out {out} exists and is not a directory; choose another --out")
    if out.exists() and not cfg.resume and any(out.iterdir()):
        raise RejuvError(f"--out {out} already holds a search; pass --resume to continue it, or choose a new --out")
    resumed = cfg.resume and manifest.is_file()
    state = json.loads(manifest.read_text()) if resumed else {"run_id": None}
    return RunDir(out, manifest, state, resumed=resumed)


def run_tune(cfg: TuneConfig, progress: bool = True) -> TuneSummary:
    """Claim --out, start (or join) Ray, open the search's MLflow run, fit the Tuner, write the results."""
    from rayrejuv.commands.tune.report import probe_lines
    from rayrejuv.commands.tune.trial import probe_pools
    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.console import run_lines
    from rayrejuv.runs.tracking import tracked_run

    paths = ("base", "sft", "calibration", "train_data", "eval_data", "out", "ood_data")
    cfg = cfg.model_copy(update={k: Path(getattr(cfg, k)).absolute() for k in paths if getattr(cfg, k) is not None})
    search = claim_search(cfg)
    examples = rendered_examples(cfg, progress)
    t0 = time.perf_counter()
    with ray_session(cfg.ray.address, cfg.cpu_demand(), cfg.ray.log_dir(cfg.out)), tracked_run(
        cfg.tracking, "tune", run_id=search.state["run_id"]
    ) as run, run_lines(probe_lines(cfg), progress):  # a live line per trial's probe (Tune's logs: OUT/logs)
        if search.state["run_id"] is None:
            run.log_params(cfg.model_dump(mode="json") | examples)
        search.state["run_id"] = run.run_id
        search.save()
        with probe_pools(cfg) as pool:  # warm probe workers the trials share (commands/rl/pool.py)
            grid = tuner(cfg, run.child(cfg.tracking, "trial"), progress, pool).fit()
        run.kill_running_children()  # trials ASHA stopped were killed inside their MLflow run
        board = ranked([TrialRow.of_result(r, list(cfg.space)) for r in grid])
        return finish(cfg, board, run, time.perf_counter() - t0)


def rendered_examples(cfg: TuneConfig, show: bool) -> dict[str, str]:
    """What the SFT model sees, before Ray starts (a template problem fails here): the first
    calibration row (as the trials' rejuvenation renders it) and the first RL prompt (as the probe
    and the evaluation do), printed when `show`, for the search's MLflow params."""
    from rayrejuv.data.calibration import first_rendered
    from rayrejuv.data.chat import print_rendered, rendered_text
    from rayrejuv.data.jsonl import read_jsonl
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.loading import load_tokenizer

    tok = load_tokenizer(Checkpoint(cfg.sft, role="SFT"))
    calibration = cfg.rejuvenate_config({}, cfg.out).chat_template
    rl = cfg.probe.rl_config(cfg.sft, cfg.train_data, cfg.out, cfg.seed).chat_template
    prompt = read_jsonl(cfg.train_data, ("prompt", "answer"), "RL training data")[0]["prompt"]
    examples = {"rendered_calibration": first_rendered(cfg.calibration, tok, calibration),
                "rendered_prompt": rendered_text(tok, {"prompt": prompt}, rl)}
    if show:
        print_rendered(examples["rendered_calibration"], calibration, "calibration")
        print_rendered(examples["rendered_prompt"], rl, "RL training")
    return examples


def tuner(cfg: TuneConfig, trials: TrackingConfig, progress: bool, pool=None):
    """A new Tuner, or the interrupted one under --out/ray restored (--resume; finished trials are kept);
    `pool`: the probe pools' queue the trials run their probes on."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from rayrejuv.commands.tune.trial import CancelStoppedProbes, probe_queue_name, run_trial

    resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, cfg=cfg, tracking=trials, pool=pool), resources)
    path = str(Path(cfg.out) / "ray" / NAME)
    if cfg.resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    reports = cfg.probe.steps // cfg.probe.report_every + 1
    scheduler = (ASHAScheduler(max_t=reports, grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
                 if cfg.asha else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=search_space(cfg.space),
        tune_config=tune.TuneConfig(
            metric="objective", mode="max", search_alg=SEARCH_ALGS[cfg.search_alg](cfg),
            scheduler=scheduler, num_samples=cfg.num_samples,  # the search algs limit concurrency
        ),
        run_config=tune.RunConfig(
            name=NAME, storage_path=str(Path(cfg.out) / "ray"),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[CancelStoppedProbes(probe_queue_name(cfg))],  # a stopped trial's probe leaves its pool
            verbose=int(progress and cfg.ray.verbose),  # Tune's status tables; else the CLI's line per probe
        ),
    )


def finish(cfg: TuneConfig, board: list[TrialRow], run: Run, wall: float) -> TuneSummary:
    """leaderboard.md/.json, then (if a trial finished) best.yaml, the plots and summary.json; all logged."""
    from rayrejuv.commands.tune.report import plot_objective_vs_params

    out = Path(cfg.out)
    atomic_write_text(out / "leaderboard.md", leaderboard_markdown(board, list(cfg.space)))
    atomic_write_text(out / "leaderboard.json", json.dumps([r.to_dict() for r in board], indent=1))
    finished = [r for r in board if r.objective is not None]
    if not finished:
        raise RejuvError(f"no trial finished (see {out / 'leaderboard.md'}); check the trial errors under {out}/ray")
    _keep_best_trials(out, board, {r.trial for r in finished[: cfg.keep_best]})
    best = finished[0]
    best_cfg = cfg.rejuvenate_config(best.params, Path(best.checkpoint))
    best_yaml = best_cfg.model_dump(mode="json", exclude={"out", "overwrite", "resume", "ray", "tracking"})
    atomic_write_text(out / "best.yaml", yaml.safe_dump(best_yaml, sort_keys=False))
    plot_objective_vs_params(finished, list(cfg.space), out / "objective_vs_params.png")
    summary = TuneSummary(best=best, best_yaml=out / "best.yaml", best_checkpoint=Path(best.checkpoint),
                          wall_seconds=wall, trial_seconds_sum=sum(r.trial_seconds or 0.0 for r in board),
                          leaderboard=board)
    atomic_write_text(out / "summary.json", summary.to_json())
    for f in ("leaderboard.md", "leaderboard.json", "objective_vs_params.png", "best.yaml"):
        run.log_artifact(out / f)
    run.log_metrics({"best_objective": best.objective, "wall_seconds": wall})
    return summary


def _keep_best_trials(out: Path, board: list[TrialRow], keep: set[str]) -> None:
    """Delete the trial directories (checkpoint + probe) of all but `keep`; failed ones stay for their logs."""
    for r in board:
        if r.trial not in keep and r.status != "failed":
            shutil.rmtree(out / "trials" / r.trial, ignore_errors=True)
