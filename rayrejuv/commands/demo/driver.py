"""`rayrejuv demo`: the paper's ablation in miniature, on one local Ray instance (or a cluster).

    world  = build or reuse the tiny testbed (base + SFT ladder)
    diagnose(ModSFT, OverSFT)                       entropy, pass@1, pass@k, drift, verdicts
    fusion       = rejuvenate(OverSFT, fusion only)
    rejuvenation = rejuvenate(OverSFT, fusion + targeted reset)
    for start in (ModSFT, OverSFT, fusion, rejuvenation), for seed in seeds:
        GRPO(start, seed) with one recipe, then greedy pass@1 in and out of distribution
    table (mean and spread over seeds), findings, figures -> OUT; every phase an MLflow child run

Re-running with the same OUT resumes: the world, the rejuvenated checkpoints and finished RL
runs are reused; an interrupted RL run continues from its last Ray Train checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rayrejuv.commands.demo.config import DemoConfig
from rayrejuv.commands.demo.results import STARTS, aggregate, markdown
from rayrejuv.commands.diagnose.config import DiagnoseConfig
from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.io.writer import atomic_write_text
from rayrejuv.runs.directory import claim_run_dir
from rayrejuv.timing import PhaseTimer

MANIFEST = "demo.json"
RESULTS = "results.json"


def claim(out: Path, cfg: DemoConfig) -> None:
    """OUT belongs to one demo config: resume it, refuse another, or start over with overwrite."""
    run_dir = claim_run_dir(out, manifest=MANIFEST, fingerprint=cfg.fingerprint(), kind="rayrejuv demo directory",
                  replace=cfg.overwrite, replace_flag="--overwrite", key="config")
    if not run_dir.resumed:
        run_dir.save()


def run_demo(cfg: DemoConfig, progress: bool = True, log=print) -> dict:
    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.tracking import absolute_uri, tracked_run

    out = Path(cfg.out).absolute()
    claim(out, cfg)
    timer = PhaseTimer()
    t0 = time.perf_counter()
    with ray_session(cfg.ray.address, 2 * cfg.rl.concurrent), tracked_run(cfg.tracking, "demo") as parent:
        parent.log_params(cfg.model_dump(mode="json"))
        child = _child_tracking(cfg.tracking, parent.run_id, absolute_uri)

        def phase(name: str):
            log(f"[demo] {name} ...")
            return timer.phase(name)

        with phase("testbed"):
            world = build_world(cfg, out / "testbed", child, progress)
        with phase("diagnose"):
            diagnosis = diagnose_rungs(cfg, world, out / "diagnose", child, progress)
        with phase("rejuvenate"):
            starts = {"modsft": world.sft(cfg.rungs.modsft_epoch), "oversft": world.sft(cfg.rungs.oversft_epoch)}
            starts |= rejuvenate_oversft(cfg, world, out, child, progress)
        evals = EvalSets.of(cfg, world)
        with phase("evaluate before RL"):
            before = evaluate_starts(starts, evals, cfg)
        with phase("RL"):
            per_seed = run_all_rl(cfg, world, starts, evals, out / "rl", child, progress)
        results = aggregate(cfg.seed_list, before, per_seed)
        results["id_split"], results["ood_split"] = evals.id_name, evals.ood_name
        results["diagnosis"] = {r["checkpoint"]: r.get("verdict") for r in diagnosis["rows"]}
        results["timings_s"] = {k: round(v, 1) for k, v in timer.seconds.items()}
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        write_outputs(out, results, per_seed, evals)
        parent.log_metrics(_flat_metrics(results))
        for name in (RESULTS, "table.md", "pass_at_1.png", "rewards.png"):
            parent.log_artifact(out / name)
    results["out"] = str(out)
    return results


def _child_tracking(tracking: TrackingConfig, parent_run_id: str | None, absolute_uri) -> TrackingConfig:
    """Phases log to child runs of the demo's run; workers in other directories need an absolute URI."""
    if parent_run_id is None:
        return tracking
    import mlflow

    return tracking.model_copy(update={"parent_run_id": parent_run_id, "uri": absolute_uri(mlflow.get_tracking_uri())})


def build_world(cfg: DemoConfig, directory: Path, tracking: TrackingConfig, progress: bool):
    from rayrejuv.commands.testbed.driver import WorldLayout, build_testbed

    w = cfg.world
    world_cfg = TinyWorldConfig(out=directory, seed=w.seed, model=w.model, data=w.data, train=w.train,
                                tracking=tracking.model_copy(update={"run_name": "testbed"}))
    build_testbed(world_cfg, progress=progress)
    return WorldLayout(directory)


