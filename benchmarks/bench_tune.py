"""Overhead of the search machinery of `rayrejuv tune`.

8 trials, 2 at a time, on the testbed (base + the top SFT rung). The ideal wall time with perfect
packing is sum(trial run times) / concurrency; overhead = wall / ideal - 1 (target < 10%).
A trial's own run time (rejuvenate + probe + eval, measured inside the trial) includes its RL
probe's start on a probe pool (time/run_start, printed: warm pools start a probe in seconds); the
overhead is what Tune, Optuna, the pools' own start and scheduling add around trials.

    .venv/bin/python benchmarks/bench_tune.py --testbed /tmp/tb        # builds the testbed if missing
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--testbed", type=Path, default=Path("rayrejuv-testbed"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--probe-steps", type=int, default=8)
    args = ap.parse_args()

    from rayrejuv.commands.testbed.config import TinyWorldConfig
    from rayrejuv.commands.testbed.driver import WorldLayout, build_testbed
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.commands.tune.driver import run_tune

    world = TinyWorldConfig(out=args.testbed, tracking={"enabled": False})
    build_testbed(world, progress=True)
    layout = WorldLayout(args.testbed)
    top = max(world.train.sft_epochs)
    out = Path(tempfile.mkdtemp(prefix="bench-tune-")) / "search"
    cfg = TuneConfig(
        base=layout.base, sft=layout.sft(top), calibration=layout.data("calibration"),
        train_data=layout.data("rl_train"), eval_data=layout.data("eval_id"), ood_data=layout.data("eval_ood"),
        out=out, num_samples=args.trials, max_concurrent=args.concurrent, eval_examples=50,
        keep_best=args.trials,  # every trial's probe stays, for its time/run_start
        probe={"steps": args.probe_steps, "report_every": 2,
               "rl": {"grpo": {"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 48, "lr": 1e-4,
                               "beta": 0.0}}},
        tracking={"enabled": False},
    )
    s = run_tune(cfg, progress=False)
    ideal = s.trial_seconds_sum / args.concurrent
    print((out / "leaderboard.md").read_text())
    starts = sorted(run_starts(out))
    print(f"{args.trials} trials, {args.concurrent} concurrent: search wall {s.wall_seconds:.1f}s, "
          f"sum of trial run times {s.trial_seconds_sum:.1f}s, ideal wall {ideal:.1f}s")
    if starts:
        print(f"probe time/run_start: median {statistics.median(starts):.2f}s, max {starts[-1]:.2f}s "
              f"(the first {args.concurrent}: the pools' cold start), all {[round(x, 2) for x in starts]}")
    print(f"overhead {s.wall_seconds / ideal - 1:+.1%} (target < 10%)")


def run_starts(out: Path) -> list[float]:
    """Each trial probe's time/run_start (its first step's record in metrics.jsonl)."""
    found = []
    for metrics in out.glob("trials/*/probe/metrics.jsonl"):
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        found += [r["time/run_start"] for r in records if "time/run_start" in r]
    return found


if __name__ == "__main__":
    main()
