"""`rayrejuv tune`: Ray Tune over rejuvenation hyperparameters, each trial scored by a short GRPO probe.

    trial(alpha, rho, omega, N, selection):
        rejuvenate(base, sft)                    in the trial process
        probe = rl(rejuvenated, M steps)         Ray Train learner + rollout actors; reports -> ASHA
        evaluate ID (and OOD) greedy pass@1
        report objective                         probe reward (end or area) or eval pass@1

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

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.tune.config import Range, TuneConfig
from rayrejuv.config.base import merge_overrides
from rayrejuv.errors import RejuvError
from rayrejuv.io.writer import atomic_write_text

INTERMEDIATE = {"probe_reward_end": "probe/reward_recent", "probe_reward_auc": "probe/reward_auc",
                "eval_pass_at_1": "probe/reward_auc"}  # what ASHA compares before the final report


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


def rejuvenate_config(cfg: TuneConfig, params: dict, out: Path) -> RejuvenateConfig:
    """The trial's rejuvenation: the search's fixed fields + the sampled hyperparameters."""
    return RejuvenateConfig.model_validate(
        {**cfg.fixed, "base": cfg.base, "sft": cfg.sft, "calibration": cfg.calibration, **params, "out": out,
         "overwrite": True, "ray": {"enabled": False}, "tracking": {"enabled": False}}
    )


def probe_config(cfg: TuneConfig, model: Path, out: Path) -> RLConfig:
    fixed = {"model": model, "train_data": cfg.train_data, "eval_data": None, "out": out,
             "steps": cfg.probe.steps, "checkpoint_every": cfg.probe.report_every, "keep_checkpoints": 1,
             "eval_every": 0, "seed": cfg.seed, "overwrite": True, "tracking": {"enabled": False}}
    return RLConfig.model_validate(merge_overrides(cfg.probe.rl, fixed))


def objective_of(cfg: TuneConfig, probe: dict, evals: dict) -> float:
    if cfg.objective == "probe_reward_end":
        return probe["probe/reward_recent"]
    if cfg.objective == "probe_reward_auc":
        return probe["probe/reward_auc"]
    ood = evals.get("eval/ood_pass_at_1", 0.0)
    return (1 - cfg.ood_weight) * evals["eval/id_pass_at_1"] + cfg.ood_weight * ood


def _greedy_pass_at_1(model_dir: Path, data: Path, n: int, max_new_tokens: int) -> float:
    import torch

    from rayrejuv.data.jsonl import read_jsonl
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.evaluate import greedy_pass_at_1
    from rayrejuv.models.loading import load_model, load_tokenizer

    rows = read_jsonl(data, ("prompt", "answer"), "eval data")[:n]
    ckpt = Checkpoint(model_dir, role="probed")
    model, tok = load_model(ckpt, torch.float32, torch.device("cpu")), load_tokenizer(ckpt)
    return greedy_pass_at_1(model, tok, rows, max_new_tokens, batch_size=32)


def _probe_reporter(key: str, started: float):
    """Forward the probe learner's checkpoint-step reports to Tune, with the objective ASHA ranks by
    and the trial's run time so far (a trial ASHA stops never makes its final report)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ProbeReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], "objective": metrics[0][key], "time/trial": time.time() - started}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return ProbeReport()


