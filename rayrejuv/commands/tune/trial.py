"""One `rayrejuv tune` trial, a Tune function trainable in its own process:

    rejuvenate(base, sft, params)              in the trial process
    probe = rl(rejuvenated, M steps)           on a probe pool of the search (a warm Ray Train learner,
                                               rollout actors, reference); ProbeReport -> ASHA
    evaluate ID (and OOD) greedy pass@1
    report the objective                       probe reward (end or area) or eval pass@1

The search starts `max_concurrent` probe pools (probe_pools) before the first trial; a trial that
ends before its probe (ASHA stopped it) cancels the probe there (CancelStoppedProbes).

The trial is an MLflow run nested under the search's run (`tracked_run` of the search's child
tracking section). A trial whose result.json exists is not run again: on --resume after a kill,
Tune's experiment state (saved periodically) may not yet know it finished; its recorded result is
reported instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from rayrejuv.commands.rl.driver import RunLayout
from rayrejuv.commands.tune.config import TuneConfig
from rayrejuv.config.prompts import ChatTemplate
from rayrejuv.config.runtime import TrackingConfig
from rayrejuv.io.writer import atomic_write_text
from rayrejuv.runs.tracking import tracked_run


@dataclass(frozen=True)
class ProbeCurve:
    """The probe's reward curve summarised for the search (mean reward of each GRPO step)."""

    auc: float  # mean step reward so far: the area under the reward curve per step
    recent: float  # mean over the last `window` steps

    @classmethod
    def of(cls, rewards: list[float], window: int) -> ProbeCurve:
        recent = rewards[-window:]
        return cls(auc=sum(rewards) / len(rewards), recent=sum(recent) / len(recent))

    @classmethod
    def read(cls, layout: RunLayout, window: int, through: int) -> ProbeCurve:
        """From the probe run's metrics.jsonl, steps 1..`through`."""
        rewards = [r["reward/mean"] for r in layout.records() if "reward/mean" in r and r["step"] <= through]
        return cls.of(rewards, window)

    def metrics(self) -> dict[str, float]:
        return {"probe/reward_auc": self.auc, "probe/reward_recent": self.recent}


def _eval_pass_at_1(curve: ProbeCurve, evals: dict[str, float], ood_weight: float) -> float:
    ood = evals["eval/ood_pass_at_1"] if ood_weight > 0 else 0.0  # ood_weight > 0 needs --ood-data
    return (1 - ood_weight) * evals["eval/id_pass_at_1"] + ood_weight * ood


@dataclass(frozen=True)
class Objective:
    during: Callable[[ProbeCurve], float]  # what ASHA compares at each probe report
    final: Callable[[ProbeCurve, dict[str, float], float], float]  # (curve, evals, ood_weight) -> the score


OBJECTIVES = {
    "probe_reward_end": Objective(lambda c: c.recent, lambda c, evals, w: c.recent),
    "probe_reward_auc": Objective(lambda c: c.auc, lambda c, evals, w: c.auc),
    "eval_pass_at_1": Objective(lambda c: c.auc, _eval_pass_at_1),
}


class ProbeReport:
    """Forwards the probe's checkpoint-step reports to Tune (`rayrejuv rl`'s on_report, in the trial's
    thread), with the probe's reward curve so far (read from its metrics.jsonl: the sink wrote every
    step before rank 0 reported), the objective ASHA ranks by, and the trial's run time so far (a
    trial ASHA stops never makes its final report: Tune ends it at this report, by SystemExit)."""

    def __init__(self, probe: RunLayout, window: int, objective: str, started: float):
        self.probe, self.window, self.objective, self.started = probe, window, objective, started

    def __call__(self, metrics: dict) -> None:
        from ray import tune

        curve = ProbeCurve.read(self.probe, self.window, through=metrics["step"])
        tune.report({**metrics, **curve.metrics(), "objective": OBJECTIVES[self.objective].during(curve),
                     "time/trial": time.time() - self.started})


