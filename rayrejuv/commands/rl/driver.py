"""`rayrejuv rl`: GRPO on Ray. Re-running with the same --out resumes.

    check inputs, claim --out                   run.json: the config's fingerprint, MLflow run id, steps done
    start workers                               rollout actors, reference (beta > 0), metrics sink
    fit                                         Ray Train learner: `loop.grpo_run` on every rank, on a pool
                                                of one run (or on a running pool: the demo's, Tune's)
    finalize                                    --out/final, summary.json (RLSummary), curves.png
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.rl.pool import pool_key, run_alone, run_on
from rayrejuv.commands.rl.summary import RLSummary
from rayrejuv.commands.rl.workers import RLWorkers, RunJob, start_workers
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.writer import AtomicDir, atomic_write_text
from rayrejuv.runs.cluster import cluster_address
from rayrejuv.runs.directory import RunDir, claim_run_dir
from rayrejuv.runs.tracking import Run


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def storage(self) -> Path:
        return self.root / "ray"  # checkpoints: ray/grpo/checkpoint_* (loop.save_checkpoint); Ray Train's state

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"  # RLSummary.to_json()

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def records(self) -> list[dict]:
        """metrics.jsonl: one {"step", metric: value} record per step (and per evaluation)."""
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line]


def claim(layout: RunLayout, cfg: RLConfig) -> RunDir:
    """The run's directory: new, or resumed from an interrupted/shorter run with the same settings."""
    run_dir = claim_run_dir(
        layout.root, manifest=layout.state.name, fingerprint=cfg.fingerprint(), kind="rayrejuv rl run",
        replace=cfg.overwrite, replace_flag="--overwrite", initial={"run_id": None, "finished_steps": 0},
    )
    if run_dir.resumed and run_dir.state["finished_steps"] >= cfg.steps:
        raise RejuvError(
            f"--out {layout.root} already finished {run_dir.state['finished_steps']} steps (final checkpoint: "
            f"{layout.final}); raise --steps to continue it, pass --overwrite to start again, or choose a new --out"
        )
    return run_dir


def start_dtype(ckpt: Checkpoint) -> str:
    """The starting checkpoint's dtype (its embedding's; float32 for any other float)."""
    name = str(ckpt.meta(ckpt.spec.embed).dtype).removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def resolve_dtypes(cfg: RLConfig) -> RLConfig:
    """The config with its `auto` dtypes resolved to the start's (what its workers are made with)."""
    with Checkpoint(cfg.model, role="policy") as ckpt:  # refuses pickle weights, checks every tensor is there
        ckpt.check_complete()
        return cfg.with_start_dtype(start_dtype(ckpt))


def _check_inputs(cfg: RLConfig) -> tuple[RLConfig, list[dict], list[dict]]:
    """The config with its `auto` dtypes resolved, the training rows and the eval rows."""
    cfg = resolve_dtypes(cfg)
    rows = read_jsonl(cfg.train_data, ("prompt", "answer"), "RL training data")
    if len(rows) < cfg.grpo.prompts_per_step:
        raise RejuvError(
            f"{cfg.train_data} has {len(rows)} prompts, fewer than grpo.prompts_per_step={cfg.grpo.prompts_per_step}"
        )
    eval_rows = []
    if cfg.eval_data is not None:
        eval_rows = read_jsonl(cfg.eval_data, ("prompt", "answer"), "eval data")[: cfg.eval_examples]
    return cfg, rows, eval_rows


def _check_gpus(cfg: RLConfig, resources: dict) -> None:
    """Fail at once, not with actors pending forever, when a local Ray instance has fewer GPUs than
    the run reserves (a cluster joined by address may autoscale: not checked)."""
    need, have = cfg.gpu_demand(), resources.get("GPU", 0.0)
    if cluster_address(cfg.ray.address) or need <= have + 1e-6:
        return
    if cfg.colocated_gpus():
        raise RejuvError(f"placement=colocated shares {need:g} GPUs (one per learner worker) but this Ray instance "
                         f"has {have:g}: lower learner.workers and rollout.workers to {have:g}")
    reference = cfg.reference_gpus() if cfg.grpo.beta > 0 else 0.0
    raise RejuvError(
        f"the run reserves {need:g} GPUs (learner {cfg.learner.workers} x {cfg.learner.gpus_per_worker:g} with "
        f"use_gpu, rollout {cfg.rollout.workers} x {cfg.rollout.gpus_per_worker:g}, reference {reference:g}) but "
        f"this Ray instance has {have:g}: lower learner.gpus_per_worker, rollout.gpus_per_worker or "
        "rollout.reference_gpus (fractions share one GPU)"
    )