def diagnose_rungs(cfg: DemoConfig, world, directory: Path, tracking: TrackingConfig, progress: bool) -> dict:
    from rayrejuv.commands.diagnose.driver import diagnose

    if (directory / "diagnose.json").is_file():
        return json.loads((directory / "diagnose.json").read_text())
    dcfg = DiagnoseConfig(
        base=world.base,
        sft=[world.sft(cfg.rungs.modsft_epoch), world.sft(cfg.rungs.oversft_epoch)],
        data=world.data("eval_id"),
        out=directory,
        max_examples=cfg.eval.examples,
        k=cfg.eval.diagnose_k,
        max_new_tokens=cfg.eval.max_new_tokens,
        tracking=tracking.model_copy(update={"run_name": "diagnose"}),
    )
    return diagnose(dcfg, progress=progress)


def rejuvenate_oversft(cfg: DemoConfig, world, out: Path, tracking: TrackingConfig, progress: bool) -> dict:
    """OverSFT fused with the base (fusion only), and fused + targeted reset (Rejuvenation)."""
    from rayrejuv.commands.rejuvenate.driver import rejuvenate

    r = cfg.rejuvenation
    made = {}
    for start, fusion_only in (("oversft_fusion", True), ("oversft_rejuvenation", False)):
        target = out / start
        made[start] = target
        if (target / "config.json").is_file():  # an atomic output: present means complete
            continue
        rejuvenate(
            RejuvenateConfig(
                base=world.base,
                sft=world.sft(cfg.rungs.oversft_epoch),
                out=target,
                alpha=r.alpha,
                reset_ratio=r.reset_ratio,
                omega=r.omega,
                tokens_per_example=r.tokens_per_example,
                calibration=world.data("calibration"),
                fusion_only=fusion_only,
                ray=cfg.ray,
                tracking=tracking.model_copy(update={"run_name": start}),
            ),
            progress=progress,
        )
    return made


class EvalSets:
    """In distribution = held-out prompts of the distribution RL trains on; out of distribution =
    `eval_general`, held-out problems of the base's own Q/A distribution, which SFT and RL never
    show (what over-training makes the model forget). Entropy: teacher-forced on the SFT (eval_id)
    responses, the distribution over-training collapses."""

    def __init__(self, id_name: str, id_rows: list[dict], ood_rows: list[dict], entropy_rows: list[dict]):
        self.id_name, self.ood_name = id_name, "general"
        self.id_rows, self.ood_rows, self.entropy_rows = id_rows, ood_rows, entropy_rows

    @classmethod
    def of(cls, cfg: DemoConfig, world) -> EvalSets:
        from rayrejuv.data.jsonl import read_jsonl

        id_name = f"eval_{cfg.world.data.rl_distribution}"  # every RL distribution has its held-out eval
        n = cfg.eval.examples

        def rows(name: str) -> list[dict]:
            return read_jsonl(world.data(name), ("prompt", "answer", "response"), name)[:n]

        return cls(id_name.removeprefix("eval_"), rows(id_name), rows("eval_general"), rows("eval_id"))

    def splits(self) -> dict[str, list[dict]]:
        return {"id": self.id_rows, "ood": self.ood_rows}


def _score(model_dir: str, evals: EvalSets, max_new_tokens: int) -> dict[str, float]:
    import torch

    from rayrejuv.models.evaluate import score_checkpoint

    torch.set_num_threads(1)  # one core per task: tasks run side by side
    return score_checkpoint(model_dir, evals.splits(), evals.entropy_rows, max_new_tokens)


def evaluate_starts(starts: dict[str, Path], evals: EvalSets, cfg: DemoConfig) -> dict[str, dict]:
    """Greedy pass@1 (ID, OOD) and entropy of every start, as parallel Ray tasks."""
    import ray

    task = ray.remote(num_cpus=1)(_score)
    refs = {s: task.remote(str(p), evals, cfg.eval.max_new_tokens) for s, p in starts.items()}
    scores = {s: ray.get(r) for s, r in refs.items()}
    return {
        s: {"id_before": v["id"], "ood_before": v["ood"], "entropy_before": v["entropy"]} for s, v in scores.items()
    }


