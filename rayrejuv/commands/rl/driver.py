"""`rayrejuv rl`: validate, claim the run directory, start the actors, run the Ray Train learner
(`grpo_worker`), export the final checkpoint. Re-running with the same --out resumes."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.writer import AtomicDir, atomic_write_text
from rayrejuv.runs.cluster import cluster_address
from rayrejuv.runs.directory import RunDir, claim_run_dir


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


def _check_inputs(cfg: RLConfig) -> tuple[list[dict], list[dict]]:
    with Checkpoint(cfg.model, role="policy") as ckpt:  # refuses pickle weights, checks every tensor is there
        ckpt.check_complete()
    rows = read_jsonl(cfg.train_data, ("prompt", "answer"), "RL training data")
    if len(rows) < cfg.grpo.prompts_per_step:
        raise RejuvError(
            f"{cfg.train_data} has {len(rows)} prompts, fewer than grpo.prompts_per_step={cfg.grpo.prompts_per_step}"
        )
    eval_rows = []
    if cfg.eval_data is not None:
        eval_rows = read_jsonl(cfg.eval_data, ("prompt", "answer"), "eval data")[: cfg.eval_examples]
    return rows, eval_rows


def _check_gpus(cfg: RLConfig, resources: dict) -> None:
    """Fail at once, not with actors pending forever, when a local Ray instance has fewer GPUs than
    the run reserves (a cluster joined by address may autoscale: not checked)."""
    need, have = cfg.gpu_demand(), resources.get("GPU", 0.0)
    if cluster_address(cfg.ray.address) or need <= have + 1e-6:
        return
    reference = cfg.reference_gpus() if cfg.grpo.beta > 0 else 0.0
    raise RejuvError(
        f"the run reserves {need:g} GPUs (learner {cfg.learner.workers} x {cfg.learner.gpus_per_worker:g} with "
        f"use_gpu, rollout {cfg.rollout.workers} x {cfg.rollout.gpus_per_worker:g}, reference {reference:g}) but "
        f"this Ray instance has {have:g}: lower learner.gpus_per_worker, rollout.gpus_per_worker or "
        "rollout.reference_gpus (fractions share one GPU)"
    )


def run_rl(cfg: RLConfig, progress: bool = True, callbacks: list | None = None) -> dict:
    """`callbacks`: Ray Train UserCallbacks of the learner run (Tune's probe reporter uses one)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayrejuv.commands.rl.loop import grpo_worker
    from rayrejuv.distributed.metrics_sink import MetricsSink
    from rayrejuv.distributed.reference import ReferenceWorker
    from rayrejuv.distributed.rollout_group import RolloutGroup
    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.tracking import absolute_uri, tracked_run

    # workers run in other directories (and on other nodes: paths must be on a shared filesystem)
    cfg = cfg.model_copy(update={k: Path(getattr(cfg, k)).absolute() for k in ("model", "train_data", "out")})
    rows, eval_rows = _check_inputs(cfg)
    layout = RunLayout(Path(cfg.out).absolute())
    run_dir = claim(layout, cfg)
    state = run_dir.state
    t_start = time.perf_counter()
    with (
        ray_session(cfg.ray.address, cfg.cpu_demand()) as resources,
        tracked_run(cfg.tracking, "rl", run_id=state["run_id"]) as run,
    ):
        _check_gpus(cfg, resources)
        if state["run_id"] is None:
            run.log_params(cfg.model_dump(mode="json"))
        state["run_id"] = run.run_id
        run_dir.save()
        uri = None
        if run.run_id is not None:
            import mlflow

            uri = absolute_uri(mlflow.get_tracking_uri())
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        sink = ray.remote(MetricsSink).options(num_cpus=0, scheduling_strategy=here).remote(
            str(layout.metrics), uri, run.run_id
        )
        rollouts = RolloutGroup(str(cfg.model), cfg.rollout, cfg.seed)
        reference = None
        if cfg.grpo.beta > 0:
            reference = (
                ray.remote(ReferenceWorker)
                .options(num_cpus=1.0, num_gpus=cfg.reference_gpus(), scheduling_strategy="DEFAULT")
                .remote(str(cfg.model), cfg.rollout.device, cfg.rollout.dtype, 1, cfg.grpo.micro_batch_size)
            )
        trainer = TorchTrainer(
            grpo_worker,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "rows": rows,
                "eval_rows": eval_rows,
                "rollouts": rollouts,
                "reference": reference,
                "sink": sink,
            },
            torch_config=TorchConfig(backend="nccl" if cfg.learner.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=cfg.learner.workers,
                use_gpu=cfg.learner.use_gpu,
                resources_per_worker={"CPU": cfg.learner.cpus_per_worker}
                | ({"GPU": cfg.learner.gpus_per_worker} if cfg.learner.use_gpu else {}),
            ),
            run_config=RunConfig(
                name="grpo",
                storage_path=str(layout.storage),
                failure_config=FailureConfig(max_failures=2),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                callbacks=callbacks,
            ),
        )
        try:
            result = trainer.fit()
        finally:
            rollouts.shutdown()
        records = ray.get(sink.records.remote())
        final = export_final(result.checkpoint, layout.final)
        state["finished_steps"] = cfg.steps
        run_dir.save()
        summary = summarize(records, cfg, final, time.perf_counter() - t_start)
        atomic_write_text(layout.root / "summary.json", json.dumps(summary, indent=1))
        from rayrejuv.commands.rl.report import plot_rl_curves

        plot_rl_curves(records, layout.root / "curves.png", title=f"GRPO from {Path(cfg.model).name}")
        run.log_artifact(layout.root / "curves.png")
        run.log_artifact(layout.root / "summary.json")
        run.log_metrics({"final/" + k: v for k, v in summary["last"].items()})
    return summary


def export_final(checkpoint, target: Path) -> Path:
    """The last Ray Train checkpoint's HF model, copied atomically to --out/final."""
    with checkpoint.as_directory() as d, AtomicDir(target, overwrite=True) as out:
        shutil.copytree(Path(d) / "model", out.tmp, dirs_exist_ok=True)
        out.commit()
    return target


def summarize(records: list[dict], cfg: RLConfig, final: Path, seconds: float) -> dict:
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/pass_at_1" in r]
    last = {k: v for k, v in steps[-1].items() if k != "step"} if steps else {}
    return {
        "steps": cfg.steps,
        "final_checkpoint": str(final),
        "seconds": seconds,
        "first": {k: v for k, v in steps[0].items() if k != "step"} if steps else {},
        "last": last,
        "eval_first": evals[0] if evals else {},
        "eval_last": evals[-1] if evals else {},
        "mean_step_seconds": sum(r["time/step"] for r in steps) / max(1, len(steps)),
    }