def run_trial(params: dict[str, Any], cfg: TuneConfig, tracking: TrackingConfig, pool=None) -> None:
    """The Tune function trainable. `tracking`: the search run's child section (parent id + URI);
    `pool`: the RunQueue of the search's probe pools (probe_pools), else each probe starts its own workers."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(cfg.out) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    recorded = trial_dir / "result.json"
    if recorded.is_file():  # finished before a kill Tune's periodic experiment state had not yet saved
        tune.report(json.loads(recorded.read_text()))
        return
    with open(trial_dir / "attempts.log", "a") as f:  # one line per start: retries and resumes are visible
        f.write(f"{time.time()}\n")
    with tracked_run(tracking.model_copy(update={"run_name": f"trial-{trial_id}"}), "trial") as run:
        run.log_params(params)
        try:
            result, rewards = probe_trial(cfg, params, trial_dir, pool, owner=trial_id)
        except SystemExit:  # Tune stopped the trial at a probe report (ASHA): its run ends as a stopped trial's
            run.end("KILLED")
            raise
        run.log_metrics({k.replace("/", "_"): v for k, v in result.items() if isinstance(v, int | float)})
        for step, reward in rewards.items():
            run.log_metrics({"probe_reward": reward}, step=step)
    # recorded before the report: Tune stops a trial at its report (SystemExit) when the scheduler says so
    atomic_write_text(trial_dir / "result.json", json.dumps(result))
    tune.report(result)


def probe_trial(cfg: TuneConfig, params: dict[str, Any], trial_dir: Path, pool=None,
                owner: str | None = None) -> tuple[dict, dict[int, float]]:
    """Rejuvenate with `params`, probe with GRPO (on `pool` when given, as `owner`), evaluate: the
    trial's result and the probe's step rewards."""
    from rayrejuv.commands.rejuvenate.driver import rejuvenate
    from rayrejuv.commands.rl.driver import run_rl

    started, t0 = time.time(), time.perf_counter()
    rcfg = cfg.rejuvenate_config(params, trial_dir / "rejuvenated")
    report = rejuvenate(rcfg, progress=False)
    t_rejuv = time.perf_counter() - t0
    probe = cfg.probe.rl_config(rcfg.out, cfg.train_data, trial_dir / "probe", cfg.seed)
    layout = RunLayout(probe.out)
    reporter = ProbeReport(layout, cfg.probe.report_every, cfg.objective, started)
    summary = run_rl(probe, progress=False, on_report=reporter, pool=pool, owner=owner)
    curve = ProbeCurve.read(layout, cfg.probe.report_every, through=probe.steps)
    evals = evaluate(cfg, summary.final_checkpoint, probe.grpo.max_new_tokens, probe.chat_template)
    result = {
        "objective": OBJECTIVES[cfg.objective].final(curve, evals, cfg.ood_weight),
        **evals,
        **curve.metrics(),
        "probe/reward_first": summary.first["reward/mean"],
        "reset_count": report["reset_count"],
        "time/rejuvenate": t_rejuv,
        "time/trial": time.perf_counter() - t0,
        "checkpoint": str(rcfg.out),
    }
    return result, {r["step"]: r["reward/mean"] for r in layout.records() if "reward/mean" in r}


def probe_pool_config(cfg: TuneConfig):
    """The probe run the search's pools are made for: each trial's rejuvenated checkpoint keeps the
    SFT model's config and tokenizer, in the dtype rejuvenate writes (fixed dtype, else the SFT's)."""
    from rayrejuv.commands.rl.driver import resolve_dtypes

    probe = cfg.probe.rl_config(cfg.sft, cfg.train_data, Path(cfg.out) / "probe", cfg.seed)
    dtype = cfg.rejuvenate_config({}, Path(cfg.out)).dtype
    return resolve_dtypes(probe) if dtype == "auto" else probe.with_start_dtype(dtype)


def probe_queue_name(cfg: TuneConfig) -> str:
    """The probe pools' queue is a named actor: a restored search's pickled callback finds the new one."""
    return "rayrejuv-tune-probes-" + hashlib.sha256(str(Path(cfg.out).absolute()).encode()).hexdigest()[:12]


@contextmanager
def probe_pools(cfg: TuneConfig) -> Iterator:
    """`max_concurrent` pools of probe workers (commands/rl/pool.py) for the search; yields their queue.
    A probe then starts on a warm pool (its Ray Train learner and rollout actors already up)."""
    from rayrejuv.commands.rl.pool import Pools

    pools = Pools(cfg.max_concurrent, Path(cfg.out) / "ray" / "pools")
    queue = pools.queue_for(probe_pool_config(cfg), name=probe_queue_name(cfg))
    try:
        yield queue
    finally:
        pools.close()


class CancelStoppedProbes(Callback):
    """A trial that ends before its probe does (ASHA stopped it; it failed, or is retried) cancels
    its probe on the pool, which moves on to the next probe at its next step."""

    def __init__(self, queue_name: str):
        self.queue_name = queue_name

    def _cancel(self, trial) -> None:
        import ray

        ray.get_actor(self.queue_name).cancel.remote(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._cancel(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._cancel(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._cancel(trial)


def evaluate(cfg: TuneConfig, model: Path, max_new_tokens: int, chat_template: ChatTemplate) -> dict[str, float]:
    """Greedy pass@1 of the probed model on the ID (and OOD) eval sets, their prompts rendered as
    the probe's RL prompts are (probe.rl.chat_template)."""
    sets = {"eval/id_pass_at_1": cfg.eval_data}
    if cfg.ood_data is not None:
        sets["eval/ood_pass_at_1"] = cfg.ood_data
    return {key: _greedy_pass_at_1(model, data, cfg.eval_examples, max_new_tokens, chat_template)
            for key, data in sets.items()}


def _greedy_pass_at_1(model_dir: Path, data: Path, n: int, max_new_tokens: int, chat_template: ChatTemplate) -> float:
    import torch

    from rayrejuv.data.jsonl import read_jsonl
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.evaluate import greedy_pass_at_1
    from rayrejuv.models.loading import load_model, load_tokenizer

    rows = read_jsonl(data, ("prompt", "answer"), "eval data")[:n]
    ckpt = Checkpoint(model_dir, role="probed")
    model, tok = load_model(ckpt, torch.float32, torch.device("cpu")), load_tokenizer(ckpt)
    return greedy_pass_at_1(model, tok, rows, max_new_tokens, chat_template, batch_size=32)
