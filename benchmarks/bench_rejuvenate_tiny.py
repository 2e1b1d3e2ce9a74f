"""Full rejuvenation (fusion + targeted reset, 64 calibration examples) of tiny local models.

Times each phase in-process and prints the report's summary. Peer measured in the same run:
fusion alone on the same pair, so the cost of the reset (entropy + attribution passes) shows as a
ratio.

    .venv/bin/python benchmarks/bench_rejuvenate_tiny.py [--family qwen3] [--layers 4] [--hidden 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rejuvenate.driver import rejuvenate
from rayrejuv.testbed import arith
from rayrejuv.testbed.tiny import build_model, perturb, save, tiny_config
from rayrejuv.testbed.tokenizer import build_char_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen3")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rejuvenate_tiny.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rejuv-"))
    tok = build_char_tokenizer()
    cfg = tiny_config(
        args.family,
        len(tok),
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_layers=args.layers,
        num_heads=4,
        num_kv_heads=2,
    )
    model = build_model(cfg, seed=0)
    save(model, tok, work / "base", dtype=torch.bfloat16)
    save(perturb(model, 1, 0.3), tok, work / "sft", dtype=torch.bfloat16)
    calib = work / "calibration.jsonl"
    calib.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n"
            for r in arith.problems(args.examples, 9, seed=7)
        )
    )
    params = sum(p.numel() for p in model.parameters())

    def run(fusion_only: bool) -> tuple[float, dict]:
        c = RejuvenateConfig(
            base=work / "base",
            sft=work / "sft",
            out=work / f"out-{fusion_only}",
            calibration=calib,
            fusion_only=fusion_only,
            tracking={"enabled": False},
        )
        t0 = time.perf_counter()
        report = rejuvenate(c, progress=False)
        return time.perf_counter() - t0, report

    fusion_s, _ = run(True)
    full_s, report = run(False)
    result = {
        "model": {"family": args.family, "layers": args.layers, "hidden": args.hidden, "params": params},
        "calibration_examples": args.examples,
        "fusion_only_s": fusion_s,
        "rejuvenation_s": full_s,
        "rejuvenation_over_fusion": full_s / fusion_s,
        "phases_s": report["timings_s"],
        "reset_count": report["reset_count"],
        "num_neurons": report["num_neurons"],
        "reconstruction_error_max": report["attribution"]["reconstruction_error_max"],
        "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{args.family} {params / 1e6:.2f}M params, {args.examples} calibration examples, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  fusion only        {fusion_s:7.2f} s")
    print(f"  fusion + reset     {full_s:7.2f} s   ({full_s / fusion_s:.1f}x fusion only)")
    print("  phases             " + ", ".join(f"{k} {v:.2f}s" for k, v in report["timings_s"].items()))
    print(
        f"  reset              {report['reset_count']} of {report['num_neurons']} neurons; "
        f"max |logit reconstruction error| {result['reconstruction_error_max']:.2e}"
    )


if __name__ == "__main__":
    main()