def rl_config(cfg: DemoConfig, world, model: Path, seed: int, out: Path, tracking: TrackingConfig, name: str):
    from rayrejuv.commands.rl.config import RLConfig

    r = cfg.rl
    return RLConfig(
        model=model,
        train_data=world.data("rl_train"),
        out=out,
        steps=r.steps,
        seed=seed,
        eval_every=0,  # the demo scores the final checkpoint itself, on both splits
        checkpoint_every=max(1, r.steps // 2),
        keep_checkpoints=1,
        grpo={
            "prompts_per_step": r.prompts_per_step,
            "group_size": r.group_size,
            "lr": r.lr,
            "beta": r.beta,
            "temperature": r.temperature,
            "max_new_tokens": r.max_new_tokens,
            "micro_batch_size": r.prompts_per_step * r.group_size,
        },
        rollout=r.rollout,
        learner=r.learner,
        ray=cfg.ray,
        tracking=tracking.model_copy(update={"run_name": name}),
    )


def _rl_and_score(rl_json: dict, evals: EvalSets, max_new_tokens: int) -> dict:
    """One GRPO run (resumed, or reused when finished), then its final checkpoint's scores."""
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import RunLayout, run_rl

    rcfg = RLConfig.model_validate(rl_json)
    layout = RunLayout(Path(rcfg.out))
    summary_file = layout.root / "summary.json"
    finished = layout.state.is_file() and json.loads(layout.state.read_text())["finished_steps"] >= rcfg.steps
    summary = json.loads(summary_file.read_text()) if finished and summary_file.is_file() else run_rl(rcfg, False)
    scores = _score(summary["final_checkpoint"], evals, max_new_tokens)
    rewards = [json.loads(line) for line in layout.metrics.read_text().splitlines()]
    return {
        "seed": rcfg.seed,
        "id_after": scores["id"],
        "ood_after": scores["ood"],
        "entropy_after": scores["entropy"],
        "reward_first": summary["first"]["reward/mean"],
        "reward_last": summary["last"]["reward/mean"],
        "zero_std_fraction_first": summary["first"]["reward/zero_std_fraction"],
        "rl_seconds": summary["seconds"],
        "rewards": [r["reward/mean"] for r in rewards if "reward/mean" in r],
        "zero_std_fractions": [r["reward/zero_std_fraction"] for r in rewards if "reward/mean" in r],
        "run_dir": str(layout.root),
    }


def run_all_rl(cfg: DemoConfig, world, starts: dict[str, Path], evals: EvalSets, directory: Path,
               tracking: TrackingConfig, progress: bool) -> dict[str, list[dict]]:
    """Every (start, seed) GRPO run, `rl.concurrent` at a time, each a Ray task that drives its
    own Ray Train learner; results come back sorted by seed."""
    import ray
    from tqdm.auto import tqdm


    task = ray.remote(num_cpus=0)(_rl_and_score)  # a driver: its actors and learner hold the CPUs
    # never more runs than the cluster holds at once: two half-started runs could each hold the CPU
    # the other's learner waits for (a deadlock)
    demand = (rl_config(cfg, world, starts["modsft"], cfg.seed, directory, tracking, "probe")).cpu_demand()
    concurrent = max(1, min(cfg.rl.concurrent, int(ray.cluster_resources().get("CPU", 0) // demand)))
    todo = [
        (start, seed)
        for seed in cfg.seed_list
        for start in STARTS  # seed-major: an interrupted demo has every start at the same seeds
    ]
    running: dict = {}
    done: dict[str, list[dict]] = {s: [] for s in STARTS}
    bar = tqdm(total=len(todo), desc="RL runs", unit="run", disable=not progress)
    while todo or running:
        while todo and len(running) < concurrent:
            start, seed = todo.pop(0)
            rcfg = rl_config(cfg, world, starts[start], seed, directory / start / f"seed-{seed}", tracking,
                             f"rl:{start}:seed-{seed}")
            running[task.remote(rcfg.model_dump(mode="json"), evals, cfg.eval.max_new_tokens)] = start
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            done[running.pop(ref)].append(ray.get(ref))
            bar.update(1)
    bar.close()
    return {s: sorted(runs, key=lambda r: r["seed"]) for s, runs in done.items()}


def write_outputs(out: Path, results: dict, per_seed: dict[str, list[dict]], evals: EvalSets) -> None:
    from rayrejuv.commands.demo.report import plot_demo_pass_at_1, plot_demo_rewards

    atomic_write_text(out / RESULTS, json.dumps(results, indent=1))
    atomic_write_text(out / "table.md", markdown(results))
    plot_demo_pass_at_1(results, out / "pass_at_1.png")
    plot_demo_rewards(per_seed, out / "rewards.png")


def _flat_metrics(results: dict) -> dict[str, float]:
    metrics = {}
    for start, row in results["rows"].items():
        for k in ("id_before", "id_after", "ood_before", "ood_after", "entropy_before", "id_gain", "ood_gain"):
            metrics[f"{start}.{k}"] = row[k]
    metrics |= {f"time.{k}": v for k, v in results["timings_s"].items()}
    return metrics
