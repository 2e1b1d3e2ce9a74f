"""GPU timings of rayrejuv on one CUDA GPU, each part in its own process (the one command that runs
these and tests/test_gpu.py is scripts/gpu-check.sh):

  rl-colocated  issue 15's headline: `rayrejuv rl` with placement=colocated (rollout engine, reference and
                learner share the GPU), vLLM rollouts (sleep level 2, woken before generating) and the
                collective weight sync (NCCL), learner DeepSpeed ZeRO-2 bf16 (fp32 master weights)
  trl-vllm      TRL 1.16 GRPOTrainer with vLLM colocated (use_vllm, vllm_mode="colocate", sleep mode on), the
                same model, data, batch, lengths, learning rate, beta and vLLM memory share
  rl-ddp        `rayrejuv rl` (python -m rayrejuv rl --config ...), hf rollouts in bf16 on CUDA, reference
                actor bf16, learner float32 DDP (nccl); the three share the GPU (0.25 + 0.25 + 0.5)
  rl-ds2        the same with the learner in bf16 on DeepSpeed ZeRO-2 (fp32 master weights)
  plain         the same GRPO step as rl-ddp in ONE process, plain PyTorch, no Ray: generate (bf16), reference
                (bf16), old log-probs + 2 AdamW minibatch steps (float32), weight copy GPU->GPU. Same functions
                (rayrejuv.models.logprobs.sample, completion_logits, rayrejuv.method.grpo.grpo_loss).
  trl           TRL 1.16 GRPOTrainer with transformers generate (bf16 autocast, fp32 master, beta 0.01)
  rejuvenate    `rayrejuv rejuvenate` of a synthetic 0.29B Llama pair (benchmarks/synth_llama.py, small)
                with --device cpu and --device cuda: wall time and max |difference| of the outputs

What a part needs and is not installed is one printed line, never a crash: without vLLM, rl-colocated
falls back to hf rollouts (still colocated, still the collective sync) and is compared with `trl`
(transformers generate) instead of trl-vllm, which is skipped; without DeepSpeed, rl-colocated's
learner is DDP float32 and rl-ds2 is skipped; without TRL (or datasets) the TRL parts are skipped.
The parts run in order within --budget seconds; one that no longer fits is skipped with a line.

The policy is Qwen3-0.6B-shaped (hidden 1024, 28 layers, 16/8 heads, head_dim 128, vocab 151936, tied
embeddings; 0.60B parameters), random init, saved in bf16, with a character tokenizer padded to the
vocabulary. One GRPO step = 8 prompts (~100 tokens) x 8 samples x 128 new tokens, 2 minibatches of 32.
A random model almost never samples EOS, so every completion is 128 tokens: 8192 tokens per step.

    python benchmarks/bench_gpu.py --out OUT [--steps 5] [--parts rl-colocated,trl-vllm,...] [--budget S]
    python benchmarks/bench_gpu.py --out OUT --dry-run     # CPU: probe packages, build every config and command
    python benchmarks/bench_gpu.py --probe                 # the packages each part needs, found or missing
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
P, G, MAX_NEW, LR, BETA, MINIBATCHES, MICRO = 8, 8, 128, 1e-6, 0.01, 2, 32
QWEN3_06B = {"hidden_size": 1024, "intermediate_size": 3072, "num_layers": 28, "num_heads": 16,
             "num_kv_heads": 8, "head_dim": 128}
VOCAB = 151936
SKIP = 2  # first steps: allocator growth, cuBLAS handles, NCCL/DeepSpeed warm-up
VLLM_MEMORY = 0.3  # fraction of the GPU's memory each vLLM engine takes (TRL's colocate default), ours and TRL's
SLEEP_LEVEL = 2  # TRL's colocate mode sleeps at level 2 (weights and KV cache dropped); ours the same
GPUS = 1  # every part runs on one GPU: tokens/s per GPU = tokens/s
MIN_PART_S = 60  # a part is started only with at least this much of the budget left


# ---------------------------------------------------------------------------------------- inputs
def padded_char_tokenizer(vocab_size: int):
    """The testbed's character tokenizer with filler tokens <t_i> up to `vocab_size` (a real
    vocabulary's embedding and logits cost), decodable whatever ids a random model samples."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from rayrejuv.testbed.tokenizer import DEFAULT_ALPHABET, SPECIALS

    chars = sorted(set(DEFAULT_ALPHABET + "ABCDEFGHIJKLMNOPRSUVWXYZ!'"))
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    vocab.update({f"<t{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def prompts(n: int, seed: int) -> list[dict]:
    """~100-character word problems with an integer answer."""
    rng = random.Random(seed)
    things = ["apples", "marbles", "books", "coins", "stamps", "shells"]
    out = []
    for _ in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(1, 9)
        x = rng.choice(things)
        q = (f"Q: Ann has {a} {x}. Bob gives her {b} more {x}, then she loses {c} of them. "
             f"How many {x} does Ann have now? A:")
        out.append({"prompt": q, "answer": str(a + b - c)})
    return out


def build_policy(work: Path) -> Path:
    """Qwen3-0.6B-shaped random model (bf16 safetensors) + tokenizer + train.jsonl under work/."""
    import torch
    from transformers import AutoModelForCausalLM

    from rayrejuv.testbed.tiny import tiny_config

    model_dir = work / "model"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    tok = padded_char_tokenizer(VOCAB)
    cfg = tiny_config("qwen3", VOCAB, tie_word_embeddings=True, max_position_embeddings=4096, **QWEN3_06B)
    cfg.initializer_range = 0.02
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts(512, 1)))
    return model_dir


