"""One full weight sync, learner -> one hf rollout actor on Ray (CPU): object_store vs collective vs
the floor, in the same run (issue 15's bench_sync).

    .venv/bin/python benchmarks/bench_sync.py                     # both cases
    .venv/bin/python benchmarks/bench_sync.py --case qwen3-0.6b --repeats 3

Cases: `qwen3-0.6b`, a synthetic model of Qwen3-0.6B's exact shapes (0.596B parameters, tied, bf16
checkpoint written once under benchmarks/.cache for the actor to start from); `real135m`, the real
SmolLM2-135M fixture (`rayrejuv testbed real`, bf16, tied). The learner's weights are float32 in
this process (acting as learner rank 0, one torch thread like a learner worker with one CPU), sent
in the actor's dtype (bf16: the sender casts):

    floor         a plain in-process copy of the same bytes (bf16 into preallocated bf16 tensors)
    object_store  RolloutGroup.sync with rollout.sync=object_store (cast, ray.put, load_state_dict)
    pre-issue     the same without the checksums: what RolloutGroup.sync did before issue 15
    collective    RolloutGroup.sync with rollout.sync=collective (gloo, sync_bucket_mb buckets; one
                  run per --bucket-mb), after the first sync (which also builds the group; timed apart)

Both syncs include their checksum check (sender and actor); its cost alone is printed too. GB/s are
of the bytes every actor receives. Targets: collective <= 2x the floor, >= 5x faster than object_store.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

CACHE = Path(__file__).parent / ".cache" / "sync"
QWEN3_06B = {  # Qwen/Qwen3-0.6B's config.json (the shapes that matter)
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
}


def synthetic_qwen3(out: Path) -> Path:
    """A bf16 checkpoint of Qwen3-0.6B's shapes with random weights (randn x 0.02, norms 1), written
    once; a character tokenizer (the actor loads one; nothing is generated)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen3Config

    from rayrejuv.testbed.tokenizer import build_char_tokenizer

    if (out / "model.safetensors").exists():
        return out
    cfg = Qwen3Config(**QWEN3_06B, architectures=["Qwen3ForCausalLM"], dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: tuple(p.shape) for k, p in AutoModelForCausalLM.from_config(cfg).named_parameters()}
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02)
               .to(torch.bfloat16) for k, s in shapes.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(out)
    build_char_tokenizer().save_pretrained(out)
    return out


def real_135m() -> Path:
    from rayrejuv.commands.testbed.config import RealFixtureConfig

    base = RealFixtureConfig().resolved_out() / "base"
    if not (base / "model.safetensors").exists():
        raise SystemExit(f"{base}: no real fixture; build it with `rayrejuv testbed real`")
    return base


def learner_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The learner's float32 parameters (named_parameters: tied ones once), perturbed so that a sync
    changes every byte the actor holds."""
    from rayrejuv.models.loading import from_pretrained

    model = from_pretrained(model_dir, torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return {k: p.detach() + torch.randn(p.shape, generator=g) * 1e-3 for k, p in model.named_parameters()}


def best(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def floor(weights: dict[str, torch.Tensor], repeats: int) -> dict:
    """A plain in-process copy of the bytes a sync delivers (bf16 into preallocated bf16), and the
    copy with the cast from the learner's float32 (what a sender must do at least once)."""
    sent = {k: v.to(torch.bfloat16) for k, v in weights.items()}
    dst = {k: torch.empty_like(v) for k, v in sent.items()}
    copy_s, _ = best(lambda: [dst[k].copy_(v) for k, v in sent.items()], repeats)
    cast_s, _ = best(lambda: [dst[k].copy_(v) for k, v in weights.items()], repeats)
    from rayrejuv.method.buckets import checksum

    checksum_s, _ = best(lambda: [checksum(v) for v in sent.values()], repeats)
    return {"floor_s": copy_s, "floor_with_cast_s": cast_s, "checksum_s": checksum_s,
            "gbytes": sum(v.numel() * v.element_size() for v in sent.values()) / 1e9}


