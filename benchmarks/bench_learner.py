"""The learner's GRPO update with and without the old-policy scoring pass, in one run.

With one optimizer step per batch (updates_per_batch 1, minibatches 1: the default) the learner
takes `old` from the training forward itself (GRPOConfig.scores_old_policy False); the peer is the
same update with the scoring pass forced (what every step did before). The demo's shapes: the tiny
world's model (hidden 128, 4 layers, character vocabulary), 8 prompts x 8 samples, a 3-step prompt
of ~60 characters and a ~40-character completion; one torch thread (a demo RL run holds one core).

    .venv/bin/python benchmarks/bench_learner.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rayrejuv.config.rl import GRPOConfig, LearnerConfig
from rayrejuv.distributed.learner import Learner
from rayrejuv.models.rollout import Rollout
from rayrejuv.testbed.tiny import build_model, tiny_config

N, P, T, VOCAB = 64, 60, 40, 48


def batch() -> Rollout:
    g = torch.Generator().manual_seed(0)
    b = Rollout(
        prompt_ids=torch.randint(3, VOCAB, (N, P), generator=g),
        prompt_mask=torch.ones(N, P, dtype=torch.long),
        completion_ids=torch.randint(3, VOCAB, (N, T), generator=g),
        completion_mask=torch.ones(N, T, dtype=torch.long),
        logprobs=-torch.rand(N, T, generator=g),
        texts=[""] * N,
        group=torch.arange(N) // 8,
        rewards=torch.zeros(N),
    )
    b.advantages = torch.randn(N, generator=g)
    return b


def seconds_per_update(scored: bool, repeats: int) -> float:
    GRPOConfig.scores_old_policy = property(lambda self: scored)  # the one switch, forced for the peer
    config = tiny_config("qwen3", VOCAB, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=2,
                         num_kv_heads=1, head_dim=64)
    learner = Learner(build_model(config, seed=0), GRPOConfig(micro_batch_size=N, beta=0.0, lr=1e-5),
                      LearnerConfig(), torch.device("cpu"))
    b = batch()
    learner.update(b)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        learner.update(b)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    default = GRPOConfig.scores_old_policy
    try:
        ours = seconds_per_update(False, args.repeats)
        peer = seconds_per_update(True, args.repeats)
    finally:
        GRPOConfig.scores_old_policy = default
    print(f"update, no scoring pass (ours): {ours:.3f} s; with the scoring pass (peer): {peer:.3f} s; "
          f"ratio ours/peer {ours / peer:.2f}")


if __name__ == "__main__":
    main()
