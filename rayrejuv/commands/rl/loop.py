"""GRPO on Ray: the per-step algorithm, run by every Ray Train worker of the learner.

    for each step (grpo_step):
        batch = generate(prompts)                       rollout actors, G samples per prompt
        batch.rewards = reward(batch, answers)          +1 / -1 on the final answer
        batch.advantages = advantages(batch.rewards)    group-relative (each prompt's G samples)
        batch.ref_logprobs = reference(batch)           frozen starting checkpoint (beta > 0)
        learner.update(batch)                           clipped surrogate + KL, DDP / DeepSpeed
        rollouts.sync(learner.weights())                new policy for the next step

The first four (the `Experience`) run once, on rank 0, and are shared with every rank; each
learner rank trains on its slice. Metrics go to the MetricsSink actor (metrics.jsonl + MLflow);
checkpoint steps also `ray.train.report` them (Tune's probe reporter reads those).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.rl.workers import RLWorkers
from rayrejuv.data.prompts import step_prompts
from rayrejuv.distributed.learner import Learner
from rayrejuv.method.grpo import group_advantages
from rayrejuv.method.rewards import is_correct
from rayrejuv.models.evaluate import score_pass_at_k
from rayrejuv.models.rollout import Rollout, Sampling

STATE_FILE = "trainer_state.json"


def shared(fn: Callable[[], Any]) -> Any:
    """Compute on rank 0, give the result to every rank (rollouts, rewards, evaluation)."""
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rewards_of(texts: list[str], answers: list[str], correct: float, wrong: float) -> torch.Tensor:
    """Verifiable reward per completion; malformed answers are simply wrong."""
    return torch.tensor([correct if is_correct(t, a) else wrong for t, a in zip(texts, answers)])


class Experience:
    """Rank 0's side of a step: the step's prompts, the rollout actors, the verifier, the group
    baseline and the frozen reference. Each part fills its fields of the batch and returns its metrics."""

    def __init__(self, cfg: RLConfig, rows: list[dict], eval_rows: list[dict], workers: RLWorkers, pad_id: int):
        self.cfg, self.rows, self.eval_rows, self.pad_id = cfg, rows, eval_rows, pad_id
        self.rollouts, self.reference_actor = workers.rollouts, workers.reference

    def prompts(self, step: int) -> list[dict]:
        """The step's P {prompt, answer} rows: every epoch a fresh permutation, stateless in the step."""
        g = self.cfg.grpo
        return [self.rows[i] for i in step_prompts(len(self.rows), step, g.prompts_per_step, self.cfg.seed)]

    def generate(self, rows: list[dict], step: int) -> tuple[Rollout, dict[str, float]]:
        """G completions per prompt from the rollout actors, prompt-major (N = P x G sequences)."""
        g = self.cfg.grpo
        t0 = time.perf_counter()
        s = Sampling(n=g.group_size, temperature=g.temperature, max_new_tokens=g.max_new_tokens,
                     seed=self.cfg.seed * 1_000_003 + step)
        batch = self.rollouts.generate([r["prompt_ids"] for r in rows], s, self.pad_id)  # rendered by the driver
        seconds = time.perf_counter() - t0
        self.rollouts.sleep()
        lengths = batch.completion_mask.sum(1).float()
        return batch, {
            "response/length_mean": float(lengths.mean()),
            "response/clipped_fraction": float((lengths >= g.max_new_tokens).float().mean()),
            "time/generate": seconds,
            "throughput/generated_tokens_per_s": batch.num_tokens / max(seconds, 1e-9),
            "rollout/policy_version": float(batch.version),
            "rollout/restarts": float(self.rollouts.restarts),
        }

    def reward(self, batch: Rollout, rows: list[dict]) -> dict[str, float]:
        """batch.rewards (N,): the verifier on each completion's final answer."""
        r = self.cfg.reward
        batch.rewards = rewards_of(batch.texts, [rows[int(i)]["answer"] for i in batch.group], r.correct, r.wrong)
        return {
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()),
            "reward/accuracy": float((batch.rewards == r.correct).float().mean()),
        }

    def advantages(self, batch: Rollout) -> dict[str, float]:
        """batch.advantages (N,): each reward against its group's (same prompt) mean, and std if scaled."""
        g = self.cfg.grpo
        grouped = batch.rewards.view(g.prompts_per_step, g.group_size)  # (P, G): sequences are prompt-major
        batch.advantages = group_advantages(grouped, scale=g.scale_rewards).flatten()
        return {"reward/zero_std_fraction": float((grouped.std(1) == 0).float().mean())}

    def reference(self, batch: Rollout) -> dict[str, float]:
        """batch.ref_logprobs (N, T) under the frozen starting checkpoint, for the KL term (beta > 0)."""
        import ray

        t0 = time.perf_counter()
        if self.cfg.grpo.beta > 0:
            batch.ref_logprobs = ray.get(self.reference_actor.logprobs.remote(batch, self.cfg.grpo.temperature))
        return {"time/reference": time.perf_counter() - t0}

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy pass@1 and pass@k (k samples at the rollout temperature) on the eval prompts."""
        if not self.eval_rows:
            return {}
        cfg, g = self.cfg, self.cfg.grpo
        prompts = [r["prompt_ids"] for r in self.eval_rows]
        greedy = self.rollouts.complete(prompts, Sampling(1, 0.0, g.max_new_tokens, cfg.seed))
        k = cfg.eval_k
        samples = self.rollouts.complete(prompts, Sampling(k, g.temperature, g.max_new_tokens, cfg.seed + step + 1))
        score = score_pass_at_k(greedy, samples, self.eval_rows, k)
        return {
            "eval/pass_at_1": score.pass_at_1,
            "eval/pass_at_k": score.pass_at_k,
            "eval/sample_accuracy": score.sample_accuracy,
        }


def grpo_step(step: int, experience: Experience, learner: Learner, rank0: bool) -> tuple[Rollout, dict[str, float]]:
    """One GRPO step on every rank. The experience is made once (rank 0) and shared."""

    def experience_of_step() -> tuple[Rollout, dict[str, float]]:
        rows = experience.prompts(step)
        batch, metrics = experience.generate(rows, step)  # G completions per prompt
        metrics |= experience.reward(batch, rows)  # +1 / -1 on the final answer
        metrics |= experience.advantages(batch)  # group-relative
        metrics |= experience.reference(batch)  # frozen start's log-probs (beta > 0)
        return batch, metrics

    batch, metrics = shared(experience_of_step)
    t0 = time.perf_counter()
    metrics |= learner.update(batch)  # clipped surrogate + KL on this rank's rows; DDP / DeepSpeed
    t1 = time.perf_counter()
    sync_rollouts(learner, experience.rollouts, step + 1, rank0)  # the next step samples the new policy
    metrics |= {"time/learn": t1 - t0, "time/sync": time.perf_counter() - t1}
    return batch, metrics


def sync_rollouts(learner: Learner, rollouts, version: int, rank0: bool) -> None:
    weights = learner.weights()  # on every rank (gathered by the update: a collective under ZeRO-3)
    if rank0:
        rollouts.sync(weights, version=version)


def grpo_worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker: the GRPO loop above, resumable from Ray Train checkpoints."""
    import ray
    import ray.train
    from tqdm.auto import tqdm

    from rayrejuv.models.loading import pad_id
    from rayrejuv.runs.resources import set_torch_threads

    cfg = RLConfig.model_validate(config["cfg"])
    set_torch_threads(cfg.learner.cpus_per_worker)  # the CPUs this Ray Train worker reserved
    workers: RLWorkers = config["workers"]
    rank0 = ray.train.get_context().get_world_rank() == 0
    torch.manual_seed(cfg.seed)
    learner, tokenizer, start = start_learner(cfg)
    experience = Experience(cfg, config["rows"], config["eval_rows"], workers, pad_id(tokenizer))
    sync_rollouts(learner, workers.rollouts, start, rank0)
    if rank0:
        ray.get(workers.sink.truncate.remote(start))  # a resumed run redoes the steps after its checkpoint
    if start == 0 and cfg.eval_every:
        evals = shared(lambda: experience.evaluate(0))
        if rank0:
            ray.get(workers.sink.log.remote(0, evals))

    bar = tqdm(range(start, cfg.steps), desc="GRPO", unit="step", disable=not (rank0 and config["progress"]),
               initial=start, total=cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        batch, metrics = grpo_step(step, experience, learner, rank0)
        done = step + 1
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            metrics |= shared(lambda: experience.evaluate(done))  # noqa: B023 (called at once)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["throughput/tokens_per_s"] = batch.num_tokens / metrics["time/step"]
        if rank0:
            ray.get(workers.sink.log.remote(done, metrics))
            bar.set_postfix(reward=f"{metrics['reward/mean']:+.3f}", entropy=f"{metrics['policy/entropy']:.3f}")
        _report(learner, tokenizer, done, metrics, due=done % cfg.checkpoint_every == 0 or done == cfg.steps)


def start_learner(cfg: RLConfig) -> tuple[Learner, Any, int]:
    """This rank's learner from cfg.model, or from the latest Ray Train checkpoint (then its step)."""
    import ray.train
    import ray.train.torch

    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.loading import DTYPES, from_pretrained, load_tokenizer

    tokenizer = load_tokenizer(Checkpoint(cfg.model, role="policy"))
    device = ray.train.torch.get_device() if cfg.learner.use_gpu else torch.device("cpu")
    learner = Learner(from_pretrained(cfg.model, DTYPES[cfg.learner.dtype]), cfg.grpo, cfg.learner, device)
    restored = ray.train.get_checkpoint()
    if restored is None:
        return learner, tokenizer, 0
    with restored.as_directory() as d:
        learner.load(Path(d))
        return learner, tokenizer, json.loads((Path(d) / STATE_FILE).read_text())["step"]


def _report(learner, tokenizer, step: int, metrics: dict, due: bool) -> None:
    """A Ray Train checkpoint when due. ray.train.report is a barrier (every rank calls it the same
    number of times) and costs ~1-2 s, so it runs on checkpoint steps only: per-step metrics
    travel through the MetricsSink instead."""
    import ray.train

    if not due:
        return
    scalars = {k: float(v) for k, v in metrics.items()} | {"step": step}
    with tempfile.TemporaryDirectory() as d:
        learner.save(Path(d), tokenizer)
        (Path(d) / STATE_FILE).write_text(json.dumps({"step": step}))
        ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(d))
