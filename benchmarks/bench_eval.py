"""The demo's scoring of one checkpoint: greedy pass@1 on its two eval splits (1000 prompts each by
default), batches of 256 prompts cut from the prompts sorted by length (ours: models.evaluate.generate)
vs cut in the splits' order (the peer: generate on each 256-prompt slice, the batches of sessions
9-16). One torch thread, as a demo scoring task; interleaved repeats, medians; the scores of both.

    .venv/bin/python benchmarks/bench_eval.py --world rayrejuv-demo/testbed [--checkpoint sft/epoch-64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rayrejuv.data.chat import encode_prompts
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.method.rewards import is_correct
from rayrejuv.models.evaluate import generate
from rayrejuv.models.loading import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, required=True, help="a demo's testbed directory (OUT/testbed)")
    ap.add_argument("--checkpoint", default="sft/epoch-64", help="the checkpoint, relative to --world")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256, help="prompts per generate (score_checkpoint's 256)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = Checkpoint(args.world / args.checkpoint, role="evaluated")
    model, tok = load_model(ckpt, torch.float32, torch.device("cpu")), load_tokenizer(ckpt)
    splits = {name: read_jsonl(args.world / "data" / f"eval_{name}.jsonl", ("prompt", "answer"), name)[: args.examples]
              for name in ("hard", "general")}
    prompts = {name: encode_prompts(tok, [r["prompt"] for r in rows], "auto") for name, rows in splits.items()}

    def ours(ids):
        return generate(model, tok, ids, num_samples=1, do_sample=False, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)

    def peer(ids):
        b = args.batch_size
        return [t for i in range(0, len(ids), b) for t in ours(ids[i : i + b])]

    times: dict[str, list[float]] = {"ours": [], "peer": []}
    scores: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("peer", peer)):
            t0 = time.perf_counter()
            texts = {s: fn(ids) for s, ids in prompts.items()}
            times[name].append(time.perf_counter() - t0)
            scores[name] = {s: sum(is_correct(t[0], r["answer"]) for t, r in zip(texts[s], splits[s])) / len(splits[s])
                            for s in splits}
    o, p = (statistics.median(times[k]) for k in ("ours", "peer"))
    print(f"greedy pass@1, {args.examples} prompts x {len(splits)} splits of {args.checkpoint}: length-sorted batches "
          f"(ours) {o:.2f} s, scores {scores['ours']}; batches in order (peer) {p:.2f} s, scores {scores['peer']}; "
          f"ratio ours/peer {o / p:.2f}")


if __name__ == "__main__":
    main()
