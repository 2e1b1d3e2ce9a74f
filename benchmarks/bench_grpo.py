"""rayrejuv rl (hf backend, CPU, Ray) against TRL's GRPOTrainer, in the same run.

Same tiny model (the adder task after a short SFT), data, group size, prompts per step, max new
tokens, learning rate, loss (token-mean clipped surrogate, group-scaled advantages, beta 0) and
number of steps. Each side runs in its own process; a poller sums the RSS of that process tree
(for rayrejuv that includes Ray's own services). Prints time per step, peak RSS and reward curves.

    .venv/bin/pip install 'trl==1.16.0' psutil
    .venv/bin/python benchmarks/bench_grpo.py --steps 30

`--case rl135m`: the memory of `rayrejuv rl` on a SmolLM2-135M-shaped model (issue 14): 4 prompts x
4 samples x 48 new tokens, 3 steps (checkpoints at steps 2 and 3), peak RSS per process and of the
whole tree against the 4 GB target. The model is a random init of SmolLM2-135M's exact config saved
in bf16 with a local 49152-token tokenizer (memory depends on shapes, not weights), or `--model DIR`
(the real fixture, `rayrejuv testbed real`). `--before REV` also runs the rayrejuv package of git
revision REV (`git archive`, on PYTHONPATH; several: REV,REV,...) the same way in the same run:

    .venv/bin/python benchmarks/bench_grpo.py --case rl135m --before 5260188
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

P, G, MAX_NEW, LR = 8, 8, 8, 1e-3


def ours(work: Path, steps: int) -> dict:
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.config.runtime import TrackingConfig

    cfg = RLConfig(
        model=work / "model", train_data=work / "train.jsonl", out=work / "ours", steps=steps,
        eval_every=0, checkpoint_every=steps,
        grpo={"prompts_per_step": P, "group_size": G, "max_new_tokens": MAX_NEW, "lr": LR, "beta": 0.0,
              "micro_batch_size": P * G},
        tracking=TrackingConfig(enabled=False),
    )
    run_rl(cfg, progress=False)
    recs = [json.loads(x) for x in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "reward/mean" in r]
    return {"step_s": [r["time/step"] for r in recs], "reward": [r["reward/mean"] for r in recs]}


def trl(work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayrejuv.method.rewards import is_correct

    torch.set_num_threads(1)  # as our actors: one core for rollouts, one for the learner
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    ds = Dataset.from_list(rows)
    rewards: list[float] = []

    def reward(completions, answer, **_):
        r = [1.0 if is_correct(c, a) else -1.0 for c, a in zip(completions, answer)]
        rewards.append(sum(r) / len(r))
        return r

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t, self.times = None, []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        num_generations=G, per_device_train_batch_size=P * G, gradient_accumulation_steps=1, max_steps=steps,
        max_completion_length=MAX_NEW, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, beta=0.0, temperature=1.0, logging_steps=1, save_strategy="no", seed=0,
        scale_rewards="group", loss_type="dapo", shuffle_dataset=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "model"),
        reward_funcs=reward, args=args, train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[timer],
    )
    trainer.train()
    return {"step_s": timer.times, "reward": rewards}


# SmolLM2-135M-Instruct's config.json (the shapes that set the memory)
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
    "initializer_range": 0.041666666666666664, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 2, "attention_bias": False, "mlp_bias": False, "use_cache": True,
}
P135, G135, NEW135, TARGET_GB = 4, 4, 48, 4.0
# a chat-rendered prompt's length in tokens, roughly: SmolLM2's template, its default system
# prompt and one arithmetic question make ~45 BPE tokens; here one character is one token
FRAME = "system: you are a helpful assistant\nuser: {q}\nassistant:"


def vocab_tokenizer(vocab_size: int):
    """The testbed's character tokenizer with filler tokens up to `vocab_size` (never produced by
    encoding, but in the vocabulary: the model's head and embedding have their full shape)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from rayrejuv.testbed.tokenizer import DEFAULT_ALPHABET, SPECIALS

    vocab = {t: i for i, t in enumerate([*SPECIALS, *sorted(set(DEFAULT_ALPHABET + "\n"))])}
    vocab.update({f"<f{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def build_135m(work: Path) -> Path:
    """A random init of SmolLM2-135M's config, saved in bf16 (269 MB) with a 49152-token tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = work / "smollm2-135m-random"
    torch.manual_seed(0)
    tok = vocab_tokenizer(SMOLLM2_135M["vocab_size"])
    assert len(tok) == SMOLLM2_135M["vocab_size"]
    config = LlamaConfig(**{k: v for k, v in SMOLLM2_135M.items() if k not in ("architectures", "model_type")})
    config.architectures = SMOLLM2_135M["architectures"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rl_data_135m(work: Path) -> Path:
    from rayrejuv.testbed import arith

    path = work / "rl_train.jsonl"
    rows = arith.problems(64, 9, seed=0)
    path.write_text("".join(json.dumps({"prompt": FRAME.format(q=r["prompt"]), "answer": r["answer"]}) + "\n"
                            for r in rows))
    return path


def ours_135m(work: Path, steps: int, tag: str, overrides: dict) -> dict:
    """`rayrejuv rl` with the package's defaults but the case's sizes (and `overrides`, dotted keys);
    beta > 0 (the reference runs)."""
    from safetensors import safe_open

    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.config.base import merge_overrides

    out = work / tag
    values = {"model": work / "model", "train_data": work / "train.jsonl", "out": out, "steps": steps,
              "eval_every": 0, "checkpoint_every": 2, "tracking": {"enabled": False},
              "grpo": {"prompts_per_step": P135, "group_size": G135, "max_new_tokens": NEW135}}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        nested = {leaf: value}
        for parent in reversed(parents):
            nested = {parent: nested}
        values = merge_overrides(values, nested)
    cfg = RLConfig.model_validate(values)
    summary = run_rl(cfg, progress=False)
    final = out / "final" / "model.safetensors"
    with safe_open(final, "pt") as f:
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "reward/mean" in r]
    return {"step_s": [r["time/step"] for r in recs], "sync_s": [r["time/sync"] for r in recs],
            "final_mb": final.stat().st_size / 1e6, "final_dtypes": dtypes, "seconds": summary.seconds}


def source_of(rev: str, work: Path) -> Path:
    """The rayrejuv package of git revision `rev`, extracted (git archive) into work/src-REV."""
    root = Path(__file__).resolve().parents[1]
    dest = work / f"src-{rev}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "rayrejuv"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def report_135m(name: str, r: dict) -> None:
    verdict = "met" if r["peak_rss_gb"] <= TARGET_GB else "missed"
    print(f"\n{name}: process-tree peak RSS {r['peak_rss_gb']:.2f} GB (target <= {TARGET_GB:.0f} GB: {verdict}), "
          f"peak PSS {r['peak_pss_gb']:.2f} GB; wall {r['wall_s']:.1f} s; step s "
          f"{' '.join(f'{x:.1f}' for x in r['step_s'])}; sync s {' '.join(f'{x:.2f}' for x in r['sync_s'])}; "
          f"final checkpoint {r['final_mb']:.0f} MB {'/'.join(r['final_dtypes'])}")
    for label, gb in r["processes"]:
        if gb >= 0.05:
            print(f"    {gb:6.2f} GB  {label}")


def _setting(kv: str) -> tuple[str, object]:
    """'learner.gradient_checkpointing=false' -> ('learner.gradient_checkpointing', False)."""
    key, _, value = kv.partition("=")
    return key, json.loads(value) if value in ("true", "false") or value.lstrip("-").isdigit() else value


def case_135m(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-rl135m-"))
    model = args.model if args.model else build_135m(work)
    os.symlink(Path(model).absolute(), work / "model")
    data = args.data if args.data else rl_data_135m(work)
    os.symlink(Path(data).absolute(), work / "train.jsonl")
    print(f"rayrejuv rl, {Path(model).name}: {P135} prompts x {G135} samples x {NEW135} new tokens, "
          f"{args.steps} steps; work dir {work}")
    versions = {f"at {rev}": (source_of(rev, work), rev, {}) for rev in (args.before.split(",") if args.before else [])}
    tree = Path(__file__).resolve().parents[1]
    if not args.skip_tree:
        versions["this tree"] = (tree, "tree", {})
    for variant in args.variant or []:  # NAME:key=value,key=value
        name, _, sets = variant.partition(":")
        versions[f"this tree, {name}"] = (tree, name, dict(_setting(kv) for kv in sets.split(",")))
    runs = {}
    for name, (source, tag, overrides) in versions.items():
        runs[name] = measure("ours135", work, args.steps, source, tag, overrides)
        (work / "results.json").write_text(json.dumps(runs, indent=1))
        report_135m(name, runs[name])


def _label(proc) -> str:
    """A process's name for the report: a Ray worker's actor class (its title is ray::Class.method),
    else the executable or the Python module it runs."""
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0].removeprefix("ray::").split(".")[0]
    for arg in cmd[1:]:
        if arg.endswith(".py") or "ray/" in arg:
            return Path(arg).name.removesuffix(".py")
    return proc.name()


class TreePeaks:
    """Peak RSS of a process tree (the sum over its live processes, polled: what this benchmark
    has always reported) and of each process; also the peak sum of PSS (shared pages, e.g. the
    object store's and libraries', divided among the processes that map them: the tree's real use)."""

    def __init__(self, pid: int):
        self.pid, self.tree, self.tree_pss, self.per_pid, self.labels = pid, 0, 0, {}, {}

    def poll(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = total_pss = 0
        for q in procs:
            try:
                mem = q.memory_full_info()
                label = _label(q)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total, total_pss = total + mem.rss, total_pss + mem.pss
            self.per_pid[q.pid] = max(self.per_pid.get(q.pid, 0), mem.rss)
            if label != "IDLE" or q.pid not in self.labels:  # an actor's title once it runs a task
                self.labels[q.pid] = label
        self.tree, self.tree_pss = max(self.tree, total), max(self.tree_pss, total_pss)

    def by_process(self) -> list[tuple[str, int]]:
        """(label, peak RSS bytes) per process, largest first."""
        return sorted(((self.labels[p], r) for p, r in self.per_pid.items()), key=lambda x: -x[1])


def measure(side: str, work: Path, steps: int, pythonpath: Path | None = None, tag: str | None = None,
            overrides: dict | None = None) -> dict:
    """Run one side in a fresh process (rayrejuv from `pythonpath` when given, rl config `overrides`),
    polling its process tree's RSS every 0.2 s."""
    tag = tag or side
    env = {**os.environ, "HOME": str(work / "home"), "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(pythonpath)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(steps),
                             "--tag", tag, "--overrides", json.dumps(overrides or {})], env=env)
    peaks = TreePeaks(proc.pid)

    def poll():
        while proc.poll() is None:
            peaks.poll()
            time.sleep(0.2)

    th = threading.Thread(target=poll)
    th.start()
    proc.wait()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{tag} failed with exit code {proc.returncode}")
    res = json.loads((work / f"{tag}.json").read_text())
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_gb"] = peaks.tree / 1e9
    res["peak_pss_gb"] = peaks.tree_pss / 1e9
    res["processes"] = [(label, rss / 1e9) for label, rss in peaks.by_process()]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["trl", "rl135m"], default="trl")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--before", help="rl135m: also measure the rayrejuv of these git revisions (REV[,REV...])")
    ap.add_argument("--skip-tree", action="store_true", help="rl135m: measure only the --before revisions")
    ap.add_argument("--variant", action="append", help="rl135m: also this tree with rl config values, "
                    "NAME:key=value[,key=value] (e.g. no-gc:learner.gradient_checkpointing=false)")
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help="rl135m: an HF checkpoint instead of the random SmolLM2-135M init")
    ap.add_argument("--data", type=Path, help="rl135m: jsonl of {prompt, answer} (default: arithmetic in a frame)")
    ap.add_argument("--side", choices=["ours", "trl", "ours135"])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--tag")
    args = ap.parse_args()
    if args.side:
        overrides = json.loads(args.overrides)
        sides = {"ours": ours, "trl": trl, "ours135": lambda w, s: ours_135m(w, s, args.tag, overrides)}
        res = sides[args.side](args.work, args.steps)
        (args.work / f"{args.tag}.json").write_text(json.dumps(res))
        return
    if args.case == "rl135m":
        args.steps = args.steps or 3
        case_135m(args)
        return
    args.steps = args.steps or 30

    import torch

    from rayrejuv.testbed.adder import build_adder

    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    torch.set_num_threads(1)
    paths = build_adder(work / "adder", sft_epochs=3, max_n=3)
    for k in ("model",):
        os.symlink(paths[k], work / k)
    os.symlink(paths["train"], work / "train.jsonl")
    results = {side: measure(side, work, args.steps) for side in ("trl", "ours")}
    skip = 2  # first steps include one-off warm-up (allocations, first generate)

    def mean(xs):
        return sum(xs) / max(1, len(xs))

    print(f"\nGRPO, {args.steps} steps, {P} prompts x {G} samples, {MAX_NEW} new tokens, lr {LR}; work dir {work}")
    print(f"{'':>10} {'step s (mean, after 2)':>24} {'wall s':>8} {'peak RSS GB':>12} {'reward first5 -> last5':>24}")
    for side, r in results.items():
        print(f"{side:>10} {mean(r['step_s'][skip:]):24.3f} {r['wall_s']:8.1f} {r['peak_rss_gb']:12.2f} "
              f"{mean(r['reward'][:5]):+11.3f} -> {mean(r['reward'][-5:]):+.3f}")
    o, t = results["ours"], results["trl"]
    print(f"ratio ours/TRL: time per step {mean(o['step_s'][skip:]) / mean(t['step_s'][skip:]):.2f}x (target <= 1.0), "
          f"peak RSS {o['peak_rss_gb'] / t['peak_rss_gb']:.2f}x, wall {o['wall_s'] / t['wall_s']:.2f}x")
    print("reward curves (mean reward per step):")
    for side, r in results.items():
        print(f"  {side}: " + " ".join(f"{x:+.2f}" for x in r["reward"]))


if __name__ == "__main__":
    main()
