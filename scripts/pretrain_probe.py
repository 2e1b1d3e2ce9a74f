"""Pre-train a demo world's base with another schedule and score it, for docs/testbed.md ("Can the
base be pre-trained in fewer steps?"): the demo's world (WORLD_RECIPE) with optional overrides, the
base trained at (batch, lr, schedule, epochs), then greedy pass@1 on eval_general. Appends a JSON
line (time, s/step, final loss = mean of the last 20 steps, loss every 50 steps, general) to --log.

    .venv/bin/python scripts/pretrain_probe.py --lr 1e-3 --schedule constant --epochs 2 \
        --world '{"data": {"ood_max": 20, "id_max": 10}}' [--threads 2] [--log probe.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--schedule", choices=("constant", "cosine"), required=True)
    ap.add_argument("--epochs", type=float, required=True)
    ap.add_argument("--world", default="{}", help="JSON overrides of the demo's world (as in the demo's YAML)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", type=Path, default=Path("pretrain_probe.jsonl"))
    args = ap.parse_args()

    import torch

    from rayrejuv.commands.demo.config import DemoConfig
    from rayrejuv.commands.testbed import driver
    from rayrejuv.commands.testbed.config import TinyWorldConfig
    from rayrejuv.models.evaluate import greedy_pass_at_1
    from rayrejuv.testbed.tokenizer import build_char_tokenizer
    from rayrejuv.testbed.train import train_pairs

    torch.set_num_threads(args.threads)
    overrides = json.loads(args.world)
    cfg = DemoConfig(world=overrides) if overrides else DemoConfig()
    with tempfile.TemporaryDirectory() as tmp:
        wc = TinyWorldConfig(**cfg.world.model_dump(), out=Path(tmp))
        rows = driver.write_data(driver.WorldLayout(Path(tmp)), wc)
    tok = build_char_tokenizer()
    torch.manual_seed(wc.seed)
    model = driver._new_model(wc, tok)
    t0 = time.perf_counter()
    losses = train_pairs(model, tok, driver._pretraining_rows(wc), epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch, seed=wc.seed, progress=True, lr_schedule=args.schedule)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        general = greedy_pass_at_1(model, tok, rows["eval_general"], 48, "never")
    result = {
        "world": overrides, "batch": args.batch, "lr": args.lr, "schedule": args.schedule, "epochs": args.epochs,
        "threads": args.threads, "steps": len(losses), "seconds": round(seconds, 1),
        "s_per_step": round(seconds / len(losses), 3), "final_loss": round(statistics.mean(losses[-20:]), 4),
        "loss_every_50": [round(statistics.mean(losses[i:i + 25]), 3) for i in range(0, len(losses), 50)],
        "general": general,
    }
    print(json.dumps(result))
    with args.log.open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    from rayrejuv.runs.kernels import pin_cpu_kernels

    pin_cpu_kernels()  # as the CLI: the same bits as the demo's on every x86-64 machine
    main()
