"""The demo's two training steps, its recipe against session 12's, in one run.

1. A pre-training step of the demo's world (the world's own texts, batch 64, 2 torch threads):
   `world.train.micro_batches` 3 (length-sorted micro-batches, each padded to its own longest;
   jobs/demo/micro-batched-world.yaml) vs 1 (one batch padded to its longest row: the default, whose
   floats the demo's findings were measured on).
2. A GRPO learner update (the demo's model shape, 8 prompts x 8 samples with the world's prompt
   lengths and ragged completions, one torch thread: a demo RL run holds one core): the demo's
   recipe (each group's prompt once, grpo.share_prompts; the step in one micro-batch; no gradient
   checkpointing) vs one group per trimmed micro-batch without sharing (session 16's) and the whole
   batch with checkpointing (session 12's).
3. A rollout step's sampling (8 prompts x 8 samples, 48 new tokens at most, one thread): each
   prompt's prefill once (share_prompts) vs generate's own prefill of every row.

Each pair computes the same step (tests/test_world_train.py, tests/test_rl_parts.py,
tests/test_shared_prompts.py); the ratio
is time(ours) / time(peer), medians over repeats, interleaved so drift hits both alike.

    .venv/bin/python benchmarks/bench_demo_steps.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from rayrejuv.commands.demo.config import WORLD_RECIPE
from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.commands.testbed.driver import _new_model, _pretraining_rows
from rayrejuv.config.rl import LearnerConfig
from rayrejuv.data.calibration import tokenize_pairs
from rayrejuv.distributed.learner import Learner
from rayrejuv.models.logprobs import sample
from rayrejuv.models.rollout import Rollout, left_pad
from rayrejuv.testbed.tokenizer import build_char_tokenizer
from rayrejuv.testbed.train import batch_order, micro_batches, response_loss

MICRO_BATCHES = 3  # jobs/demo/micro-batched-world.yaml


def pretrain_step_seconds(count: int, steps: list[list], model, opt, pad_id: int) -> float:
    t0 = time.perf_counter()
    for rows in steps:
        micros = micro_batches(rows, count, pad_id)
        num_tokens = None if count == 1 else sum(int(m.response_mask.sum()) for m in micros)
        opt.zero_grad(set_to_none=True)
        for m in micros:
            response_loss(model, m, num_tokens).backward()
        opt.step()
    return (time.perf_counter() - t0) / len(steps)


def rollout(tok, prompt_lengths: list[int], group: int) -> Rollout:
    """8 prompts of the given lengths x `group` completions of 20-45 tokens (EOS-terminated, padded to 48)."""
    rng = random.Random(0)
    ids, mask = left_pad([[rng.randrange(3, len(tok)) for _ in range(n)] for n in prompt_lengths], tok.pad_token_id)
    N, T = len(prompt_lengths) * group, 48
    completion = torch.full((N, T), tok.pad_token_id)
    completion_mask = torch.zeros(N, T, dtype=torch.long)
    for i in range(N):
        n = rng.randint(20, 45)
        completion[i, :n] = torch.tensor([rng.randrange(3, len(tok)) for _ in range(n)])
        completion_mask[i, :n] = 1
    b = Rollout(prompt_ids=ids.repeat_interleave(group, 0), prompt_mask=mask.repeat_interleave(group, 0),
                completion_ids=completion, completion_mask=completion_mask,
                logprobs=-torch.rand(N, T) * completion_mask, texts=[""] * N, group=torch.arange(N) // group)
    b.advantages = torch.randn(N, generator=torch.Generator().manual_seed(0))
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    world = TinyWorldConfig(**WORLD_RECIPE.model_dump())
    tok = build_char_tokenizer()

    torch.set_num_threads(2)  # as the world build (testbed.driver.WORLD_THREADS)
    examples = tokenize_pairs(tok, _pretraining_rows(world), 1 << 16, "auto")
    t = world.train
    order = batch_order(len(examples), 2 * args.repeats, t.pretrain_batch_size, world.seed)
    model = _new_model(world, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=t.pretrain_lr, weight_decay=0.0)
    times: dict[int, list[float]] = {MICRO_BATCHES: [], 1: []}
    for r in range(args.repeats):
        steps = [[examples[i] for i in order[s]] for s in (2 * r, 2 * r + 1)]
        for count in times:  # interleaved: ours, then the peer, on the same two batches
            times[count].append(pretrain_step_seconds(count, steps, model, opt, tok.pad_token_id))
    ours, peer = (statistics.median(times[k]) for k in (MICRO_BATCHES, 1))
    print(f"pre-training step: micro_batches {MICRO_BATCHES} (ours) {ours:.3f} s; 1 (peer) {peer:.3f} s; "
          f"ratio ours/peer {ours / peer:.2f}")

    torch.set_num_threads(1)  # a demo RL run's learner and rollout actor hold one core each
    from rayrejuv.commands.demo.config import GRPO_RECIPE, LEARNER_RECIPE

    g = GRPO_RECIPE
    b = rollout(tok, [70, 73, 71, 73, 89, 89, 81, 84], g.group_size)  # the world's `hard` prompts, rendered
    recipes = {  # name: (micro_batch_size, share_prompts, gradient checkpointing)
        "ours": (g.micro_batch_size, g.share_prompts, LEARNER_RECIPE.gradient_checkpointing),
        "one group per micro-batch (session 16)": (g.group_size, False, False),
        "whole batch, checkpointing (session 12)": (len(b), False, True),
    }
    learners = {}
    for name, (micro, share, checkpointing) in recipes.items():
        grpo = g.model_copy(update={"micro_batch_size": micro, "share_prompts": share})
        learners[name] = Learner(_new_model(world, tok), grpo, LearnerConfig(gradient_checkpointing=checkpointing),
                                 torch.device("cpu"))
        learners[name].update(b)  # warm-up
    updates: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():  # interleaved
            t0 = time.perf_counter()
            learner.update(b)
            updates[name].append(time.perf_counter() - t0)
    ours = statistics.median(updates["ours"])
    print(f"GRPO update (ours: micro_batch_size {g.micro_batch_size}, share_prompts {g.share_prompts}, no "
          f"checkpointing) {ours:.3f} s")
    for name in list(recipes)[1:]:
        peer = statistics.median(updates[name])
        print(f"  peer {name}: {peer:.3f} s; ratio ours/peer {ours / peer:.2f}")

    model = _new_model(world, tok).eval()
    prompts = [b.prompt_ids[i][b.prompt_mask[i].bool()].tolist() for i in range(0, len(b), g.group_size)]
    samples: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.repeats + 1):
        for share in samples:
            t0 = time.perf_counter()
            sample(model, tok, prompts, n=g.group_size, temperature=1.0, max_new_tokens=g.max_new_tokens, seed=r,
                   share_prompts=share)
            if r:  # the first round warms up
                samples[share].append(time.perf_counter() - t0)
    ours, peer = (statistics.median(samples[k]) for k in (True, False))
    print(f"rollout sample, 8 prompts x {g.group_size}: shared prefill (ours) {ours:.3f} s; generate's own "
          f"(peer) {peer:.3f} s; ratio ours/peer {ours / peer:.2f}")


if __name__ == "__main__":
    main()
