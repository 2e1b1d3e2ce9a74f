"""GRPO on Ray: the per-step algorithm, run by every Ray Train worker of the learner.

    for each step (grpo_step):
        batch = generate(prompts)                       rollout actors, G samples per prompt
        batch.rewards = reward(batch, answers)          +1 / -1 on the final answer
        batch.advantages = advantages(batch.rewards)    group-relative (each prompt's G samples)
        batch.ref_logprobs = reference(batch)           frozen starting checkpoint (beta > 0)
        learner.update(batch)                           clipped surrogate + KL, DDP / DeepSpeed
        rollouts.sync(learner.weight_source())          new policy for the next step (checksummed)

The first four (the `Experience`) run once, on rank 0, and are shared with every rank; each
learner rank trains on its slice. Metrics go to the MetricsSink actor (metrics.jsonl + MLflow);
checkpoint steps write the run's checkpoint into its directory and report their metrics to the
run's driver (Tune's probe reporter reads those).

The Ray Train workers are a pool's (commands/rl/pool.py): `pool_worker` serves the runs of the
pool's queue in turn, each one `grpo_run` from its start (or its last checkpoint), so a warm
pool starts a run without starting a process.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.rl.workers import RLWorkers, RunJob
from rayrejuv.data.prompts import draw_prompts
from rayrejuv.distributed.learner import Learner
from rayrejuv.method.dapo import OVERLONG, fill_groups, informative_groups, truncated
from rayrejuv.method.grpo import group_advantages
from rayrejuv.method.rewards import is_correct
from rayrejuv.method.throughput import Throughput, peak_tflops
from rayrejuv.models.evaluate import score_pass_at_k
from rayrejuv.models.rollout import Rollout, Sampling

STATE_FILE = "trainer_state.json"
CHECKPOINTS = Path("ray") / "grpo"  # a run's checkpoints, under its directory: checkpoint_<step>/
TAKE_TIMEOUT = 30.0  # seconds rank 0 waits on the pool's queue before every rank asks again
log = logging.getLogger(__name__)


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
    """Rank 0's side of a step: the step's prompts, the rollout actors, the verifier, the groups
    that train (dynamic sampling), overlong handling, the group baseline and the frozen reference.
    Each part fills its fields of the batch and returns its metrics."""

    def __init__(self, cfg: RLConfig, rows: list[dict], eval_rows: list[dict], workers: RLWorkers, pad_id: int,
                 eos_id: int | None):
        self.cfg, self.rows, self.eval_rows, self.pad_id, self.eos_id = cfg, rows, eval_rows, pad_id, eos_id
        self.rollouts, self.reference_actor = workers.rollouts, workers.reference

    def prompts(self, step: int, draw: int) -> list[dict]:
        """The P {prompt, answer} rows of the step's draw: draw 0 every epoch a fresh permutation,
        further draws (dynamic sampling) from a stream seeded by (seed, step); stateless in both."""
        g = self.cfg.grpo
        return [self.rows[i] for i in draw_prompts(len(self.rows), step, draw, g.prompts_per_step, self.cfg.seed)]

    def draw(self, step: int) -> tuple[Rollout, dict[str, float]]:
        """G completions per prompt, rewarded: one draw of P prompts; with dynamic sampling more
        draws, at most max_num_gen_batches, until P groups have rewards that differ. Every drawn
        group in draw order (group indexes the draws' rows); metrics over all of them."""
        g = self.cfg.grpo
        parts, seconds, informative = [], 0.0, 0
        for draw in range(g.max_num_gen_batches if g.dynamic_sampling else 1):
            rows = self.prompts(step, draw)
            part, m = self.generate(rows, step, draw)
            self.reward(part, rows)  # its metrics: of every draw together, below
            parts.append(part)
            seconds += m["time/generate"]
            informative += int(informative_groups(part.rewards.view(-1, g.group_size)).sum())
            if informative >= g.prompts_per_step:
                break
        self.rollouts.sleep()  # after the last draw: a sleeping engine wakes with the next sync
        drawn = Rollout.cat(parts, self.pad_id)
        return drawn, self.generation_metrics(drawn, seconds) | self.reward_metrics(drawn)

    def generate(self, rows: list[dict], step: int, draw: int) -> tuple[Rollout, dict[str, float]]:
        """G completions per prompt from the rollout actors, prompt-major (N = P x G sequences)."""
        g = self.cfg.grpo
        t0 = time.perf_counter()
        s = Sampling(n=g.group_size, temperature=g.temperature, max_new_tokens=g.max_new_tokens,
                     seed=self.cfg.seed * 1_000_003 + step + (draw << 32),  # draw 0: the step's seed
                     share_prompts=g.share_prompts)
        batch = self.rollouts.generate([r["prompt_ids"] for r in rows], s, self.pad_id)  # rendered by the driver
        return batch, self.generation_metrics(batch, time.perf_counter() - t0)

    def generation_metrics(self, batch: Rollout, seconds: float) -> dict[str, float]:
        lengths = batch.completion_mask.sum(1).float()
        return {
            "response/length_mean": float(lengths.mean()),
            "response/clipped_fraction": float((lengths >= self.cfg.grpo.max_new_tokens).float().mean()),
            "time/generate": seconds,
            "throughput/generated_tokens_per_s": batch.num_tokens / max(seconds, 1e-9),
            "rollout/policy_version": float(batch.version),
            "rollout/restarts": float(self.rollouts.restarts),
            "sampling/generated_tokens": float(batch.num_tokens),  # completion tokens sampled this step
            "perf/generation_num_tokens": float(batch.prompt_mask.sum()) + batch.num_tokens,  # what generation ran
        }

    def reward(self, batch: Rollout, rows: list[dict]) -> dict[str, float]:
        """batch.rewards (N,): the verifier on each completion's final answer."""
        r = self.cfg.reward
        batch.rewards = rewards_of(batch.texts, [rows[int(i)]["answer"] for i in batch.group], r.correct, r.wrong)
        return self.reward_metrics(batch)

    def reward_metrics(self, batch: Rollout) -> dict[str, float]:
        return {
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()),
            "reward/accuracy": float((batch.rewards == self.cfg.reward.correct).float().mean()),
        }

    def select(self, drawn: Rollout) -> tuple[Rollout, dict[str, float]]:
        """The P groups that train (method.dapo.fill_groups): a single draw whole; under dynamic
        sampling the first P with differing verifier rewards, padded with uninformative ones when
        max_num_gen_batches draws hold too few (logged: sampling/padded_groups, and a warning)."""
        g = self.cfg.grpo
        informative = informative_groups(drawn.rewards.view(-1, g.group_size))  # (D,) over every drawn group
        chosen, padded = fill_groups(informative, g.prompts_per_step)
        batch = drawn.select((chosen[:, None] * g.group_size + torch.arange(g.group_size)).flatten())
        batch.group = torch.arange(g.prompts_per_step).repeat_interleave(g.group_size)
        metrics = {"perf/total_num_tokens": float(batch.prompt_mask.sum()) + batch.num_tokens}
        if not g.dynamic_sampling:
            return batch, metrics
        if padded:
            log.warning("dynamic sampling: %d draws held %d of the %d groups with differing rewards needed; %d "
                        "uninformative groups fill the batch", len(informative) // g.prompts_per_step,
                        int(informative.sum()), g.prompts_per_step, padded)
        return batch, metrics | {
            "sampling/batches": float(len(informative) // g.prompts_per_step),
            "sampling/drawn_prompts": float(len(informative)),
            "sampling/dropped_groups": float(int((~informative).sum()) - padded),
            "sampling/padded_groups": float(padded),
        }

    def overlong(self, batch: Rollout) -> dict[str, float]:
        """grpo.overlong on the batch that trains (method.dapo.OVERLONG): mask takes truncated
        completions out of the loss, soft_penalty adds DAPO's length penalty to their rewards."""
        g = self.cfg.grpo
        cut = truncated(batch.completion_ids, batch.completion_mask, g.max_new_tokens, self.eos_id)  # (N,)
        verifier = batch.rewards
        batch.rewards, batch.completion_mask = OVERLONG[g.overlong](batch.rewards, batch.completion_mask, cut, g)
        return {
            "overlong/truncated_fraction": float(cut.float().mean()),
            "overlong/masked_fraction": float((batch.completion_mask.sum(1) == 0).float().mean()),
            "overlong/penalty_mean": float((batch.rewards - verifier).mean()),
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
            g = self.cfg.grpo
            batch.ref_logprobs = ray.get(self.reference_actor.logprobs.remote(batch, g.temperature, g.share_prompts))
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
        drawn, metrics = experience.draw(step)  # G completions per prompt, +1 / -1 on the final answer
        batch, selected = experience.select(drawn)  # the P groups that train (dynamic sampling: informative ones)
        metrics |= selected | experience.overlong(batch)  # truncated completions: masked, or a length penalty
        metrics |= experience.advantages(batch)  # group-relative
        metrics |= experience.reference(batch)  # frozen start's log-probs (beta > 0)
        return batch, metrics

    batch, metrics = shared(experience_of_step)
    t0 = time.perf_counter()
    metrics |= learner.update(batch)  # clipped surrogate + KL on this rank's rows; DDP / DeepSpeed
    t1 = time.perf_counter()
    metrics |= sync_rollouts(learner, experience.rollouts, step + 1, rank0)  # the next step samples the new policy
    metrics |= {"time/learn": t1 - t0, "time/sync": time.perf_counter() - t1}
    return batch, metrics


def sync_rollouts(learner: Learner, rollouts, version: int, rank0: bool) -> dict[str, float]:
    """The rollout actors get the learner's weights as policy `version` (rollout.sync: a broadcast
    over the sync group, or the object store), checked by checksum; the sync's metrics on every rank.
    Rank 0 sends; the other ranks walk the weights too, since ZeRO-3 gathers them collectively."""
    weights = learner.weight_source(rollouts.cfg.sync_bucket_mb << 20)
    if rank0:
        metrics = rollouts.sync(weights, version=version)
    else:
        metrics = {}
        for _ in weights.walk():  # each step of the walk is a gather every rank joins (ZeRO-3)
            pass
    return shared(lambda: metrics)


def pool_worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker of a pool (commands/rl/pool.py): the runs of its queue one
    after another on this long-lived worker group, each from its start or its last checkpoint.
    Rank 0 takes each run (a bounded wait: no collective waits long on the queue) and shares it."""
    import ray
    import ray.train

    from rayrejuv.distributed.run_queue import CLOSED
    from rayrejuv.runs.resources import set_torch_threads

    set_torch_threads(config["cpus"])  # the CPUs this Ray Train worker reserved
    workers: RLWorkers = config["workers"]
    queue, pool = config["queue"], config["pool"]
    rank0 = ray.train.get_context().get_world_rank() == 0
    while (taken := shared(lambda: ray.get(queue.take.remote(pool, TAKE_TIMEOUT)))) != CLOSED:
        if taken is None:
            continue  # nothing came: ask again
        job_id, job = taken
        taken_at = time.time()
        if job.key != config["key"]:  # the same on every rank
            if rank0:
                ray.get(queue.fail.remote(job_id, f"its workers ({job.key}) are not this pool's ({config['key']})"))
            continue
        last = grpo_run(job, workers.serving(job, rank0), rank0, taken_at,
                        stopped=lambda: ray.get(queue.stopped.remote(job_id)),  # noqa: B023 (called in the run)
                        report=lambda m: ray.get(queue.report.remote(job_id, m)))  # noqa: B023
        if rank0:
            ray.get(queue.finish.remote(job_id, None if last is None else str(last)))
        gc.collect()  # the run's learner goes before the next one's is built


def grpo_run(job: RunJob, workers: RLWorkers, rank0: bool, taken_at: float, stopped: Callable[[], bool],
             report: Callable[[dict], None]) -> Path | None:
    """One run on every rank: the GRPO loop from the run's start or its last checkpoint to cfg.steps,
    checkpoints into the run's directory; returns the last one (None when stopped: its queue job ended).
    Rank 0 reports the checkpoint steps' metrics (`report`: to the run's driver, e.g. Tune's scheduler).
    The first step records start_times (`taken_at`: time.time() the pool took the run); a token budget
    (cfg.token_budget) can end the run before cfg.steps."""
    import ray
    from tqdm.auto import tqdm

    cfg = RLConfig.model_validate(job.cfg)
    learner, tokenizer, experience, state = begin_run(cfg, job, workers, rank0)
    start, generated = state["step"], state["generated_tokens"]
    throughput = throughput_of(cfg, learner.device)
    started = start_times(job, taken_at)
    if start == 0 and cfg.eval_every:
        log_start_evaluation(experience, workers, rank0)
    if spent(cfg, generated):  # resumed after the step that reached the token budget
        return latest_checkpoint(Path(cfg.out))
    bar = tqdm(range(start, cfg.steps), desc="GRPO", unit="step", disable=not (rank0 and job.progress),
               initial=start, total=cfg.steps)
    for step in bar:
        if shared(stopped):
            return None
        t0 = time.perf_counter()
        batch, metrics = grpo_step(step, experience, learner, rank0)
        step_seconds = time.perf_counter() - t0  # the GRPO step: evaluation outside, as in verl's step timer
        metrics |= throughput.metrics(metrics["perf/total_num_tokens"], metrics["perf/generation_num_tokens"],
                                      step_seconds, metrics["time/generate"])
        generated += metrics["sampling/generated_tokens"]
        metrics["sampling/generated_tokens_total"] = generated  # cumulative, across a resume
        done = step + 1
        last = done == cfg.steps or spent(cfg, generated)
        if cfg.eval_every and (done % cfg.eval_every == 0 or last):
            metrics |= shared(lambda: experience.evaluate(done))  # noqa: B023 (called at once)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["throughput/tokens_per_s"] = batch.num_tokens / metrics["time/step"]
        if step == start:
            metrics |= started  # a warm pool: time/run_start < 3 s
        if rank0:
            ray.get(workers.sink.log.remote(done, metrics))
            bar.set_postfix(reward=f"{metrics['reward/mean']:+.3f}", entropy=f"{metrics['policy/entropy']:.3f}")
        if done % cfg.checkpoint_every == 0 or last:
            save_checkpoint(learner, tokenizer, Path(cfg.out), done, {"step": done, "generated_tokens": generated},
                            cfg.keep_checkpoints)
            if rank0:
                report({k: float(v) for k, v in metrics.items()} | {"step": done})
        if last:
            break
    return latest_checkpoint(Path(cfg.out))


def start_times(job: RunJob, taken_at: float) -> dict[str, float]:
    """time/run_start (the driver's preparation, then the pool's part from taking the run), its
    preparation part, and time/queued (submitted to taken)."""
    return {"time/run_start": job.prepared + time.time() - taken_at, "time/run_prepare": job.prepared,
            "time/queued": taken_at - job.submitted}


def log_start_evaluation(experience: Experience, workers: RLWorkers, rank0: bool) -> None:
    """The evaluation of the start (step 0), on every rank; rank 0 logs it."""
    import ray

    evals = shared(lambda: experience.evaluate(0))
    if rank0:
        ray.get(workers.sink.log.remote(0, evals))


def spent(cfg: RLConfig, generated: int) -> bool:
    """Whether a run that has generated `generated` tokens has reached its token budget (none: never)."""
    return cfg.token_budget is not None and generated >= cfg.token_budget


def begin_run(cfg: RLConfig, job: RunJob, workers: RLWorkers, rank0: bool):
    """What a run needs on this rank before its first step: the learner loaded from the start or
    the last checkpoint (the optimizer, the RNG and the step with it), the reference holding the
    start, the rollout actors holding the learner's weights, the sink's records up to the step
    resumed from (a resumed run redoes the steps after its checkpoint), and the step's Experience."""
    import ray

    from rayrejuv.models.loading import pad_id

    torch.manual_seed(cfg.seed)
    learner, tokenizer, state = start_learner(cfg)
    if rank0:
        workers.load_reference(cfg)
    experience = Experience(cfg, job.rows, job.eval_rows, workers, pad_id(tokenizer), tokenizer.eos_token_id)
    sync_rollouts(learner, workers.rollouts, state["step"], rank0)
    if rank0:
        ray.get(workers.sink.truncate.remote(state["step"]))
    return learner, tokenizer, experience, state


def throughput_of(cfg: RLConfig, device: torch.device) -> Throughput:
    """What this run's perf/* metrics divide by: its GPU demand (1 when it reserves none: a
    CPU-only run), the policy's parameters, the peak FLOP/s of one GPU for perf/mfu (grpo.peak_tflops,
    else the learner's GPU in method.throughput.PEAK_TFLOPS; none on CPU unless given)."""
    from rayrejuv.io.checkpoint import Checkpoint

    g = cfg.grpo
    with Checkpoint(cfg.model, role="policy") as ckpt:
        params = sum(ckpt.meta(name).numel for name in ckpt.names)
    tflops = g.peak_tflops
    if tflops is None and device.type == "cuda":
        tflops = peak_tflops(torch.cuda.get_device_name(device))
    return Throughput(gpus=cfg.gpu_demand() or 1.0, params=params, updates=g.updates_per_batch,
                      forward_passes=int(g.scores_old_policy) + int(g.beta > 0),
                      peak_flops=None if tflops is None else tflops * 1e12)


def start_learner(cfg: RLConfig) -> tuple[Learner, Any, dict]:
    """This rank's learner from cfg.model, or from the run's last checkpoint, and the trainer state
    ({"step", "generated_tokens"}: what the run had done)."""
    import ray.train.torch

    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.loading import DTYPES, from_pretrained, load_tokenizer

    tokenizer = load_tokenizer(Checkpoint(cfg.model, role="policy"))
    device = ray.train.torch.get_device() if cfg.learner.use_gpu else torch.device("cpu")
    learner = Learner(from_pretrained(cfg.model, DTYPES[cfg.learner.dtype]), cfg.grpo, cfg.learner, device)
    restored = latest_checkpoint(Path(cfg.out))
    if restored is None:
        return learner, tokenizer, {"step": 0, "generated_tokens": 0.0}
    learner.load(restored)
    return learner, tokenizer, json.loads((restored / STATE_FILE).read_text())


def checkpoint_steps(root: Path) -> dict[int, Path]:
    """The run's complete checkpoints by step: <root>/ray/grpo/checkpoint_*, each with its trainer
    state (written last, so one without it is incomplete; Ray Train's own, before the pool, too)."""
    found = {}
    for d in sorted((root / CHECKPOINTS).glob("checkpoint_*")):
        if (d / STATE_FILE).is_file():
            found[json.loads((d / STATE_FILE).read_text())["step"]] = d
    return found


def latest_checkpoint(root: Path) -> Path | None:
    steps = checkpoint_steps(root)
    return steps[max(steps)] if steps else None


def save_checkpoint(learner: Learner, tokenizer, root: Path, step: int, state: dict, keep: int) -> None:
    """Every rank: the learner's checkpoint of `step` (model/, the full-precision weights, each rank's
    optimizer state) into <root>/ray/grpo/checkpoint_<step>, atomically (a temporary sibling renamed
    into place once every rank has written, the trainer state last); only the newest `keep` stay.
    Written by the run itself, not by Ray Train: a pool's fit serves many runs, each its own directory."""
    import shutil

    from rayrejuv.io.writer import AtomicDir

    out = AtomicDir(root / CHECKPOINTS / f"checkpoint_{step:06d}", overwrite=True)
    rank0 = _rank0()
    if rank0:
        out.tmp.mkdir(parents=True)
    tmp = Path(shared(lambda: str(out.tmp)))  # every rank writes into rank 0's temporary directory
    learner.save(tmp, tokenizer)
    _barrier()  # every rank's files are in
    if rank0:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        out.commit()
        steps = checkpoint_steps(root)
        stale = [steps[s] for s in sorted(steps)[:-keep]] + list((root / CHECKPOINTS).glob(".checkpoint_*"))
        for d in stale:  # older checkpoints, and the temporary directories of an interrupted save
            shutil.rmtree(d, ignore_errors=True)
    _barrier()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