def rollout_sync(model_dir: Path, weights: dict, sync: str, repeats: int, bucket_mb: int) -> dict:
    """Seconds of RolloutGroup.sync to one hf actor (1 CPU, bf16): the first (join for collective) and the best of
    `repeats` more; for object_store also the pre-issue path on the same actor."""
    from rayrejuv.config.rl import RolloutConfig
    from rayrejuv.distributed.rollout_group import RolloutGroup

    cfg = RolloutConfig(workers=1, cpus_per_worker=1, dtype="bfloat16", sync=sync, sync_bucket_mb=bucket_mb)
    group = RolloutGroup(str(model_dir), cfg, seed=0)
    try:
        version = iter(range(1, 100))
        t0 = time.perf_counter()
        metrics = group.sync(weights, version=next(version))
        first = time.perf_counter() - t0
        s, times = best(lambda: group.sync(weights, version=next(version)), repeats)
        out = {"first_s": first, "best_s": s, "times_s": times, "metrics": metrics}
        if sync == "object_store":
            out["pre_issue_s"], _ = best(lambda: pre_issue_sync(group, weights, next(version)), repeats)
        return out
    finally:
        group.shutdown()


def pre_issue_sync(group, weights: dict, version: int) -> None:
    """RolloutGroup.sync before issue 15: the state dict cast to the actors' dtype, one ray.put of it
    as out-of-band buffers, load_state_dict in every actor; no checksums."""
    import ray

    from rayrejuv.distributed.rollout_group import SharedWeights

    ref = ray.put(SharedWeights({k: v.to(torch.bfloat16) for k, v in weights.items()}))
    ray.get([a.load_weights.remote(ref, version) for a in group.actors])


def run_case(name: str, model_dir: Path, repeats: int, bucket_mbs: list[int]) -> dict:
    weights = learner_weights(model_dir)
    out = {"case": name, "params": sum(v.numel() for v in weights.values())}
    out |= floor(weights, repeats)
    out["object_store"] = rollout_sync(model_dir, weights, "object_store", repeats, bucket_mbs[0])
    out["collective"] = {mb: rollout_sync(model_dir, weights, "collective", repeats, mb) for mb in bucket_mbs}
    return out


def report(r: dict) -> None:
    gb = r["gbytes"]
    obj = r["object_store"]["best_s"]
    print(f"\n== {r['case']}: {r['params'] / 1e9:.3f}B parameters, {gb:.3f} GB sent (bf16)")
    rows = [("floor (in-process bf16 copy)", r["floor_s"]),
            ("floor with the fp32->bf16 cast", r["floor_with_cast_s"]),
            ("checksum alone (one side)", r["checksum_s"]),
            ("object_store", obj), ("pre-issue (object store, no checksum)", r["object_store"]["pre_issue_s"])]
    for mb, c in r["collective"].items():
        rows += [(f"collective, {mb} MB buckets", c["best_s"]), (f"  first sync (+ join), {mb} MB", c["first_s"])]
    for label, s in rows:
        print(f"  {label:38s} {s:8.3f} s  {gb / s:7.2f} GB/s")
    for mb, c in r["collective"].items():
        col = c["best_s"]
        print(f"  {mb} MB: collective / floor {col / r['floor_s']:.2f}x (target <= 2), / floor with cast "
              f"{col / r['floor_with_cast_s']:.2f}x; object_store / collective {obj / col:.2f}x (target >= 5), "
              f"pre-issue / collective {r['object_store']['pre_issue_s'] / col:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["qwen3-0.6b", "real135m", "all"], default="all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mb", type=int, nargs="+", default=[256],
                   help="rollout.sync_bucket_mb of the collective runs (the config's default: 256)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()

    import ray

    from rayrejuv.runs.resources import set_torch_threads

    set_torch_threads(1)  # this process is learner rank 0 with one CPU
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # leave no token behind
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rjs"))  # never join another user's cluster
    cases = {"qwen3-0.6b": lambda: synthetic_qwen3(CACHE / "qwen3-0.6b"), "real135m": real_135m}
    chosen = list(cases) if args.case == "all" else [args.case]
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = [run_case(c, cases[c](), args.repeats, args.bucket_mb) for c in chosen]
    finally:
        ray.shutdown()
    for r in results:
        report(r)
    end = os.getloadavg()
    print(f"\nload average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load, "load_end": end, "results": results}, indent=2,
                                        default=str))


if __name__ == "__main__":
    main()