def run_trial(params: dict, cfg_json: dict, parent_run_id: str | None, tracking_uri: str | None) -> None:
    """The Tune function trainable."""
    from ray import tune

    from rayrejuv.commands.rejuvenate.driver import rejuvenate
    from rayrejuv.commands.rl.driver import run_rl

    cfg = TuneConfig.model_validate(cfg_json)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(cfg.out).absolute() / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / "attempts.log", "a") as f:  # one line per start: retries and resumes are visible
        f.write(f"{time.time()}\n")
    child = _child_run(cfg, parent_run_id, tracking_uri, trial_id, params)
    started, t0 = time.time(), time.perf_counter()
    try:
        rcfg = rejuvenate_config(cfg, params, trial_dir / "rejuvenated")
        report = rejuvenate(rcfg, progress=False)
        t_rejuv = time.perf_counter() - t0
        probe_cfg = probe_config(cfg, rcfg.out, trial_dir / "probe")
        summary = run_rl(probe_cfg, progress=False, callbacks=[_probe_reporter(INTERMEDIATE[cfg.objective], started)])
        final_model = Path(summary["final_checkpoint"])
        evals = {"eval/id_pass_at_1": _greedy_pass_at_1(final_model, cfg.eval_data, cfg.eval_examples,
                                                         probe_cfg.grpo.max_new_tokens)}
        if cfg.ood_data is not None:
            evals["eval/ood_pass_at_1"] = _greedy_pass_at_1(final_model, cfg.ood_data, cfg.eval_examples,
                                                            probe_cfg.grpo.max_new_tokens)
        last = summary["last"]
        result = {
            "objective": objective_of(cfg, last, evals),
            **evals,
            "probe/reward_auc": last["probe/reward_auc"],
            "probe/reward_recent": last["probe/reward_recent"],
            "probe/reward_first": summary["first"]["reward/mean"],
            "reset_count": report["reset_count"],
            "time/rejuvenate": t_rejuv,
            "time/trial": time.perf_counter() - t0,
            "checkpoint": str(rcfg.out),
        }
        _log_child(child, result, trial_dir / "probe" / "metrics.jsonl")
        tune.report(result)
        atomic_write_text(trial_dir / "result.json", json.dumps(result))
    except BaseException:
        _end_child(child, "FAILED")
        raise
    _end_child(child, "FINISHED")


def _child_run(cfg, parent_run_id, uri, trial_id, params):
    if parent_run_id is None:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    run = client.create_run(exp, run_name=f"trial-{trial_id}", tags={"mlflow.parentRunId": parent_run_id})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    return client, run.info.run_id


def _log_child(child, result: dict, curve: Path) -> None:
    if child is None:
        return
    client, run_id = child
    for k, v in result.items():
        if isinstance(v, int | float):
            client.log_metric(run_id, k.replace("/", "_"), float(v))
    for line in curve.read_text().splitlines():
        r = json.loads(line)
        if "reward/mean" in r:
            client.log_metric(run_id, "probe_reward", r["reward/mean"], step=r["step"])


def _end_child(child, status: str) -> None:
    if child is not None:
        child[0].set_terminated(child[1], status=status)


