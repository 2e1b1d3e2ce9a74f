"""`rayrejuv demo`: the paper's ablation in miniature, on one local Ray instance (or a cluster).

    world  = build or reuse the tiny testbed (base + SFT ladder)
    fusion       = rejuvenate(OverSFT, fusion only)
    rejuvenation = rejuvenate(OverSFT, fusion + targeted reset)
    start the RL worker pools                       they get ready while the next two phases run
    diagnose(ModSFT, OverSFT)                       entropy, pass@1, pass@k, drift, verdicts
    score the four starts                           pass@1 in and out of distribution, entropy
    for start in (ModSFT, OverSFT, fusion, rejuvenation), for seed in seeds:
        GRPO(start, seed) with one recipe, then greedy pass@1 in and out of distribution
    table (mean and spread over seeds), findings, figures -> OUT; every phase an MLflow child run

Re-running with the same OUT resumes: the world, the rejuvenated checkpoints, finished RL runs and
every checkpoint's scores (OUT/scores/, rl/<row>/seed-<s>/scores.json; keyed by the weights and the
eval sets) are reused; an interrupted RL run continues from its last Ray Train checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rayrejuv.commands.demo.baselines import REFERENCE, REMEDIES, BaselineTable, compare, token_budget
from rayrejuv.commands.demo.baselines import markdown as baselines_markdown
from rayrejuv.commands.demo.config import DemoConfig
from rayrejuv.commands.demo.report import rl_lines
from rayrejuv.commands.demo.results import LABELS, STARTS, DemoResults, SeedRun, StartScores, aggregate, markdown
from rayrejuv.commands.diagnose.config import DiagnoseConfig
from rayrejuv.commands.diagnose.results import Diagnosis
from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.config.prompts import ChatTemplate
from rayrejuv.config.rl import GRPOConfig
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.io.writer import atomic_write_text, file_sha256
from rayrejuv.runs.cluster import ray_session
from rayrejuv.runs.console import run_lines
from rayrejuv.runs.directory import claim_run_dir
from rayrejuv.runs.tracking import Run, tracked_run
from rayrejuv.timing import PhaseTimer

MANIFEST = "demo.json"
RESULTS = "results.json"


def claim(out: Path, cfg: DemoConfig) -> None:
    """OUT belongs to one demo config: resume it, refuse another, or start over with overwrite."""
    run_dir = claim_run_dir(out, manifest=MANIFEST, fingerprint=cfg.fingerprint(), kind="rayrejuv demo directory",
                            replace=cfg.overwrite, replace_flag="--overwrite", key="config")
    if not run_dir.resumed:
        run_dir.save()


def run_demo(cfg: DemoConfig, progress: bool = True, log=print) -> DemoResults:
    from rayrejuv.commands.testbed.driver import WorldLayout

    out = Path(cfg.out).absolute()
    claim(out, cfg)
    world = WorldLayout(out / "testbed")
    timer, t0 = PhaseTimer(), time.perf_counter()
    phase = _announced(timer, log)
    cpu_demand = rl_cpu_demand(cfg, world) * cfg.rl.concurrent  # the RL runs side by side hold the most
    logs = cfg.ray.log_dir(out)  # Ray's and the workers' logs (None: on the terminal, --verbose)
    with ray_session(cfg.ray.address, cpu_demand, logs), tracked_run(cfg.tracking, "demo") as parent:
        parent.log_params(cfg.model_dump(mode="json"))
        with phase("testbed"):
            build_world(cfg, world, parent.child(cfg.tracking, "testbed"), progress, log)
        with phase("rejuvenate"):
            starts = {"modsft": world.sft(cfg.rungs.modsft_epoch), "oversft": world.sft(cfg.rungs.oversft_epoch)}
            starts |= rejuvenate_oversft(cfg, world, out, parent, progress)
        evals = EvalSets.of(cfg, world)
        specs = [RunSpec(start, starts[start], seed, cfg.rl.grpo) for seed in cfg.seed_list for start in STARTS]
        # the RL workers start now (they hold the CPUs the rejuvenation's actors needed) and get ready
        # while the diagnosis and the evaluation run
        with rl_runner(cfg, world, evals, out / "rl", parent, specs[0]) as runner:
            with phase("diagnose"):
                diagnosis = diagnose_rungs(cfg, world, out / "diagnose", parent.child(cfg.tracking, "diagnose"),
                                           progress)
            with phase("evaluate before RL"):
                before = runner.score_starts(starts, out / "scores")
            with phase("RL"), run_lines(rl_lines(out / "rl", specs, LABELS, cfg.rl.steps), progress):
                per_seed = runner.run(specs)  # the lines show the runs
            remedies = None
            if cfg.baselines:
                with phase("baselines"):
                    remedies = run_baselines(cfg, runner, starts["oversft"], per_seed, out, progress)
        table = aggregate(cfg.seed_list, before, per_seed, evals.id_name, evals.ood_name, len(evals.id_rows))
        results = DemoResults(table, diagnosis.verdicts(), timings_s={k: round(v, 1) for k, v in timer.seconds.items()},
                              wall_s=round(time.perf_counter() - t0, 1), out=str(out), baselines=remedies)
        publish(results, parent)
    return results


def _announced(timer: PhaseTimer, log):
    """timer.phase, with a line on the terminal as each phase starts and one with its time as it ends."""

    @contextmanager
    def phase(name: str):
        log(f"[demo] {name} ...")
        with timer.phase(name):
            yield
        log(f"[demo] {name}: {timer.seconds[name]:.0f}s")

    return phase


def build_world(cfg: DemoConfig, world, tracking: TrackingConfig, progress: bool, log=print) -> None:
    """OUT/testbed: kept when there, else copied from the user's world cache (world_cache), else built
    (and then cached)."""
    from rayrejuv.commands.testbed.cache import restore_world, store_world
    from rayrejuv.commands.testbed.driver import build_testbed

    tcfg = TinyWorldConfig(**cfg.world.model_dump(), out=world.root, tracking=tracking)
    if cfg.world_cache and (source := restore_world(tcfg)) is not None:
        log(f"[demo] world copied from the cache {source} (world_cache: false builds it)")
        with tracked_run(tracking, "testbed") as run:
            run.log_params(tcfg.model_dump(mode="json") | {"restored_from": str(source)})
        return
    build_testbed(tcfg, progress=progress)
    if cfg.world_cache:
        store_world(tcfg)


def diagnose_rungs(cfg: DemoConfig, world, directory: Path, tracking: TrackingConfig, progress: bool) -> Diagnosis:
    """The diagnosis of ModSFT and OverSFT on the SFT distribution (reused when OUT has it)."""
    from rayrejuv.commands.diagnose.driver import diagnose

    if (directory / "diagnose.json").is_file():
        return Diagnosis.from_json(json.loads((directory / "diagnose.json").read_text()), out=str(directory))
    dcfg = DiagnoseConfig(
        base=world.base,
        sft=[world.sft(cfg.rungs.modsft_epoch), world.sft(cfg.rungs.oversft_epoch)],
        data=world.data("eval_id"),
        out=directory,
        max_examples=cfg.eval.diagnose_examples,
        k=cfg.eval.diagnose_k,
        max_new_tokens=cfg.eval.max_new_tokens,
        chat_template=cfg.rejuvenation.chat_template,  # the world's one prompt format
        tracking=tracking,
    )
    return diagnose(dcfg, progress=progress)


def rejuvenate_oversft(cfg: DemoConfig, world, out: Path, parent: Run, progress: bool) -> dict[str, Path]:
    """OverSFT fused with the base (fusion only), and fused + targeted reset (Rejuvenation)."""
    from rayrejuv.commands.rejuvenate.driver import rejuvenate

    made = {}
    for start, fusion_only in (("oversft_fusion", True), ("oversft_rejuvenation", False)):
        target = made[start] = out / start
        if (target / "config.json").is_file():  # an atomic output: present means complete
            continue
        rcfg = RejuvenateConfig(
            **cfg.rejuvenation.model_dump(exclude={"calibration"}),
            calibration=world.data("calibration"),
            base=world.base,
            sft=world.sft(cfg.rungs.oversft_epoch),
            out=target,
            fusion_only=fusion_only,
            ray=cfg.ray,
            tracking=parent.child(cfg.tracking, start),
        )
        rejuvenate(rcfg, progress=progress)
    return made


@dataclass(frozen=True)
class EvalSets:
    """In distribution = held-out prompts of the distribution RL trains on; out of distribution =
    `eval_general`, held-out problems of the base's own Q/A distribution, which SFT and RL never
    show (what over-training makes the model forget). Entropy: teacher-forced on the SFT (eval_id)
    responses, the distribution over-training collapses."""

    id_name: str
    ood_name: str
    id_rows: list[dict]
    ood_rows: list[dict]
    entropy_rows: list[dict]

    @classmethod
    def of(cls, cfg: DemoConfig, world) -> EvalSets:
        from rayrejuv.data.jsonl import read_jsonl

        id_name = cfg.world.data.rl_distribution  # every RL distribution has its held-out eval_<name>

        def rows(name: str, n: int) -> list[dict]:
            return read_jsonl(world.data(name), ("prompt", "answer", "response"), name)[:n]

        n = cfg.eval.examples
        return cls(id_name, "general", rows(f"eval_{id_name}", n), rows("eval_general", n),
                   rows("eval_id", cfg.eval.entropy_examples))

    def splits(self) -> dict[str, list[dict]]:
        return {"id": self.id_rows, "ood": self.ood_rows}


def _score(model_dir: str, evals: EvalSets, max_new_tokens: int, chat_template: ChatTemplate,
           cache: Path) -> dict[str, float]:
    """The checkpoint's scores, kept in `cache` (JSON) and reused when they were computed for the same
    weights, eval sets and generation settings: a resumed demo, or `--baselines` after a demo, scores
    only what is new (1000 prompts per split: ~10 s a checkpoint on one core)."""
    key = _score_key(Path(model_dir), evals, max_new_tokens, chat_template)
    kept = json.loads(cache.read_text()) if cache.is_file() else None
    if kept is not None and kept["key"] == key:
        return kept["scores"]
    import torch

    from rayrejuv.models.evaluate import score_checkpoint

    torch.set_num_threads(1)  # one core per task: tasks run side by side
    scores = score_checkpoint(model_dir, evals.splits(), evals.entropy_rows, max_new_tokens, chat_template)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"key": key, "scores": scores}, indent=1))
    return scores


def _score_key(model_dir: Path, evals: EvalSets, max_new_tokens: int, chat_template: ChatTemplate) -> str:
    """sha256 over the checkpoint's weight files (the demo's models are a few MB) and what is scored."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    what = [evals.id_rows, evals.ood_rows, evals.entropy_rows, max_new_tokens, str(chat_template)]
    h.update(json.dumps(what, sort_keys=True).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """One GRPO run of the demo: its row of a table (a start, or a remedy: it runs in
    rl/<row>/seed-<seed>), from `model`, with the step `grpo` and an optional token budget."""

    row: str
    model: Path
    seed: int
    grpo: GRPOConfig
    token_budget: int | None = None


def rl_config(cfg: DemoConfig, world, model: Path, seed: int, out: Path, tracking: TrackingConfig,
              grpo: GRPOConfig | None = None, token_budget: int | None = None):
    """The one GRPO recipe (or `grpo`: a remedy's), from `model`, with `seed`; the demo scores the
    final checkpoint itself."""
    from rayrejuv.commands.rl.config import RLConfig

    r = cfg.rl
    return RLConfig(
        model=model,
        train_data=world.data("rl_train"),
        out=out,
        steps=r.steps,
        token_budget=token_budget,
        seed=seed,
        eval_every=0,  # the demo scores the final checkpoint itself, on both splits
        checkpoint_every=max(1, r.steps // 2),
        keep_checkpoints=1,
        chat_template=cfg.rejuvenation.chat_template,
        grpo=r.grpo if grpo is None else grpo,
        rollout=r.rollout,
        learner=r.learner,
        ray=cfg.ray,
        tracking=tracking,
    )


def rl_cpu_demand(cfg: DemoConfig, world) -> float:
    """CPUs one of the demo's RL runs reserves (the same for every start and seed)."""
    return rl_config(cfg, world, world.base, cfg.seed, world.root.parent / "rl", cfg.tracking).cpu_demand()


def _rl_and_score(rl_json: dict, evals: EvalSets, max_new_tokens: int, pool) -> SeedRun:
    """One GRPO run on `pool` (the RunQueue of the demo's worker pools; resumed, or reused when
    finished), then its final checkpoint's scores."""
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import RunLayout

    rcfg = RLConfig.model_validate(rl_json)
    layout = RunLayout(Path(rcfg.out))
    summary = _finished_or_run(rcfg, layout, pool)
    scores = _score(str(summary.final_checkpoint), evals, max_new_tokens, rcfg.chat_template,
                    layout.root / "scores.json")
    steps = [r for r in layout.records() if "reward/mean" in r]
    return SeedRun(
        seed=rcfg.seed,
        id_after=scores["id"],
        ood_after=scores["ood"],
        entropy_after=scores["entropy"],
        reward_first=summary.first["reward/mean"],
        reward_last=summary.last["reward/mean"],
        zero_std_fraction_first=summary.first["reward/zero_std_fraction"],
        rl_seconds=summary.seconds,
        steps=len(steps),
        generated_tokens=summary.last["sampling/generated_tokens_total"],
        rewards=[r["reward/mean"] for r in steps],
        zero_std_fractions=[r["reward/zero_std_fraction"] for r in steps],
        run_dir=str(layout.root),
    )


def _finished_or_run(rcfg, layout, pool):
    """A finished run's RLSummary (summary.json), else that of the run itself on `pool` (new or resumed)."""
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.commands.rl.summary import RLSummary

    finished = layout.state.is_file() and json.loads(layout.state.read_text())["finished_steps"] >= rcfg.steps
    # (a run ended by its token budget is marked finished with rcfg.steps too: rl.driver.finalize)
    if finished and layout.summary.is_file():
        return RLSummary.from_json(layout.summary.read_text())
    return run_rl(rcfg, False, pool=pool)


class RunDriver:
    """A process that drives the demo's RL runs one after another (_rl_and_score: run_rl on the
    pools, then the scores); long-lived, so a run does not wait for a process to start and import."""

    def __init__(self) -> None:
        # what a run imports (the tokenizer's library, the tracking client, the curves' plots), paid
        # here while the pools start rather than by the first runs (measured: 22 s of a first run's 52 s)
        import matplotlib.pyplot  # noqa: F401
        import mlflow  # noqa: F401
        import transformers  # noqa: F401

        import rayrejuv.commands.rl.driver  # noqa: F401
        import rayrejuv.commands.rl.report  # noqa: F401
        import rayrejuv.models.evaluate  # noqa: F401

    def run(self, rl_json: dict, evals: EvalSets, max_new_tokens: int, pool) -> SeedRun:
        return _rl_and_score(rl_json, evals, max_new_tokens, pool)

    def score(self, model_dir: str, evals: EvalSets, max_new_tokens: int, chat_template: ChatTemplate,
              cache: Path) -> dict[str, float]:
        return _score(model_dir, evals, max_new_tokens, chat_template, cache)


class RLRunner:
    """The demo's RL workers: `rl.concurrent` worker pools (commands/rl/pool.py: rollout actors,
    reference and a Ray Train learner started once, each serving the next run of one queue), and
    two RunDrivers per pool (each drives a run: its directory, MLflow child run and sink; then the
    scores of its final checkpoint): runs wait in the queue while others are scored.

    Started before the RL phase (rl_runner): what their start-up waits for (processes, imports,
    Ray Train's worker group) overlaps the diagnosis and the evaluation; the RL phase and the
    baselines then run on the same warm pools."""

    def __init__(self, cfg: DemoConfig, world, evals: EvalSets, directory: Path, parent: Run, first: RunSpec):
        import ray

        from rayrejuv.commands.rl.pool import Pools

        self.cfg, self.world, self.evals, self.directory, self.parent = cfg, world, evals, directory, parent
        fits = int(ray.cluster_resources().get("CPU", 0) // rl_cpu_demand(cfg, world))  # pools the cluster holds
        self.pools = Pools(max(1, min(cfg.rl.concurrent, fits)), directory / "pools")
        # the drivers hold no CPU (the pools' workers hold them); two per pool: a driver scores its run's final
        # checkpoint before it takes the next run, so with one spare driver two runs ending together left a pool
        # idle for a scoring (measured: 103 of 990 pool-seconds of a demo's RL phase)
        self.drivers = [ray.remote(num_cpus=0)(RunDriver).remote() for _ in range(2 * self.pools.count)]
        self._queue(self._config(first))  # the pools of the runs' key start now

    def _config(self, spec: RunSpec):
        return rl_config(self.cfg, self.world, spec.model, spec.seed, self.directory / spec.row / f"seed-{spec.seed}",
                         self.parent.child(self.cfg.tracking, f"rl:{spec.row}:seed-{spec.seed}"), spec.grpo,
                         spec.token_budget)

    def _queue(self, rcfg):
        from rayrejuv.commands.rl.driver import resolve_dtypes

        return self.pools.queue_for(resolve_dtypes(rcfg))

    def score_starts(self, starts: dict[str, Path], scores_dir: Path) -> dict[str, StartScores]:
        """Greedy pass@1 (ID, OOD) and entropy of every start (kept in scores_dir/<start>.json), side by
        side on the drivers: their processes and imports are warm, where a task would start its own."""
        import ray

        e, template = self.cfg.eval, self.cfg.rejuvenation.chat_template
        drivers = self.drivers * len(starts)  # one start per driver, round robin
        refs = {s: d.score.remote(str(p), self.evals, e.max_new_tokens, template, scores_dir / f"{s}.json")
                for d, (s, p) in zip(drivers, starts.items())}
        scores = {s: ray.get(r) for s, r in refs.items()}
        return {s: StartScores(id_before=v["id"], ood_before=v["ood"], entropy_before=v["entropy"])
                for s, v in scores.items()}

    def run(self, specs: list[RunSpec]) -> dict[str, list[SeedRun]]:
        """Every run of `specs`, in order, each on the first free pool; results per row, sorted by seed."""
        import ray

        todo, idle, running = list(specs), list(self.drivers), {}
        done: dict[str, list[SeedRun]] = {s.row: [] for s in specs}
        while todo or running:
            while todo and idle:
                spec, driver = todo.pop(0), idle.pop()
                rcfg = self._config(spec)
                ref = driver.run.remote(rcfg.model_dump(mode="json"), self.evals, self.cfg.eval.max_new_tokens,
                                        self._queue(rcfg))
                running[ref] = (spec.row, driver)
            ready, _ = ray.wait([*running, *self.pools.tasks], num_returns=1)
            for ref in ready:
                if ref not in running:  # a pool ended while runs were left: its error (a fit that failed)
                    ray.get(ref)
                    raise RuntimeError("an RL worker pool stopped before the demo's runs were done")
                row, driver = running.pop(ref)
                done[row].append(ray.get(ref))
                idle.append(driver)
        return {row: sorted(runs, key=lambda r: r.seed) for row, runs in done.items()}

    def close(self) -> None:
        import ray

        try:
            self.pools.close()
        finally:
            for driver in self.drivers:
                ray.kill(driver)


@contextmanager
def rl_runner(cfg: DemoConfig, world, evals: EvalSets, directory: Path, parent: Run, first: RunSpec):
    """RLRunner, started now and closed on exit."""
    runner = RLRunner(cfg, world, evals, directory, parent, first)
    try:
        yield runner
    finally:
        runner.close()


def run_baselines(cfg: DemoConfig, runner: RLRunner, oversft: Path, per_seed: dict[str, list[SeedRun]], out: Path,
                  progress: bool) -> BaselineTable:
    """GRPO from OverSFT with each RL-side remedy (baselines.REMEDIES) on the main runs' seeds and
    the RL phase's pools, and the comparison with OverSFT and Rejuvenation's runs of the RL phase."""
    specs = [RunSpec(name, oversft, seed, GRPOConfig.model_validate(cfg.rl.grpo.model_dump() | remedy.grpo),
                     token_budget(remedy, seed, per_seed))
             for seed in cfg.seed_list for name, remedy in REMEDIES.items()]
    labels = LABELS | {name: r.label for name, r in REMEDIES.items()}
    with run_lines(rl_lines(out / "rl", specs, labels, cfg.rl.steps), progress):
        runs = runner.run(specs)
    rows = {"oversft": per_seed["oversft"]} | runs | {REFERENCE: per_seed[REFERENCE]}
    return compare(cfg.seed_list, labels, rows)


def publish(results: DemoResults, parent: Run) -> None:
    """results.json, table.md and the figures into OUT; the table's numbers and files to the demo's run."""
    from rayrejuv.commands.demo.report import plot_baselines, plot_demo_pass_at_1, plot_demo_rewards

    out = Path(results.out)
    atomic_write_text(out / RESULTS, json.dumps(results.to_json(), indent=1))
    atomic_write_text(out / "table.md", markdown(results.table))
    plot_demo_pass_at_1(results.table, out / "pass_at_1.png")
    plot_demo_rewards({s: row.per_seed for s, row in results.table.rows.items()}, out / "rewards.png")
    parent.log_metrics(_flat_metrics(results))
    files = [RESULTS, "table.md", "pass_at_1.png", "rewards.png"]
    if results.baselines is not None:
        atomic_write_text(out / "baselines.md", baselines_markdown(results.baselines, results.table.id_split,
                                                                  results.table.ood_split))
        plot_baselines(results.baselines, results.table.id_split, results.table.ood_split, out / "baselines.png")
        files += ["baselines.md", "baselines.png"]
    for name in files:
        parent.log_artifact(out / name)


def _flat_metrics(results: DemoResults) -> dict[str, float]:
    metrics = {}
    for start, row in results.table.rows.items():
        for k in ("id_before", "id_after", "ood_before", "ood_after", "entropy_before", "id_gain", "ood_gain"):
            metrics[f"{start}.{k}"] = getattr(row, k)
    if results.baselines is not None:
        for name, row in results.baselines.rows.items():
            metrics |= {f"baselines.{name}.{k}_after": row.spread[f"{k}_after"].mean for k in ("id", "ood")}
            metrics[f"baselines.{name}.generated_tokens"] = row.generated_tokens
    return metrics | {f"time.{k}": v for k, v in results.timings_s.items()}
