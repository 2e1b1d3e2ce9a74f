"""`rayrejuv demo` (core version): build a tiny base and an over-trained SFT model locally,
rejuvenate the SFT model, and show what fusion + reset did to its token entropy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rayrejuv.config import RejuvenateConfig, TrackingConfig
from rayrejuv.data.calibration import batches, tokenize_pairs
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.models.loading import load_model, load_tokenizer, pad_id
from rayrejuv.models.probe import response_entropy
from rayrejuv.pipelines.rejuvenate import rejuvenate
from rayrejuv.testbed import arith
from rayrejuv.testbed.tiny import build_model, save, tiny_config
from rayrejuv.testbed.tokenizer import build_char_tokenizer


def build_pair(out: Path, seed: int, progress: bool) -> tuple[Path, Path, Path]:
    """base: 'pre-trained' on plain equations; sft: fine-tuned far too long on worked problems."""
    from rayrejuv.testbed.train import train_pairs

    base_dir, sft_dir, calib = out / "base", out / "sft", out / "calibration.jsonl"
    if base_dir.is_dir() and sft_dir.is_dir() and calib.is_file():
        return base_dir, sft_dir, calib
    tok = build_char_tokenizer()
    model = build_model(tiny_config("llama", len(tok), hidden_size=64, intermediate_size=128, num_layers=2), seed)
    train_pairs(
        model,
        tok,
        arith.pretraining_rows(4000, 12, seed),
        epochs=1,
        lr=3e-3,
        batch_size=32,
        seed=seed,
        desc="pre-train base",
        progress=progress,
    )
    save(model, tok, base_dir)
    sft_rows = [{"prompt": r["prompt"], "response": r["response"]} for r in arith.problems(256, 9, seed + 1)]
    train_pairs(model, tok, sft_rows, epochs=16, lr=3e-3, batch_size=32, seed=seed, desc="over-SFT", progress=progress)
    save(model, tok, sft_dir)
    with open(calib, "w") as f:
        for r in arith.problems(64, 9, seed + 2):
            f.write(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n")
    return base_dir, sft_dir, calib


def mean_response_entropy(ckpt_dir: Path, calib: Path) -> float:
    ckpt = Checkpoint(ckpt_dir)
    tok = load_tokenizer(ckpt)
    rows = [json.loads(line) for line in calib.read_text().splitlines()]
    model = load_model(ckpt, torch.float32, torch.device("cpu"))
    hs = [response_entropy(model, b)[b.response_mask] for b in batches(tokenize_pairs(tok, rows, 512), 16, pad_id(tok))]
    return float(torch.cat(hs).mean())


def run_demo(out: Path, seed: int, tracking: TrackingConfig, progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base, sft, calib = build_pair(out / "models", seed, progress)
    results = {}
    for name, fusion_only in (("fusion", True), ("rejuvenation", False)):
        cfg = RejuvenateConfig(
            base=base,
            sft=sft,
            out=out / name,
            calibration=calib,
            fusion_only=fusion_only,
            overwrite=True,
            tracking=tracking,
        )
        report = rejuvenate(cfg, progress=progress)
        results[name] = {"reset_count": report["reset_count"], "timings_s": report["timings_s"]}
    entropy = {
        k: mean_response_entropy(p, calib)
        for k, p in (("base", base), ("sft", sft), ("fusion", out / "fusion"), ("rejuvenation", out / "rejuvenation"))
    }
    summary = {"entropy": entropy, "runs": results, "out": str(out)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