# ------------------------------------------------------------------------------ GPU memory poll
class GPUMemory:
    """Peak `nvidia-smi` memory.used (MiB) of GPU 0 over a block, every process on it counted."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak = max(self.peak, int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.5)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs))


def summarize_steps(steps: list[dict]) -> dict:
    """Means over steps after the first SKIP (dicts of seconds and counts per step)."""
    kept = steps[SKIP:] or steps
    keys = sorted({k for s in kept for k in s if isinstance(s[k], (int, float))})
    out = {k: _mean([s[k] for s in kept if k in s]) for k in keys}
    out["steps_measured"] = len(kept)
    return out


# ------------------------------------------------------------------------------------ packages
# What each part imports beyond torch and transformers: import name -> (distribution, what to pack).
PACKAGES = {"ray": ("ray", "ray==2.60.0"), "yaml": ("pyyaml", "pyyaml"), "pydantic": ("pydantic", "pydantic"),
            "deepspeed": ("deepspeed", "deepspeed==0.19.8"), "vllm": ("vllm", "vllm (a CUDA build)"),
            "trl": ("trl", "trl==1.16.0"), "datasets": ("datasets", "datasets"),
            "math_verify": ("math-verify", "math-verify==0.9.0")}
NEEDS = {
    "rl-colocated": ("ray", "yaml", "pydantic", "math_verify"),  # + vllm and deepspeed, else the fallbacks
    "trl-vllm": ("trl", "datasets", "vllm", "math_verify"),
    "rl-ddp": ("ray", "yaml", "pydantic", "math_verify"),
    "rl-ds2": ("ray", "yaml", "pydantic", "math_verify", "deepspeed"),
    "plain": ("math_verify",),
    "trl": ("trl", "datasets", "math_verify"),
    "rejuvenate": ("ray", "yaml", "pydantic"),
}


def probe_packages() -> dict[str, str | None]:
    """Installed version of every package a part may import (None: missing), without importing them."""
    out = {}
    for module, (distribution, _) in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            out[module] = None
            continue
        try:
            out[module] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:  # importable from a path with no metadata
            out[module] = "unknown version"
    return out


def missing_for(part: str, have: dict) -> list[str]:
    """What to pack (pack-for-device.sh) for `part`, of what it needs and is not installed."""
    return [PACKAGES[m][1] for m in NEEDS[part] if have[m] is None]


# --------------------------------------------------------------------------------- rayrejuv rl
def rl_settings(work: Path, steps: int, name: str, have: dict) -> tuple[dict, list[str]]:
    """The `rayrejuv rl` config of part `name`, and a line for each fallback it took (a missing package)."""
    notes = []
    cfg = {
        "model": str(work / "model"), "train_data": str(work / "train.jsonl"), "out": str(work / name),
        "steps": steps, "eval_every": 0, "checkpoint_every": steps, "overwrite": True,
        "grpo": {"prompts_per_step": P, "group_size": G, "max_new_tokens": MAX_NEW, "lr": LR, "beta": BETA,
                 "minibatches": MINIBATCHES, "micro_batch_size": MICRO},
        "tracking": {"enabled": False},
    }
    if name == "rl-colocated":
        backend = "vllm" if have["vllm"] else "hf"
        if backend == "hf":
            notes.append("rl-colocated: vllm is not installed: hf rollouts (transformers generate), still colocated "
                         "with the collective sync; compared with `trl` (no vLLM) instead of trl-vllm")
        deepspeed = have["deepspeed"] is not None
        if not deepspeed:
            notes.append("rl-colocated: deepspeed is not installed: learner DDP float32 instead of ZeRO-2 bf16")
        cfg["placement"] = "colocated"
        cfg["rollout"] = {"backend": backend, "device": "cuda", "dtype": "bfloat16", "batch_size": P,
                          "cpus_per_worker": 4, "sync": "collective",
                          "vllm": {"gpu_memory_utilization": VLLM_MEMORY, "enforce_eager": False,
                                   "dtype": "bfloat16", "sleep_level": SLEEP_LEVEL}}
        cfg["learner"] = {"use_gpu": True, "cpus_per_worker": 4}
        cfg["learner"] |= ({"engine": "deepspeed", "zero_stage": 2, "dtype": "bfloat16"} if deepspeed
                           else {"engine": "ddp", "dtype": "float32"})
        return cfg, notes
    cfg["rollout"] = {"backend": "hf", "device": "cuda", "dtype": "bfloat16", "gpus_per_worker": 0.25,
                      "reference_gpus": 0.25, "batch_size": P, "cpus_per_worker": 4}
    cfg["learner"] = {"use_gpu": True, "gpus_per_worker": 0.5, "cpus_per_worker": 4}
    cfg["learner"] |= ({"engine": "ddp", "dtype": "float32"} if name == "rl-ddp"
                       else {"engine": "deepspeed", "zero_stage": 2, "dtype": "bfloat16"})
    return cfg, notes


def rl_command(work: Path, name: str, cfg: dict) -> list[str]:
    """Write the part's YAML; the command that runs it."""
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "rayrejuv", "rl", "--config", str(path), "--quiet"]