def run_rl(cfg: RLConfig, progress: bool = True, on_report: Callable[[dict], None] | None = None,
           pool=None, owner: str | None = None) -> RLSummary:
    """Start workers -> fit -> finalize. `pool`: the RunQueue of running worker pools to run on
    instead (commands/rl/pool.py; `owner` can cancel it there); `on_report`: gets each checkpoint
    step's metrics (Tune's probe reporter)."""
    from rayrejuv.commands.rl.report import rl_line
    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.console import run_lines
    from rayrejuv.runs.tracking import tracked_run

    entered = time.time()  # time/run_start counts from here
    # workers run in other directories (and on other nodes: paths must be on a shared filesystem)
    cfg = cfg.model_copy(update={k: Path(getattr(cfg, k)).absolute() for k in ("model", "train_data", "out")})
    cfg, rows, eval_rows = _check_inputs(cfg)
    rows, eval_rows, example = _render_prompts(cfg, rows, eval_rows, progress)
    layout = RunLayout(cfg.out)
    run_dir = claim(layout, cfg)
    run_dir.save()  # before Ray starts (OUT/logs comes next): a failed start leaves a run to resume, not a stray dir
    started = time.perf_counter()
    with (
        ray_session(cfg.ray.address, cfg.cpu_demand(), cfg.ray.log_dir(cfg.out)) as resources,
        tracked_run(cfg.tracking, "rl", run_id=run_dir.state["run_id"]) as run,
        run_lines(rl_line(cfg), progress),  # the run's live line: step, reward (its logs: OUT/logs)
    ):
        _check_gpus(cfg, resources)
        _record_run(run_dir, run, cfg, example)
        job = RunJob(cfg.model_dump(mode="json"), rows, eval_rows, str(layout.metrics), run.tracking_uri, run.run_id,
                     pool_key(cfg), progress, prepared=time.time() - entered, submitted=time.time())
        if pool is None:
            with start_workers(cfg) as workers:
                checkpoint = fit(cfg, layout, workers, job, on_report)
        else:
            checkpoint = run_on(pool, job, on_report, owner)
        return finalize(cfg, layout, run_dir, run, checkpoint, layout.records(), started)


def _render_prompts(cfg: RLConfig, rows: list[dict], eval_rows: list[dict], show: bool):
    """Every row with `prompt_ids`, its prompt as the policy sees it (rayrejuv.data.chat), rendered
    once here before Ray starts (a template problem fails at once); and the first one as text."""
    from rayrejuv.data.chat import encode_prompt, print_rendered, rendered_text
    from rayrejuv.models.loading import load_tokenizer

    tok, mode = load_tokenizer(Checkpoint(cfg.model, role="policy")), cfg.chat_template

    def encoded(rs: list[dict]) -> list[dict]:
        return [r | {"prompt_ids": encode_prompt(tok, r["prompt"], mode)} for r in rs]

    rows, eval_rows = encoded(rows), encoded(eval_rows)
    example = rendered_text(tok, {"prompt": rows[0]["prompt"]}, mode)
    if show:
        print_rendered(example, mode, "RL training")
    return rows, eval_rows, example


def _record_run(run_dir: RunDir, run: Run, cfg: RLConfig, example: str) -> None:
    """A new run logs its config and what the model sees (its first prompt, rendered); a resumed
    one continues its MLflow run (the id is in run.json)."""
    if run_dir.state["run_id"] is None:
        run.log_params(cfg.model_dump(mode="json") | {"rendered_prompt": example})
    run_dir.state["run_id"] = run.run_id
    run_dir.save()


def fit(cfg: RLConfig, layout: RunLayout, workers: RLWorkers, job: RunJob,
        on_report: Callable[[dict], None] | None) -> Path:
    """The Ray Train learner of this run alone: a pool of one run on `workers` (`loop.grpo_run` on
    every rank until cfg.steps); returns its last checkpoint."""
    return run_alone(cfg, layout.storage, job, on_report, workers)


def finalize(cfg: RLConfig, layout: RunLayout, run_dir: RunDir, run: Run, checkpoint: Path, records: list[dict],
             started: float) -> RLSummary:
    """Export --out/final, mark the run finished, write summary.json and curves.png, log them."""
    from rayrejuv.commands.rl.report import plot_rl_curves

    final = export_final(checkpoint, layout.final)
    run_dir.state["finished_steps"] = cfg.steps  # complete: also a run its token budget ended sooner
    run_dir.save()
    steps = max((r["step"] for r in records if "reward/mean" in r), default=cfg.steps)
    summary = RLSummary.of(records, steps, final, time.perf_counter() - started)
    atomic_write_text(layout.summary, summary.to_json())
    plot_rl_curves(records, layout.curves, title=f"GRPO from {Path(cfg.model).name}")
    run.log_artifact(layout.curves)
    run.log_artifact(layout.summary)
    run.log_metrics({"final/" + k: v for k, v in summary.last.items()})
    return summary


def export_final(checkpoint: Path, target: Path) -> Path:
    """The last checkpoint's HF model, copied atomically to --out/final."""
    with AtomicDir(target, overwrite=True) as out:
        shutil.copytree(Path(checkpoint) / "model", out.tmp, dirs_exist_ok=True)
        out.commit()
    return target
