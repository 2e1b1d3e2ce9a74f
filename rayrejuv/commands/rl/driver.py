"""`rayrejuv rl`: GRPO on Ray. Re-running with the same --out resumes.

    check inputs, claim --out                   run.json: the config's fingerprint, MLflow run id, steps done
    start workers                               rollout actors, reference (beta > 0), metrics sink
    fit                                         Ray Train learner: `loop.grpo_worker` on every rank
    finalize                                    --out/final, summary.json (RLSummary), curves.png
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.rl.summary import RLSummary
from rayrejuv.commands.rl.workers import RLWorkers, start_workers
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
        return self.root / "ray"  # Ray Train's checkpoints: ray/grpo/checkpoint_*

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


def _check_inputs(cfg: RLConfig) -> tuple[RLConfig, list[dict], list[dict]]:
    """The config with its `auto` dtypes resolved, the training rows and the eval rows."""
    with Checkpoint(cfg.model, role="policy") as ckpt:  # refuses pickle weights, checks every tensor is there
        ckpt.check_complete()
        cfg = cfg.with_start_dtype(start_dtype(ckpt))
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


def run_rl(cfg: RLConfig, progress: bool = True, callbacks: list | None = None) -> RLSummary:
    """Start workers -> fit -> finalize. `callbacks`: Ray Train UserCallbacks of the learner run
    (Tune's probe reporter uses one)."""
    from rayrejuv.commands.rl.report import rl_line
    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.console import run_lines
    from rayrejuv.runs.tracking import tracked_run

    # workers run in other directories (and on other nodes: paths must be on a shared filesystem)
    cfg = cfg.model_copy(update={k: Path(getattr(cfg, k)).absolute() for k in ("model", "train_data", "out")})
    cfg, rows, eval_rows = _check_inputs(cfg)
    rows, eval_rows, example = _render_prompts(cfg, rows, eval_rows, progress)
    layout = RunLayout(cfg.out)
    run_dir = claim(layout, cfg)
    started = time.perf_counter()
    with (
        ray_session(cfg.ray.address, cfg.cpu_demand(), cfg.ray.log_dir(cfg.out)) as resources,
        tracked_run(cfg.tracking, "rl", run_id=run_dir.state["run_id"]) as run,
        run_lines(rl_line(cfg), progress),  # the run's live line: step, reward (its logs: OUT/logs)
    ):
        _check_gpus(cfg, resources)
        _record_run(run_dir, run, cfg, example)
        with start_workers(cfg, layout.metrics, run) as workers:
            checkpoint = fit(cfg, layout, workers, rows, eval_rows, progress, callbacks)
            records = workers.records()
        return finalize(cfg, layout, run_dir, run, checkpoint, records, started)


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


def fit(cfg: RLConfig, layout: RunLayout, workers: RLWorkers, rows: list[dict], eval_rows: list[dict],
        progress: bool, callbacks: list | None):
    """The Ray Train learner: `grpo_worker` on every rank until cfg.steps; returns its last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrejuv.commands.rl.loop import grpo_worker

    learner = cfg.learner
    trainer = TorchTrainer(
        grpo_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "rows": rows, "eval_rows": eval_rows,
                           "workers": workers, "progress": progress},
        torch_config=TorchConfig(backend="nccl" if learner.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=learner.workers, use_gpu=learner.use_gpu,
                                     resources_per_worker=cfg.learner_resources(),
                                     label_selector=workers.placement.learner_label_selector()),
        run_config=RunConfig(
            name="grpo",
            storage_path=str(layout.storage),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=callbacks,
        ),
    )
    return trainer.fit().checkpoint


def finalize(cfg: RLConfig, layout: RunLayout, run_dir: RunDir, run: Run, checkpoint, records: list[dict],
             started: float) -> RLSummary:
    """Export --out/final, mark the run finished, write summary.json and curves.png, log them."""
    from rayrejuv.commands.rl.report import plot_rl_curves

    final = export_final(checkpoint, layout.final)
    run_dir.state["finished_steps"] = cfg.steps
    run_dir.save()
    summary = RLSummary.of(records, cfg.steps, final, time.perf_counter() - started)
    atomic_write_text(layout.summary, summary.to_json())
    plot_rl_curves(records, layout.curves, title=f"GRPO from {Path(cfg.model).name}")
    run.log_artifact(layout.curves)
    run.log_artifact(layout.summary)
    run.log_metrics({"final/" + k: v for k, v in summary.last.items()})
    return summary


def export_final(checkpoint, target: Path) -> Path:
    """The last Ray Train checkpoint's HF model, copied atomically to --out/final."""
    with checkpoint.as_directory() as d, AtomicDir(target, overwrite=True) as out:
        shutil.copytree(Path(d) / "model", out.tmp, dirs_exist_ok=True)
        out.commit()
    return target