def ours(work: Path, steps: int, name: str) -> dict:
    cfg, notes = rl_settings(work, steps, name, probe_packages())
    cmd = rl_command(work, name, cfg)
    t0 = time.perf_counter()
    with GPUMemory() as mem:
        subprocess.run(cmd, check=True, cwd=work)
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    per_step = [step_record(r) for r in recs if "reward/mean" in r]
    return {"command": " ".join(cmd), "config": cfg, "notes": notes, "wall_s": wall, "peak_gpu_mib": mem.peak,
            "steps": per_step, "mean": summarize_steps(per_step)}


def step_record(r: dict) -> dict:
    """One metrics.jsonl step of `rayrejuv rl`, in this benchmark's names (perf/* where the run logs them)."""
    out = {
        "step_s": r["time/step"], "generate_s": r["time/generate"], "reference_s": r["time/reference"],
        "learn_s": r["time/learn"], "sync_s": r["time/sync"], "tokens": r["throughput/tokens_per_s"] * r["time/step"],
        "tokens_per_s": r["throughput/tokens_per_s"], "generate_tokens_per_s": r["throughput/generated_tokens_per_s"],
        "logprob_abs_diff": r["rollout/logprob_abs_diff"], "grad_norm": r["policy/grad_norm"],
    }
    out["tokens_per_s_per_gpu"] = out["tokens_per_s"] / GPUS
    return out | {k.replace("perf/", "perf_"): r[k] for k in ("perf/throughput", "perf/mfu", "perf/generation_share")
                  if k in r}


