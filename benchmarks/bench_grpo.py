"""rayrejuv rl (hf backend, CPU, Ray) against TRL's GRPOTrainer, in the same run.

Same tiny model (the adder task after a short SFT), data, group size, prompts per step, max new
tokens, learning rate, loss (token-mean clipped surrogate, group-scaled advantages, beta 0) and
number of steps. Each side runs in its own process; a poller sums the RSS of that process tree
(for rayrejuv that includes Ray's own services). Prints time per step, peak RSS and reward curves.

    .venv/bin/pip install 'trl==1.16.0' psutil
    .venv/bin/python benchmarks/bench_grpo.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

P, G, MAX_NEW, LR = 8, 8, 8, 1e-3


def ours(work: Path, steps: int) -> dict:
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.config.runtime import TrackingConfig

    cfg = RLConfig(
        model=work / "model", train_data=work / "train.jsonl", out=work / "ours", steps=steps,
        eval_every=0, checkpoint_every=steps,
        grpo={"prompts_per_step": P, "group_size": G, "max_new_tokens": MAX_NEW, "lr": LR, "beta": 0.0,
              "micro_batch_size": P * G},
        tracking=TrackingConfig(enabled=False),
    )
    run_rl(cfg, progress=False)
    recs = [json.loads(x) for x in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "reward/mean" in r]
    return {"step_s": [r["time/step"] for r in recs], "reward": [r["reward/mean"] for r in recs]}


def trl(work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayrejuv.method.rewards import is_correct

    torch.set_num_threads(1)  # as our actors: one core for rollouts, one for the learner
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    ds = Dataset.from_list(rows)
    rewards: list[float] = []

    def reward(completions, answer, **_):
        r = [1.0 if is_correct(c, a) else -1.0 for c, a in zip(completions, answer)]
        rewards.append(sum(r) / len(r))
        return r

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t, self.times = None, []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        num_generations=G, per_device_train_batch_size=P * G, gradient_accumulation_steps=1, max_steps=steps,
        max_completion_length=MAX_NEW, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, beta=0.0, temperature=1.0, logging_steps=1, save_strategy="no", seed=0,
        scale_rewards="group", loss_type="dapo", shuffle_dataset=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "model"),
        reward_funcs=reward, args=args, train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[timer],
    )
    trainer.train()
    return {"step_s": timer.times, "reward": rewards}


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(side: str, work: Path, steps: int) -> dict:
    """Run one side in a fresh process, polling its process tree's RSS."""
    out = work / f"{side}.json"
    env = {**os.environ, "HOME": str(work / "home"), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(steps)],
                            env=env)
    peak = [0]

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=poll)
    th.start()
    proc.wait()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{side} failed with exit code {proc.returncode}")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_gb"] = peak[0] / 1e9
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--side", choices=["ours", "trl"])
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    if args.side:
        res = {"ours": ours, "trl": trl}[args.side](args.work, args.steps)
        (args.work / f"{args.side}.json").write_text(json.dumps(res))
        return

    import torch

    from rayrejuv.testbed.adder import build_adder

    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    torch.set_num_threads(1)
    paths = build_adder(work / "adder", sft_epochs=3, max_n=3)
    for k in ("model",):
        os.symlink(paths[k], work / k)
    os.symlink(paths["train"], work / "train.jsonl")
    results = {side: measure(side, work, args.steps) for side in ("trl", "ours")}
    skip = 2  # first steps include one-off warm-up (allocations, first generate)

    def mean(xs):
        return sum(xs) / max(1, len(xs))

    print(f"\nGRPO, {args.steps} steps, {P} prompts x {G} samples, {MAX_NEW} new tokens, lr {LR}; work dir {work}")
    print(f"{'':>10} {'step s (mean, after 2)':>24} {'wall s':>8} {'peak RSS GB':>12} {'reward first5 -> last5':>24}")
    for side, r in results.items():
        print(f"{side:>10} {mean(r['step_s'][skip:]):24.3f} {r['wall_s']:8.1f} {r['peak_rss_gb']:12.2f} "
              f"{mean(r['reward'][:5]):+11.3f} -> {mean(r['reward'][-5:]):+.3f}")
    o, t = results["ours"], results["trl"]
    print(f"ratio ours/TRL: time per step {mean(o['step_s'][skip:]) / mean(t['step_s'][skip:]):.2f}x (target <= 1.0), "
          f"peak RSS {o['peak_rss_gb'] / t['peak_rss_gb']:.2f}x, wall {o['wall_s'] / t['wall_s']:.2f}x")
    print("reward curves (mean reward per step):")
    for side, r in results.items():
        print(f"  {side}: " + " ".join(f"{x:+.2f}" for x in r["reward"]))


if __name__ == "__main__":
    main()
