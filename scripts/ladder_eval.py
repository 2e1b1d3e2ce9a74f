"""Measure a tiny world's ladder for docs/testbed.md: per checkpoint (the base, every SFT epoch,
OverSFT fused with the base at some alphas), greedy pass@1 on eval_id, the RL split's eval and
eval_general, the teacher-forced entropy on eval_id, and on the first prompts of the RL split
8 samples at T=1 each: their accuracy and the fraction of prompts whose 8 samples all get the
same reward (GRPO's zero-variance groups). One process per core, one torch thread each.

    .venv/bin/python scripts/ladder_eval.py WORLD_DIR [--alphas 0.4 0.5 0.6] [--oversft 32] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path


def _rows(world: Path, name: str, n: int) -> list[dict]:
    from rayrejuv.data.jsonl import read_jsonl

    return read_jsonl(world / "data" / f"{name}.jsonl", ("prompt", "answer"), name)[:n]


def _load(world: Path, name: str):
    """(model, tokenizer) of `name`: 'base', 'epoch-<e>', or 'fusion-<alpha>' (OverSFT fused with the base)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrejuv.method.fusion import fuse

    tok = AutoTokenizer.from_pretrained(world / "tokenizer")
    if name.startswith("fusion-"):
        alpha, over = name.removeprefix("fusion-").split("@")
        model = AutoModelForCausalLM.from_pretrained(world / "sft" / f"epoch-{over}", dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(world / "base", dtype=torch.float32).state_dict()
        model.load_state_dict({k: fuse(v, base[k], float(alpha)) for k, v in model.state_dict().items()})
        return model.eval(), tok
    path = world / "base" if name == "base" else world / "sft" / name
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


def measure(args: tuple) -> dict:
    world, name, rl_split, n_eval, n_sampled, max_new = args
    import torch

    from rayrejuv.data.chat import encode_prompts
    from rayrejuv.method.rewards import is_correct
    from rayrejuv.models.evaluate import generate, greedy_pass_at_1, teacher_forced_stats

    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = _load(world, name)
    out = {"checkpoint": name}
    with torch.no_grad():
        for split in ("id", rl_split, "general"):
            out[f"eval_{split}"] = greedy_pass_at_1(model, tok, _rows(world, f"eval_{split}", n_eval), max_new, "never")
        from rayrejuv.data.jsonl import read_jsonl

        ent_rows = read_jsonl(world / "data" / "eval_id.jsonl", ("prompt", "response"), "eval_id")[:n_eval]
        stats = teacher_forced_stats(model, tok, ent_rows, "never")
        out["entropy"], out["sft_loss"] = stats["entropy"], stats["sft_loss"]
        rows = _rows(world, f"eval_{rl_split}", n_sampled)
        samples = generate(model, tok, encode_prompts(tok, [r["prompt"] for r in rows], "never"), num_samples=8,
                           do_sample=True, temperature=1.0, max_new_tokens=max_new, batch_size=8, seed=0)
    right = [[is_correct(s, r["answer"]) for s in ss] for ss, r in zip(samples, rows)]
    out["sampled_accuracy"] = sum(map(sum, right)) / (8 * len(rows))
    out["zero_variance"] = sum(len(set(r)) == 1 for r in right) / len(rows)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("world", type=Path)
    p.add_argument("--alphas", type=float, nargs="*", default=[0.4, 0.5, 0.6])
    p.add_argument("--oversft", default="32")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--sampled", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--checkpoints", nargs="*", help="only these (base, epoch-<e>, fusion-<alpha>@<epoch>)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    spec = json.loads((a.world / "testbed.json").read_text())
    rl_split = spec["config"]["data"]["rl_distribution"]
    names = ["base", *sorted((d.name for d in (a.world / "sft").iterdir() if d.name.startswith("epoch-")),
                             key=lambda s: float(s.removeprefix("epoch-")))]
    names += [f"fusion-{x}@{a.oversft}" for x in a.alphas]
    names = a.checkpoints or names
    jobs = [(a.world, n, rl_split, a.examples, a.sampled, a.max_new_tokens) for n in names]
    with mp.get_context("spawn").Pool(a.procs) as pool:
        results = pool.map(measure, jobs, chunksize=1)
    header = ["checkpoint", "sft_loss", "entropy", "eval_id", f"eval_{rl_split}", "eval_general", "sampled_accuracy",
              "zero_variance"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in results:
        print("| " + " | ".join(r[h] if h == "checkpoint" else f"{r[h]:.3f}" for h in header) + " |")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    from rayrejuv.runs.kernels import pin_cpu_kernels

    pin_cpu_kernels()  # as the CLI: the same bits as the demo's on every x86-64 machine
    main()