def run_tune(cfg: TuneConfig, progress: bool = True) -> dict:

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.tracking import absolute_uri, tracked_run

    cfg = cfg.model_copy(update={k: Path(getattr(cfg, k)).absolute() for k in
                                 ("base", "sft", "calibration", "train_data", "eval_data", "out")})
    if cfg.ood_data is not None:
        cfg = cfg.model_copy(update={"ood_data": Path(cfg.ood_data).absolute()})
    out = Path(cfg.out)
    storage, name = out / "ray", "search"
    state_file = out / "search.json"
    if out.exists() and not cfg.resume and any(out.iterdir()):
        raise RejuvError(f"--out {out} already holds a search; pass --resume to continue it, or choose a new --out")
    state = json.loads(state_file.read_text()) if (cfg.resume and state_file.exists()) else {"run_id": None}
    out.mkdir(parents=True, exist_ok=True)
    probe = probe_config(cfg, cfg.sft, out / "unused")
    per_trial = cfg.cpus_per_trial + probe.cpu_demand()
    # one trial's worth of headroom: the learner placement group of a trial that ASHA stopped is
    # freed by Ray Train's cleaner actor a little later (measured: a next trial can time out on it)
    demand = per_trial * (cfg.max_concurrent + 1)
    t0 = time.perf_counter()
    with ray_session(cfg.ray.address, demand), tracked_run(
        cfg.tracking, "tune", run_id=state["run_id"]
    ) as run:
        if state["run_id"] is None:
            run.log_params(cfg.model_dump(mode="json"))
        state["run_id"] = run.run_id
        atomic_write_text(state_file, json.dumps(state))
        uri = None
        if run.run_id is not None:
            import mlflow

            uri = absolute_uri(mlflow.get_tracking_uri())
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, cfg_json=cfg.model_dump(mode="json"), parent_run_id=run.run_id,
                                 tracking_uri=uri),
            {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        reports = cfg.probe.steps // cfg.probe.report_every + 1
        scheduler = (
            ASHAScheduler(max_t=reports, grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
            if cfg.asha else FIFOScheduler()
        )
        run_config = tune.RunConfig(
            name=name, storage_path=str(storage), failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=1 if progress else 0,
        )
        path = str(storage / name)
        if cfg.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(cfg.space),
                tune_config=tune.TuneConfig(
                    metric="objective", mode="max", search_alg=SEARCH_ALGS[cfg.search_alg](cfg),
                    scheduler=scheduler, num_samples=cfg.num_samples,  # the search algs limit concurrency
                ),
                run_config=run_config,
            )
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        board = leaderboard(grid, cfg)
        best = _finish(cfg, board, run, wall)
    return best


def leaderboard(grid, cfg: TuneConfig) -> list[dict]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        done = "checkpoint" in m
        rows.append({
            "trial": m.get("trial_id") or Path(r.path).name,
            **{k: r.config.get(k) for k in cfg.space},
            "status": "failed" if r.error else ("finished" if done else "stopped early"),
            "objective": m.get("objective") if done else None,
            "probe_reward_auc": m.get("probe/reward_auc"),
            "id_pass_at_1": m.get("eval/id_pass_at_1"),
            "ood_pass_at_1": m.get("eval/ood_pass_at_1"),
            "reports": m.get("training_iteration"),
            "trial_seconds": m.get("time/trial"),
            "checkpoint": m.get("checkpoint"),
        })
    return sorted(rows, key=lambda r: (r["objective"] is None, -(r["objective"] or 0.0)))


def _close_stopped_runs(parent_run_id: str | None) -> None:
    """Trials ASHA stopped were killed mid-run: their nested MLflow runs would stay RUNNING."""
    if parent_run_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    for r in client.search_runs([exp], filter_string=query):
        client.set_terminated(r.info.run_id, status="KILLED")


def _finish(cfg: TuneConfig, board: list[dict], run, wall: float) -> dict:
    from rayrejuv.commands.tune.report import plot_objective_vs_params

    _close_stopped_runs(run.run_id)
    out = Path(cfg.out)
    finished = [r for r in board if r["objective"] is not None]
    if not finished:
        raise RejuvError(f"no trial finished (see {out / 'leaderboard.md'}); check the trial errors under {out}/ray")
    keep = {r["trial"] for r in finished[: cfg.keep_best]}
    for r in board:  # trial directories (checkpoint + probe) of all but the best K; failed ones kept for their logs
        if r["trial"] not in keep and r["status"] != "failed":
            shutil.rmtree(out / "trials" / r["trial"], ignore_errors=True)
    best = finished[0]
    params = {k: best[k] for k in cfg.space}
    best_cfg = rejuvenate_config(cfg, params, Path(best["checkpoint"]))
    best_yaml = best_cfg.model_dump(mode="json", exclude={"out", "overwrite", "resume", "ray", "tracking"})
    atomic_write_text(out / "best.yaml", yaml.safe_dump(best_yaml, sort_keys=False))
    cols = ["trial", *cfg.space, "status", "objective", "probe_reward_auc", "id_pass_at_1", "ood_pass_at_1",
            "reports", "trial_seconds"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in board]
    atomic_write_text(out / "leaderboard.md", "\n".join(md) + "\n")
    atomic_write_text(out / "leaderboard.json", json.dumps(board, indent=1))
    plot_objective_vs_params(finished, list(cfg.space), out / "objective_vs_params.png")
    trial_sum = sum(r["trial_seconds"] or 0.0 for r in board)
    summary = {"best": best, "best_yaml": str(out / "best.yaml"), "best_checkpoint": best["checkpoint"],
               "wall_seconds": wall, "trial_seconds_sum": trial_sum, "leaderboard": board}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    for f in ("leaderboard.md", "leaderboard.json", "objective_vs_params.png", "best.yaml"):
        run.log_artifact(out / f)
    run.log_metrics({"best_objective": best["objective"], "wall_seconds": wall})
    return summary


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)
