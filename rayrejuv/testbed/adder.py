"""A seconds-to-build RL task for tests and benchmarks: one-digit addition `Q:a+b?A:` -> `#### s`.

A tiny model given a few epochs of SFT answers about 10% of samples correctly: enough reward
variance inside groups for GRPO to learn from, and plenty of room to improve.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch


def rows(n: int, seed: int, max_n: int = 6) -> list[dict[str, str]]:
    rng = random.Random(f"adder:{seed}")
    out = []
    for _ in range(n):
        a, b = rng.randint(0, max_n), rng.randint(0, max_n)
        out.append({"prompt": f"Q:{a}+{b}?A:", "response": f"#### {a + b}", "answer": str(a + b)})
    return out


def build_adder(
    out: Path, seed: int = 0, sft_epochs: float = 6.0, family: str = "qwen3", max_n: int = 6
) -> dict[str, Path]:
    """model/ (HF checkpoint after a short SFT), train.jsonl and eval.jsonl of {prompt, answer}."""
    from rayrejuv.testbed.tiny import build_model, save, tiny_config
    from rayrejuv.testbed.tokenizer import build_char_tokenizer
    from rayrejuv.testbed.train import train_pairs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer()
    cfg = tiny_config(family, len(tok), hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=32)
    torch.manual_seed(seed)
    model = build_model(cfg, seed=seed)
    sft = rows(256, seed, max_n)
    train_pairs(model, tok, sft, epochs=sft_epochs, lr=3e-3, batch_size=32, seed=seed, progress=False)
    save(model, tok, out / "model")
    paths = {"model": out / "model", "train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    for name, data in (("train", rows(512, seed + 1, max_n)), ("eval", rows(64, seed + 2, max_n))):
        paths[name].write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in data))
    return paths