# ------------------------------------------------------------------------- plain PyTorch loop
def plain(work: Path, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrejuv.data.chat import encode_prompts
    from rayrejuv.method.grpo import group_advantages, grpo_loss
    from rayrejuv.method.rewards import is_correct
    from rayrejuv.models.logprobs import completion_logits, sample, token_logprobs

    dev = torch.device("cuda")
    model_dir = work / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    gen = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev).eval().requires_grad_(False)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev).eval().requires_grad_(False)
    pol = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev).train()
    opt = torch.optim.AdamW(pol.parameters(), lr=LR, weight_decay=0.0)
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]

    def clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    def micro_logp(model, b, i):  # (MICRO, T) teacher-forced log-probs of rows i..i+MICRO
        mb = b.select(slice(i, i + MICRO))
        return token_logprobs(completion_logits(model, mb), mb)

    per_step = []
    for step in range(steps):
        picked = rows[step * P : (step + 1) * P]
        t0 = clock()
        ids = encode_prompts(tok, [r["prompt"] for r in picked], "auto")
        b = sample(gen, tok, ids, n=G, temperature=1.0, max_new_tokens=MAX_NEW, seed=step)
        t1 = clock()
        rewards = torch.tensor([1.0 if is_correct(t, picked[int(g)]["answer"]) else -1.0
                                for t, g in zip(b.texts, b.group)])
        b.advantages = group_advantages(rewards.view(P, G)).flatten()
        b = b.to(dev)
        n = len(b)
        with torch.no_grad():
            b.ref_logprobs = torch.cat([micro_logp(ref, b, i) for i in range(0, n, MICRO)])  # (N, T)
        t2 = clock()
        with torch.no_grad():
            pol.eval()
            old = torch.cat([micro_logp(pol, b, i) for i in range(0, n, MICRO)])  # (N, T)
            pol.train()
        size = n // MINIBATCHES
        for k in range(MINIBATCHES):
            rows_k = slice(k * size, (k + 1) * size)
            denominator = float(b.completion_mask[rows_k].sum())
            for i in range(k * size, (k + 1) * size, MICRO):
                mb = b.select(slice(i, i + MICRO))
                logp = token_logprobs(completion_logits(pol, mb), mb)
                loss, _ = grpo_loss(logp, old[i : i + MICRO], mb.advantages.to(logp), mb.completion_mask,
                                    epsilon=0.2, beta=BETA, logp_ref=mb.ref_logprobs, kl_kind="low_var",
                                    aggregation="token_mean", denominator=denominator)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(pol.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        t3 = clock()
        with torch.no_grad():  # weight sync: float32 learner -> bf16 generator, on the GPU
            for pg, pp in zip(gen.parameters(), pol.parameters(), strict=True):
                pg.copy_(pp)
        t4 = clock()
        tokens = float(b.completion_mask.sum())
        per_step.append({"step_s": t4 - t0, "generate_s": t1 - t0, "reference_s": t2 - t1, "learn_s": t3 - t2,
                         "sync_s": t4 - t3, "tokens": tokens, "tokens_per_s": tokens / (t4 - t0),
                         "tokens_per_s_per_gpu": tokens / (t4 - t0) / GPUS,
                         "generate_tokens_per_s": tokens / (t1 - t0)})
    return {"steps": per_step, "mean": summarize_steps(per_step),
            "peak_torch_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}


# ------------------------------------------------------------------------------------------ TRL
def trl_args(work: Path, steps: int, use_vllm: bool) -> dict:
    """GRPOConfig's arguments: one generation of P x G completions, then MINIBATCHES optimizer steps of
    MICRO each; with vLLM colocated in the trainer (sleep mode on, as our colocated vLLM)."""
    args = {
        "output_dir": str(work / ("trl-vllm" if use_vllm else "trl")), "bf16": True, "gradient_checkpointing": False,
        "report_to": "none", "num_generations": G, "per_device_train_batch_size": MICRO,
        "steps_per_generation": MINIBATCHES, "gradient_accumulation_steps": 1, "max_steps": steps * MINIBATCHES,
        "max_completion_length": MAX_NEW, "learning_rate": LR, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "beta": BETA, "temperature": 1.0, "top_p": 1.0, "logging_steps": 1,
        "save_strategy": "no", "seed": 0, "scale_rewards": "group", "loss_type": "dapo", "shuffle_dataset": False,
        "max_grad_norm": 1.0,
    }
    if use_vllm:  # our GRPO has no importance-sampling correction of the vLLM log-probs: off in TRL too
        args |= {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": VLLM_MEMORY,
                 "vllm_enable_sleep_mode": True, "vllm_importance_sampling_correction": False}
    return args


def trl(work: Path, steps: int, use_vllm: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayrejuv.method.rewards import is_correct

    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]

    def reward(completions, answer, **_):
        return [1.0 if is_correct(c, a) else -1.0 for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.times, self.logs = 0.0, [], []

        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **k):
            self.logs.append(dict(logs or {}))

    args = GRPOConfig(**trl_args(work, steps, use_vllm))
    timer = Timer()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32),
        reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    # a GRPO step of ours = MINIBATCHES optimizer steps of TRL (the first one generates)
    lengths = [float(lg["completions/mean_length"]) for lg in timer.logs if "completions/mean_length" in lg]
    per_step = []  # lengths: one per generation
    for s in range(len(timer.times) // MINIBATCHES):
        secs = sum(timer.times[s * MINIBATCHES : (s + 1) * MINIBATCHES])
        tokens = P * G * (lengths[s] if s < len(lengths) else MAX_NEW)
        per_step.append({"step_s": secs, "tokens": tokens, "tokens_per_s": tokens / secs,
                         "tokens_per_s_per_gpu": tokens / secs / GPUS})
    return {"args": trl_args(work, steps, use_vllm), "steps": per_step, "mean": summarize_steps(per_step),
            "train_wall_s": wall,
            "peak_torch_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}


# ------------------------------------------------------------------------------------ rejuvenate
def rejuvenate(work: Path) -> dict:
    import torch
    import yaml

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synth_llama import SHAPES, build_pair, num_params, pair_spec

    base, sft = build_pair(work / "synth", pair_spec("small", 3, 0))
    tok = padded_char_tokenizer(SHAPES["small"].vocab_size)
    for d in (base, sft):
        tok.save_pretrained(d)
    calib = work / "calibration.jsonl"
    calib.write_text("".join(json.dumps({"prompt": r["prompt"], "response": f"#### {r['answer']}"}) + "\n"
                             for r in prompts(32, 2)))
    config = work / "rejuvenate.yaml"  # attribution actor: 8 threads on CPU; 4 fusion actors either way
    config.write_text(yaml.safe_dump({"ray": {"workers": 4, "attribution_cpus": 8}, "tracking": {"enabled": False}}))
    runs = {}
    for device in ("cpu", "cuda"):
        out = work / f"rejuvenated-{device}"
        cmd = [sys.executable, "-m", "rayrejuv", "rejuvenate", "--base", str(base), "--sft", str(sft),
               "--out", str(out), "--calibration", str(calib), "--device", device, "--config", str(config),
               "--overwrite", "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=work)
        report = json.loads((out / "rejuvenation_report.json").read_text())
        runs[device] = {"command": " ".join(cmd), "wall_s": time.perf_counter() - t0,
                        "timings_s": report["timings_s"], "reset_count": report["reset_count"],
                        "neurons": {(n["layer"], n["module"], n["index"]) for n in report["neurons"]}}
    from safetensors.torch import load_file

    diff, differing = 0.0, 0
    for f in sorted((work / "rejuvenated-cpu").glob("*.safetensors")):
        a, b = load_file(f), load_file(work / "rejuvenated-cuda" / f.name)
        for k in a:
            d = float((a[k].to(torch.float32) - b[k].to(torch.float32)).abs().max())
            diff, differing = max(diff, d), differing + (d > 0)
    overlap = len(runs["cpu"]["neurons"] & runs["cuda"]["neurons"])
    for r in runs.values():
        r["neurons"] = len(r["neurons"])
    return {"params": num_params(SHAPES["small"]), "runs": runs, "max_abs_diff": diff,
            "tensors_differing": differing, "reset_overlap": overlap}


# ----------------------------------------------------------------------------------------- main
RUNNERS = {
    "rl-colocated": lambda work, steps: ours(work, steps, "rl-colocated"),
    "trl-vllm": lambda work, steps: trl(work, steps, use_vllm=True),
    "rl-ddp": lambda work, steps: ours(work, steps, "rl-ddp"),
    "rl-ds2": lambda work, steps: ours(work, steps, "rl-ds2"),
    "plain": plain,
    "trl": lambda work, steps: trl(work, steps, use_vllm=False),
    "rejuvenate": lambda work, steps: rejuvenate(work),
}
PARTS = tuple(RUNNERS)


def skip_reason(part: str, have: dict) -> str | None:
    """Why `part` cannot run here (a missing package, and what to do), or None."""
    missing = missing_for(part, have)
    if not missing:
        return None
    line = f"skipped: needs {', '.join(missing)}, not installed"
    if "vllm (a CUDA build)" in missing:
        line += (" (vllm 0.33.0's wheel is 336 MB, over the 64 MiB a device call carries, and it pins "
                 "torch==2.14.0: it cannot travel to a machine without a package index); rl-colocated is "
                 "compared with `trl` instead")
    return line + "; pack it with ../shared/tools/pack-for-device.sh (benchmarks/README.md)"


def run_parts(args, work: Path, parts: list[str], have: dict, results: dict, out: Path) -> None:
    """Each part in its own process, in order, within the budget; a part that cannot run is a line."""
    deadline = time.perf_counter() + (args.budget if args.budget is not None else float("inf"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for part in parts:
        left = deadline - time.perf_counter()
        reason = skip_reason(part, have) or (f"skipped: {left:.0f} s of the budget left (a part needs "
                                             f"{MIN_PART_S} s)" if left < MIN_PART_S else None)
        if reason:
            print(f"[bench_gpu] {part}: {reason}", flush=True)
            results[part] = {"skipped": reason}
            continue
        timeout = min(args.part_timeout, left)
        t0 = time.perf_counter()
        print(f"[bench_gpu] {part} ... (at most {timeout:.0f} s)", flush=True)
        cmd = [sys.executable, __file__, "--out", str(args.out), "--work", str(work), "--steps", str(args.steps),
               "--part", part]
        # own process group: a part that runs out of time is killed with its Ray instance
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            result = json.loads((work / f"{part}.json").read_text()) if code == 0 else {"error": f"exit code {code}"}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result = {"error": f"timed out after {timeout:.0f} s"}
        results[part] = result | {"part_wall_s": time.perf_counter() - t0}
        out.write_text(json.dumps(results, indent=1))


def dry_run(args, work: Path, parts: list[str], have: dict) -> int:
    """CPU: every selected part's config and command built (rl configs validated by RLConfig, TRL's
    arguments checked against GRPOConfig's fields where trl is installed), nothing run. Exit 1 on a
    config that would not start."""
    plan, bad = {"packages": have, "parts": {}}, 0
    for part in parts:
        entry = {"skip": skip_reason(part, have)}
        if part.startswith("rl-"):
            from rayrejuv.commands.rl.config import RLConfig
            from rayrejuv.config.base import validate_config
            from rayrejuv.errors import RejuvError

            cfg, entry["notes"] = rl_settings(work, args.steps, part, have)
            entry["command"] = " ".join(rl_command(work, part, cfg))
            try:
                entry["placement"] = validate_config(RLConfig, cfg).placement
            except RejuvError as e:
                entry["invalid"], bad = str(e), bad + 1
        elif part.startswith("trl"):
            entry["args"], entry["unknown_args"] = trl_args(work, args.steps, part == "trl-vllm"), None
            if have["trl"]:
                import dataclasses

                from trl import GRPOConfig

                known = {f.name for f in dataclasses.fields(GRPOConfig)}
                entry["unknown_args"] = sorted(set(entry["args"]) - known)
                bad += bool(entry["unknown_args"])
        plan["parts"][part] = entry
        print(f"[bench_gpu --dry-run] {part}: {json.dumps(entry)}", flush=True)
    (args.out / "bench_gpu_plan.json").write_text(json.dumps(plan, indent=1))
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, help="bench_gpu.json and the work directory go here")
    ap.add_argument("--work", type=Path, default=None, help="models and runs (default OUT/work)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--part-timeout", type=float, default=240.0, help="seconds per part at most")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all parts together (default: no limit)")
    ap.add_argument("--dry-run", action="store_true", help="build every config and command, run nothing (CPU)")
    ap.add_argument("--probe", action="store_true", help="print the packages each part needs, found or missing")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = ap.parse_args()
    have = probe_packages()
    if args.probe:
        print_packages(have)
        return
    if args.out is None:
        ap.error("--out is required")
    work = (args.work or args.out / "work").absolute()
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(RUNNERS))
    if unknown:
        ap.error(f"unknown parts {unknown}: choose from {','.join(PARTS)}")
    if args.dry_run:
        sys.exit(dry_run(args, work, parts, have))
    if args.part:
        res = RUNNERS[args.part](work, args.steps)
        (work / f"{args.part}.json").write_text(json.dumps(res, indent=1))
        return
    run_all(args, work, parts, have)


def run_all(args, work: Path, parts: list[str], have: dict) -> None:
    import torch

    out = args.out / "bench_gpu.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results |= {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "packages": have}
    enough = args.budget is None or args.budget >= MIN_PART_S
    if enough and any(p != "rejuvenate" and not skip_reason(p, have) for p in parts):
        t0 = time.perf_counter()
        build_policy(work)
        results["build_policy_s"] = time.perf_counter() - t0
    run_parts(args, work, parts, have, results, out)
    results["colocated_vs_trl"] = compare(results)
    out.write_text(json.dumps(results, indent=1))
    print_table(results)


def print_packages(have: dict) -> None:
    for module, version in have.items():
        print(f"{module:>12}: {version or 'MISSING (' + PACKAGES[module][1] + ')'}")
    for part in PARTS:
        print(f"{part:>12}: {skip_reason(part, have) or 'can run'}")


def compare(results: dict) -> dict | None:
    """Issue 15's targets: rl-colocated's step time over TRL's (vLLM colocated where both have vLLM,
    else transformers generate), its sync time, tokens/s per GPU of both."""
    ours_r = results.get("rl-colocated") or {}
    theirs = next((p for p in ("trl-vllm", "trl") if "mean" in (results.get(p) or {})), None)
    if "mean" not in ours_r or theirs is None:
        return None
    m, t = ours_r["mean"], results[theirs]["mean"]
    return {"peer": theirs, "rollout_backend": ours_r["config"]["rollout"]["backend"],
            "step_s": m["step_s"], "peer_step_s": t["step_s"], "step_ratio": m["step_s"] / t["step_s"],
            "sync_s": m["sync_s"], "tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"],
            "peer_tokens_per_s_per_gpu": t["tokens_per_s_per_gpu"], "notes": ours_r["notes"]}


def print_table(results: dict) -> None:
    print(f"\nGRPO step on {results.get('device')}: Qwen3-0.6B shape, {P} prompts x {G} samples x {MAX_NEW} new "
          f"tokens, {MINIBATCHES} minibatches of {MICRO}; means after {SKIP} warm-up steps")
    cols = ("step_s", "generate_s", "reference_s", "learn_s", "sync_s", "tokens_per_s_per_gpu")
    print(f"{'':>12} " + " ".join(f"{c:>13}" for c in cols) + f" {'peak GPU MiB':>13}")
    for part in ("rl-colocated", "trl-vllm", "rl-ddp", "rl-ds2", "plain", "trl"):
        r = results.get(part)
        if not r:
            continue
        if "error" in r or "skipped" in r:
            print(f"{part:>12} {r.get('error') or r['skipped']}")
            continue
        m = r["mean"]
        peak = r["peak_gpu_mib"] if "peak_gpu_mib" in r else r["peak_torch_allocated_mib"]
        print(f"{part:>12} " + " ".join(f"{m.get(c, float('nan')):13.3f}" for c in cols) + f" {peak:13.0f}")
    print_comparison(results["colocated_vs_trl"])
    r = results.get("rejuvenate")
    if r and "error" not in r:
        for dev, run in r["runs"].items():
            print(f"rejuvenate {dev}: wall {run['wall_s']:.1f} s, attribution_wait "
                  f"{run['timings_s'].get('attribution_wait', float('nan')):.1f} s, reset {run['reset_count']}")
        print(f"rejuvenate cuda vs cpu: max |diff| {r['max_abs_diff']:.3g}, tensors differing "
              f"{r['tensors_differing']}, reset overlap {r['reset_overlap']}/{r['runs']['cpu']['neurons']}")
    elif r:
        print(f"rejuvenate: {(r.get('error') or r['skipped'])[:300]}")


def print_comparison(c: dict | None) -> None:
    if c is None:
        print("colocated vs TRL: not measured (rl-colocated or both TRL parts did not run; see the lines above)")
        return
    for note in c["notes"]:
        print(f"note: {note}")
    ok = {True: "met", False: "MISSED"}
    print(f"colocated ({c['rollout_backend']} rollouts) vs {c['peer']}: step {c['step_s']:.2f} s vs "
          f"{c['peer_step_s']:.2f} s = {c['step_ratio']:.2f}x TRL (target <= 1.0x: {ok[c['step_ratio'] <= 1.0]}); "
          f"sync {c['sync_s']:.3f} s (target < 1 s: {ok[c['sync_s'] < 1.0]}); tokens/s per GPU "
          f"{c['tokens_per_s_per_gpu']:.0f} vs {c['peer_tokens_per_s_per_gpu']:.0f}")


if __name__ == "__main__":
    main()
