"""GRPO on Ray: the per-step algorithm, run by every Ray Train worker of the learner.

    for each step:
        batch  = generate(prompts)                      rollout actors, G samples per prompt
        reward = verify(batch, answers)                 +1 / -1 on the final answer
        adv    = group_advantages(reward)
        ref    = reference.logprobs(batch)              frozen starting checkpoint (beta > 0)
        learner.update(batch, adv, ref)                 clipped surrogate + KL, DDP / DeepSpeed
        rollouts.sync(learner.weights())                new policy for the next step

Rollouts, rewards and evaluation are computed once (on rank 0) and shared with every rank; each
learner rank trains on its slice. Metrics go to the MetricsSink actor (metrics.jsonl + MLflow).
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
from rayrejuv.data.prompts import step_prompts
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
    """Everything a step needs from outside the learner: rollouts, rewards, reference log-probs."""

    def __init__(self, cfg: RLConfig, rows: list[dict], eval_rows: list[dict], rollouts, reference, pad_id: int):
        self.cfg, self.rows, self.eval_rows = cfg, rows, eval_rows
        self.rollouts, self.reference, self.pad_id = rollouts, reference, pad_id

    def make(self, step: int) -> tuple[Rollout, dict[str, float]]:
        import ray

        g = self.cfg.grpo
        picked = [self.rows[i] for i in step_prompts(len(self.rows), step, g.prompts_per_step, self.cfg.seed)]
        t0 = time.perf_counter()
        s = Sampling(n=g.group_size, temperature=g.temperature, max_new_tokens=g.max_new_tokens,
                     seed=self.cfg.seed * 1_000_003 + step)
        batch = self.rollouts.generate([r["prompt"] for r in picked], s, self.pad_id)
        t_gen = time.perf_counter() - t0
        self.rollouts.sleep()
        answers = [picked[int(i)]["answer"] for i in batch.group]
        batch.rewards = rewards_of(batch.texts, answers, self.cfg.reward.correct, self.cfg.reward.wrong)
        grouped = batch.rewards.view(g.prompts_per_step, g.group_size)  # (P, G): sequences are prompt-major
        batch.advantages = group_advantages(grouped, scale=g.scale_rewards).flatten()
        t0 = time.perf_counter()
        if g.beta > 0:
            batch.ref_logprobs = ray.get(self.reference.logprobs.remote(batch, g.temperature))
        lengths = batch.completion_mask.sum(1).float()
        return batch, {
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()),
            "reward/accuracy": float((batch.rewards == self.cfg.reward.correct).float().mean()),
            "reward/zero_std_fraction": float((grouped.std(1) == 0).float().mean()),
            "response/length_mean": float(lengths.mean()),
            "response/clipped_fraction": float((lengths >= g.max_new_tokens).float().mean()),
            "time/generate": t_gen,
            "time/reference": time.perf_counter() - t0,
            "throughput/generated_tokens_per_s": batch.num_tokens / max(t_gen, 1e-9),
            "rollout/policy_version": float(batch.version),
            "rollout/restarts": float(self.rollouts.restarts),
        }

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy pass@1 and pass@k (k samples at the rollout temperature) on the eval prompts."""
        if not self.eval_rows:
            return {}
        cfg, g = self.cfg, self.cfg.grpo
        prompts = [r["prompt"] for r in self.eval_rows]
        greedy = self.rollouts.complete(prompts, Sampling(1, 0.0, g.max_new_tokens, cfg.seed))
        k = cfg.eval_k
        samples = self.rollouts.complete(prompts, Sampling(k, g.temperature, g.max_new_tokens, cfg.seed + step + 1))
        score = score_pass_at_k(greedy, samples, self.eval_rows, k)
        return {
            "eval/pass_at_1": score.pass_at_1,
            "eval/pass_at_k": score.pass_at_k,
            "eval/sample_accuracy": score.sample_accuracy,
        }


def grpo_worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker: the GRPO loop above, resumable from Ray Train checkpoints."""
    import ray
    import ray.train
    import ray.train.torch

    from rayrejuv.distributed.learner import Learner
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.loading import DTYPES, from_pretrained, load_tokenizer, pad_id

    cfg = RLConfig.model_validate(config["cfg"])
    rollouts, reference, sink = config["rollouts"], config["reference"], config["sink"]
    ctx = ray.train.get_context()
    rank0 = ctx.get_world_rank() == 0
    torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(Checkpoint(cfg.model, role="policy"))
    device = ray.train.torch.get_device() if cfg.learner.use_gpu else torch.device("cpu")
    learner = Learner(from_pretrained(cfg.model, DTYPES[cfg.learner.dtype]), cfg.grpo, cfg.learner, device)
    experience = Experience(cfg, config["rows"], config["eval_rows"], rollouts, reference, pad_id(tokenizer))

    start = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            learner.load(Path(d))
            start = json.loads((Path(d) / STATE_FILE).read_text())["step"]
    weights = learner.weights()  # gathered on every rank (a collective under ZeRO-3)
    if rank0:
        rollouts.sync(weights, version=start)
        ray.get(sink.truncate.remote(start))
    if start == 0 and cfg.eval_every:
        evals = shared(lambda: experience.evaluate(0))
        if rank0:
            ray.get(sink.log.remote(0, evals))

    from tqdm.auto import tqdm

    bar = tqdm(range(start, cfg.steps), desc="GRPO", unit="step", disable=not rank0, initial=start, total=cfg.steps)
    rewards: list[float] = []  # this session's step rewards: the probe's curve summaries
    for step in bar:
        t_step = time.perf_counter()
        batch, metrics = shared(lambda: experience.make(step))  # noqa: B023 (called at once)
        rewards.append(metrics["reward/mean"])
        metrics["probe/reward_auc"] = sum(rewards) / len(rewards)
        recent = rewards[-cfg.checkpoint_every :]
        metrics["probe/reward_recent"] = sum(recent) / len(recent)

        t0 = time.perf_counter()
        metrics |= learner.update(batch)
        metrics["time/learn"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        weights = learner.weights()
        if rank0:
            rollouts.sync(weights, version=step + 1)
        metrics["time/sync"] = time.perf_counter() - t0

        done = step + 1
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            metrics |= shared(lambda: experience.evaluate(done))  # noqa: B023
        metrics["time/step"] = time.perf_counter() - t_step
        metrics["throughput/tokens_per_s"] = batch.num_tokens / metrics["time/step"]
        if rank0:
            ray.get(sink.log.remote(done, metrics))
            bar.set_postfix(reward=f"{metrics['reward/mean']:+.3f}", entropy=f"{metrics['policy/entropy']:.3f}")
        _report(learner, tokenizer, done, metrics, due=done % cfg.checkpoint_every == 0 or done == cfg.steps)


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
