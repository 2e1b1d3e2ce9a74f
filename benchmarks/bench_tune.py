"""Overhead of the search machinery of `rayrejuv tune`.

8 trials, 2 at a time, on the testbed (base + the top SFT rung). The ideal wall time with perfect
packing is sum(trial run times) / concurrency; overhead = wall / ideal - 1 (target < 15%).
A trial's own run time (rejuvenate + probe + eval, measured inside the trial) includes its RL
probe's Ray Train start-up; the overhead is what Tune, Optuna and scheduling add around trials.

    .venv/bin/python benchmarks/bench_tune.py --testbed /tmp/tb        # builds the testbed if missing
"""

from __future__ import annotations

import argparse
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
        probe={"steps": args.probe_steps, "report_every": 2,
               "rl": {"grpo": {"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 48, "lr": 1e-4,
                               "beta": 0.0}}},
        tracking={"enabled": False},
    )
    s = run_tune(cfg, progress=False)
    ideal = s.trial_seconds_sum / args.concurrent
    print((out / "leaderboard.md").read_text())
    print(f"{args.trials} trials, {args.concurrent} concurrent: search wall {s.wall_seconds:.1f}s, "
          f"sum of trial run times {s.trial_seconds_sum:.1f}s, ideal wall {ideal:.1f}s")
    print(f"overhead {s.wall_seconds / ideal - 1:+.1%} (target < 15%)")


if __name__ == "__main__":
    main()
