"""Fusion benchmark: `rayrejuv rejuvenate --fusion-only` vs mergekit task_arithmetic.

Both tools compute ``bf16(base + alpha * (sft - base))`` over a synthetic Llama pair
(see synth_llama.py). For each command this measures whole-process wall time and peak
RSS of the process tree (see proc_measure.py), next to an "IO floor": plain `cat` of
both inputs plus `cp` of one checkpoint's shards, i.e. the same bytes read and written
with no compute. Then it checks rayrejuv's output against mergekit's (and both against
a float32 reference) within one bf16 ulp, prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_fusion.py --size 1b --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import checkpoint_compare
import proc_measure
import psutil
import synth_llama
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"

TOOLS = ("io_floor", "mergekit", "rayrejuv", "rayrejuv_ray1", "rayrejuv_ray2")  # run in this order per repeat
# rayrejuv: the single-process path (--no-ray); rayrejuv_rayN: on a local Ray instance with N
# LayerShard workers, Ray start-up included.
RAYREJUV_VARIANTS = {"rayrejuv": ["--no-ray"], "rayrejuv_ray1": ["--workers", "1"], "rayrejuv_ray2": ["--workers", "2"]}
MERGEKIT_PINS = ("torch==2.13.0", "mergekit==0.1.5")
# No tokenizer exists in the synthetic checkpoints; everything else is mergekit's default.
MERGEKIT_FLAGS = ("--no-copy-tokenizer",)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TARGET_WALL_RATIO_VS_MERGEKIT = 0.5
TARGET_PEAK_RSS_GB = 1.5
OTHER_CPU_WARNING = 0.10  # warn when other processes used more of the CPUs than this
OTHER_CPU_WARNING_MIN_S = 0.5  # ... and more CPU seconds than this (ignores tiny runs)
GB = 1e9  # decimal gigabytes throughout


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark rayrejuv fusion against mergekit task_arithmetic.")
    parser.add_argument(
        "--size",
        choices=sorted(synth_llama.SHAPES),
        default="1b",
        help="synthetic checkpoint size: 1b = TinyLlama-1.1B shape, "
        "small = 0.29B / 8 layers, tiny = harness smoke test "
        "(default: 1b)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per command; the table shows the median wall time and the max peak RSS (default: 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the merged outputs under CACHE_DIR/SIZE/out/")
    parser.add_argument(
        "--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="commands to run (default: all three)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="fusion weight: out = base + alpha*(sft-base) (default: 0.5)"
    )
    parser.add_argument(
        "--page-cache",
        choices=("warm", "cold"),
        default="warm",
        help="before each timed command: 'warm' reads both inputs once "
        "so they are in the page cache; 'cold' drops the page "
        "cache (needs root) (default: warm)",
    )
    parser.add_argument("--shards", type=int, default=3, help="safetensors shards per input checkpoint (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=BENCH_DIR / ".cache",
        help="synthetic pairs and outputs (default: benchmarks/.cache)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "results" / "fusion.json",
        help="JSON results file; the entry for --size is replaced, other "
        "sizes are kept (default: benchmarks/results/fusion.json)",
    )
    parser.add_argument(
        "--rayrejuv",
        type=Path,
        default=REPO_ROOT / ".venv" / "bin" / "rayrejuv",
        help="rayrejuv executable (default: .venv/bin/rayrejuv)",
    )
    parser.add_argument(
        "--mergekit-venv",
        type=Path,
        default=REPO_ROOT / ".venv-bench",
        help=f"venv holding mergekit; created with {' '.join(MERGEKIT_PINS)} if missing (default: .venv-bench)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.05,
        help="seconds between RSS samples of the process tree (default: 0.05)",
    )
    parser.add_argument(
        "--atol-floor",
        type=float,
        default=1e-6,
        help="absolute tolerance added to the 1-bf16-ulp relative tolerance, for values near zero (default: 1e-6)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- tools


def ensure_mergekit_venv(venv: Path) -> Path:
    """Return the mergekit-yaml executable, creating the venv if it is missing."""
    mergekit_yaml = venv / "bin" / "mergekit-yaml"
    if mergekit_yaml.exists():
        return mergekit_yaml
    log(f"[setup] creating {venv} with {' '.join(MERGEKIT_PINS)}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", *MERGEKIT_PINS], check=True)
    return mergekit_yaml


def rayrejuv_help(rayrejuv: Path) -> str:
    """`rayrejuv rejuvenate --help`, or raise with a clear message if unavailable."""
    if not rayrejuv.exists():
        raise SystemExit(f"rayrejuv not found at {rayrejuv} (omit it with --tools io_floor mergekit)")
    proc = subprocess.run(
        [str(rayrejuv), "rejuvenate", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**subprocess_env(), "COLUMNS": "200"},
    )  # unwrapped help
    if proc.returncode != 0:
        raise SystemExit(
            f"`{rayrejuv} rejuvenate --help` failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc.stdout


def rayrejuv_argv(
    rayrejuv: Path, help_text: str, base: Path, sft: Path, out: Path, alpha: float, extra: list[str]
) -> list[str]:
    argv = [
        str(rayrejuv),
        "rejuvenate",
        "--base",
        str(base),
        "--sft",
        str(sft),
        "--out",
        str(out),
        "--alpha",
        str(alpha),
        "--fusion-only",
        "--overwrite",
        *extra,
    ]
    if "--no-track" in help_text:
        argv.append("--no-track")
    return argv


def write_mergekit_config(path: Path, base: Path, sft: Path, alpha: float) -> dict:
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": [{"model": str(sft), "parameters": {"weight": alpha}}],
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def mergekit_argv(mergekit_yaml: Path, config: Path, out: Path) -> list[str]:
    return [str(mergekit_yaml), str(config), str(out), *MERGEKIT_FLAGS]


def io_floor_argv(base: Path, sft: Path, out: Path) -> list[str]:
    """Read both inputs and write one checkpoint-sized output with plain file tools."""

    def shards(directory: Path) -> str:
        return " ".join(shlex.quote(str(p)) for p in sorted(directory.glob("*.safetensors")))

    script = (
        f"cat {shards(base)} > /dev/null && cat {shards(sft)} > /dev/null && "
        f"mkdir -p {shlex.quote(str(out))} && cp {shards(base)} {shlex.quote(str(out))}/"
    )
    return ["bash", "-c", script]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV}


def package_versions(python: Path, packages: list[str]) -> dict[str, str]:
    """Installed versions of ``packages`` in the environment of ``python`` (best effort)."""
    if not python.exists():
        return {}
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run([str(python), "-c", code, *packages], check=False, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


# --------------------------------------------------------------------------- page cache


def read_files(paths: list[Path]) -> None:
    chunk = 64 << 20
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(chunk):
                pass


def prepare_page_cache(mode: str, inputs: list[Path]) -> None:
    """Flush dirty pages, then warm the inputs into the page cache or drop it."""
    subprocess.run(["sync"], check=True)
    if mode == "warm":
        read_files(inputs)
    else:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as error:
            raise SystemExit(f"--page-cache cold needs root to drop caches: {error}") from error


# --------------------------------------------------------------------------- running


def find_checkpoint_dir(out: Path) -> Path:
    """The directory holding the output's safetensors: OUT itself or one sub-directory."""
    if any(out.glob("*.safetensors")):
        return out
    candidates = sorted({p.parent for p in out.rglob("*.safetensors")})
    if len(candidates) != 1:
        raise RuntimeError(f"expected one directory of .safetensors under {out}, found {[str(c) for c in candidates]}")
    return candidates[0]


def run_repeats(
    commands: dict[str, list[str]],
    outputs: dict[str, Path],
    inputs: list[Path],
    args: argparse.Namespace,
    logs_dir: Path,
) -> dict[str, list[proc_measure.Measurement]]:
    runs: dict[str, list[proc_measure.Measurement]] = {tool: [] for tool in commands}
    for repeat in range(args.repeats):
        for tool, argv in commands.items():
            shutil.rmtree(outputs[tool], ignore_errors=True)
            prepare_page_cache(args.page_cache, inputs)
            log(f"[run] {tool} (repeat {repeat + 1}/{args.repeats}): {shlex.join(argv)}")
            result = proc_measure.measure(
                tool, argv, subprocess_env(), logs_dir / f"{tool}-{repeat + 1}.log", args.poll_interval
            )
            log(f"[run]   rc={result.returncode} wall={result.wall_s:.2f}s peak_rss={result.peak_rss_bytes / GB:.2f}GB")
            if result.returncode != 0:
                tail = Path(result.log_path).read_text(errors="replace")[-3000:]
                raise SystemExit(f"{tool} failed (rc={result.returncode}); log {result.log_path}:\n{tail}")
            runs[tool].append(result)
    return runs


def other_cpu_share(m: proc_measure.Measurement) -> float:
    """Fraction of the machine's CPU capacity used by other processes during a run."""
    return m.other_cpu_s / (m.wall_s * os.cpu_count())


def summarize(runs: list[proc_measure.Measurement]) -> dict:
    walls = [r.wall_s for r in runs]
    return {
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_all": walls,
        "cpu_s_median": statistics.median(r.cpu_s for r in runs),
        "other_cpu_share_max": max(other_cpu_share(r) for r in runs),
        "other_cpu_s_max": max(r.other_cpu_s for r in runs),
        "peak_rss_gb": max(r.peak_rss_bytes for r in runs) / GB,
        "peak_tree_rss_gb": max(r.peak_tree_rss_bytes for r in runs) / GB,
        "peak_tree_anon_gb": max(r.peak_tree_anon_bytes for r in runs) / GB,
        "max_single_rss_gb": max(r.max_single_rss_bytes for r in runs) / GB,
    }


def ratios(summary: dict[str, dict]) -> dict:
    out: dict = {}
    for tool in ("rayrejuv_ray1", "rayrejuv_ray2"):
        if tool in summary:
            ours = summary[tool]
            out[f"{tool}_max_single_process_rss_gb"] = ours["max_single_rss_gb"]
            if "mergekit" in summary:
                r = ours["wall_s_median"] / summary["mergekit"]["wall_s_median"]
                out[f"{tool}_over_mergekit_wall"] = r
                out[f"{tool}_over_mergekit_wall_ok"] = r <= TARGET_WALL_RATIO_VS_MERGEKIT
            if "rayrejuv" in summary:
                out[f"{tool}_over_single_process_wall"] = ours["wall_s_median"] / summary["rayrejuv"]["wall_s_median"]
            if "io_floor" in summary:
                out[f"{tool}_over_io_floor_wall"] = ours["wall_s_median"] / summary["io_floor"]["wall_s_median"]
    if "rayrejuv" in summary:
        ours = summary["rayrejuv"]
        out["rayrejuv_peak_rss_gb"] = ours["peak_rss_gb"]
        out["rayrejuv_peak_rss_ok"] = ours["peak_rss_gb"] <= TARGET_PEAK_RSS_GB
        if "mergekit" in summary:
            r = ours["wall_s_median"] / summary["mergekit"]["wall_s_median"]
            out["rayrejuv_over_mergekit_wall"] = r
            out["rayrejuv_over_mergekit_wall_ok"] = r <= TARGET_WALL_RATIO_VS_MERGEKIT
        if "io_floor" in summary:
            out["rayrejuv_over_io_floor_wall"] = ours["wall_s_median"] / summary["io_floor"]["wall_s_median"]
    if "mergekit" in summary and "io_floor" in summary:
        out["mergekit_over_io_floor_wall"] = summary["mergekit"]["wall_s_median"] / summary["io_floor"]["wall_s_median"]
    return out


def correctness(outputs: dict[str, Path], base: Path, sft: Path, args: argparse.Namespace) -> dict[str, dict]:
    merged = {
        tool: find_checkpoint_dir(outputs[tool])
        for tool in ("rayrejuv", "mergekit", "rayrejuv_ray2")
        if tool in outputs
    }
    results: dict[str, dict] = {}
    if "rayrejuv_ray2" in merged and "rayrejuv" in merged:
        log("[check] rayrejuv on Ray (2 workers) vs single process")
        results["ray2_vs_single_process"] = checkpoint_compare.compare_checkpoints(
            "ray2_vs_single_process", merged["rayrejuv_ray2"], merged["rayrejuv"], 0.0
        ).to_json()
    if "rayrejuv" in merged and "mergekit" in merged:
        log("[check] rayrejuv vs mergekit")
        results["rayrejuv_vs_mergekit"] = checkpoint_compare.compare_checkpoints(
            "rayrejuv_vs_mergekit", merged["rayrejuv"], merged["mergekit"], args.atol_floor
        ).to_json()
    for tool, directory in merged.items():
        if tool == "rayrejuv_ray2":
            continue
        log(f"[check] {tool} vs float32 reference")
        results[f"{tool}_vs_reference"] = checkpoint_compare.compare_with_fusion_reference(
            f"{tool}_vs_reference", directory, base, sft, args.alpha, args.atol_floor
        ).to_json()
    return results


# --------------------------------------------------------------------------- reporting


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def format_report(record: dict) -> str:
    ckpt, settings, summary = record["checkpoint"], record["settings"], record["summary"]
    lines = [
        "",
        (
            f"fusion benchmark  size={ckpt['size']}  params={ckpt['params'] / 1e9:.3f}B  "
            f"checkpoint={ckpt['bytes_per_checkpoint'] / GB:.2f} GB x2 in {ckpt['shards']} shards"
        ),
        (
            f"repeats={settings['repeats']}  page cache={settings['page_cache']}  "
            f"alpha={settings['alpha']}  cpus={record['machine']['cpus']}"
        ),
        "",
        (
            f"{'command':<10} {'wall s':>8} {'peak RSS GB':>12} {'anon GB':>8} "
            f"{'1-proc GB':>10} {'CPU s':>7} {'other CPU':>10}"
        ),
    ]
    for tool in TOOLS:
        if tool in summary:
            s = summary[tool]
            lines.append(
                f"{tool:<14} {s['wall_s_median']:>8.2f} {s['peak_rss_gb']:>12.2f} "
                f"{s['peak_tree_anon_gb']:>8.2f} {s['max_single_rss_gb']:>10.2f} "
                f"{s['cpu_s_median']:>7.1f} {s['other_cpu_share_max']:>9.0%}"
            )
    r = record["ratios"]
    lines.append("")
    for tool in ("rayrejuv_ray1", "rayrejuv_ray2"):
        if f"{tool}_over_mergekit_wall" in r:
            lines.append(
                f"{tool}/mergekit wall  {r[f'{tool}_over_mergekit_wall']:6.3f}   target <= "
                f"{TARGET_WALL_RATIO_VS_MERGEKIT}  {_verdict(r[f'{tool}_over_mergekit_wall_ok'])}"
            )
        if f"{tool}_over_single_process_wall" in r:
            lines.append(f"{tool}/single-process wall  {r[f'{tool}_over_single_process_wall']:6.3f}")
        if f"{tool}_over_io_floor_wall" in r:
            lines.append(f"{tool}/IO floor wall  {r[f'{tool}_over_io_floor_wall']:6.3f}")
        if f"{tool}_max_single_process_rss_gb" in r:
            lines.append(f"{tool} largest single-process RSS GB  {r[f'{tool}_max_single_process_rss_gb']:6.3f}")
    if "rayrejuv_over_mergekit_wall" in r:
        lines.append(
            f"rayrejuv/mergekit wall  {r['rayrejuv_over_mergekit_wall']:6.3f}   "
            f"target <= {TARGET_WALL_RATIO_VS_MERGEKIT}  "
            f"{_verdict(r['rayrejuv_over_mergekit_wall_ok'])}"
        )
    if "rayrejuv_peak_rss_gb" in r:
        lines.append(
            f"rayrejuv peak RSS GB    {r['rayrejuv_peak_rss_gb']:6.3f}   "
            f"target <= {TARGET_PEAK_RSS_GB}  {_verdict(r['rayrejuv_peak_rss_ok'])}"
        )
    if "rayrejuv_over_io_floor_wall" in r:
        lines.append(f"rayrejuv/IO floor wall  {r['rayrejuv_over_io_floor_wall']:6.3f}")
    if "mergekit_over_io_floor_wall" in r:
        lines.append(f"mergekit/IO floor wall  {r['mergekit_over_io_floor_wall']:6.3f}")
    for label, c in record["correctness"].items():
        lines.append(
            f"{label}: {_verdict(c['ok'])}  names equal={c['names_equal']} "
            f"({c['tensors_compared']} tensors), tensors with any difference="
            f"{c['tensors_with_any_difference']}, beyond 1 bf16 ulp="
            f"{len(c['tensors_beyond_tolerance'])}, elements different="
            f"{c['elements_different']}/{c['elements_compared']}, "
            f"max|diff|={c['max_abs_diff']:.3g}"
        )
    busy = [
        t
        for t, s in summary.items()
        if s["other_cpu_share_max"] > OTHER_CPU_WARNING and s["other_cpu_s_max"] > OTHER_CPU_WARNING_MIN_S
    ]
    if busy:
        lines += [
            "",
            (
                f"WARNING: other processes used > {OTHER_CPU_WARNING:.0%} of the CPUs "
                f"during {', '.join(busy)}: wall times are inflated; rerun on an idle "
                "machine."
            ),
        ]
    lines += [
        "",
        (
            "wall s: median over repeats.  peak RSS GB: max over repeats of max(summed RSS of "
            "the process tree sampled every "
            f"{settings['poll_interval_s'] * 1000:.0f} ms, kernel ru_maxrss).  anon GB: the "
            "sampled tree sum without file-backed/shared pages.  1-proc GB: kernel ru_maxrss "
            "(largest single process).  GB = 1e9 bytes.  CPU s: user+system "
            "time of the command's process tree.  other CPU: max share of all CPUs used by "
            "other processes during the run."
        ),
    ]
    return "\n".join(lines)


def write_results(path: Path, size: str, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema_version": 1, "results": {}}
    if path.exists():
        document = json.loads(path.read_text())
    document["results"][size] = record
    path.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tools = [tool for tool in TOOLS if tool in args.tools]
    spec = synth_llama.pair_spec(args.size, args.shards, args.seed)
    base, sft = synth_llama.build_pair(args.cache_dir, spec, log=log)
    work = args.cache_dir / args.size / "out"
    outputs = {tool: work / tool for tool in tools}
    logs_dir = args.cache_dir / args.size / "logs"

    commands: dict[str, list[str]] = {}
    versions: dict[str, dict] = {}
    mergekit_config: dict = {}
    if "io_floor" in tools:
        commands["io_floor"] = io_floor_argv(base, sft, outputs["io_floor"])
    if "mergekit" in tools:
        mergekit_yaml = ensure_mergekit_venv(args.mergekit_venv)
        config = work / "mergekit.yaml"
        mergekit_config = write_mergekit_config(config, base, sft, args.alpha)
        commands["mergekit"] = mergekit_argv(mergekit_yaml, config, outputs["mergekit"])
        versions["mergekit_venv"] = package_versions(
            args.mergekit_venv / "bin" / "python", ["mergekit", "torch", "transformers"]
        )
    if any(t in RAYREJUV_VARIANTS for t in tools):
        help_text = rayrejuv_help(args.rayrejuv)
        for tool in (t for t in tools if t in RAYREJUV_VARIANTS):
            commands[tool] = rayrejuv_argv(
                args.rayrejuv, help_text, base, sft, outputs[tool], args.alpha, RAYREJUV_VARIANTS[tool]
            )
        versions["rayrejuv_venv"] = package_versions(
            args.rayrejuv.parent / "python", ["rayrejuv", "torch", "safetensors"]
        )

    inputs = sorted(base.glob("*.safetensors")) + sorted(sft.glob("*.safetensors"))
    try:
        runs = run_repeats(commands, outputs, inputs, args, logs_dir)
        checks = correctness(
            {t: outputs[t] for t in ("rayrejuv", "mergekit", "rayrejuv_ray2") if t in tools}, base, sft, args
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {tool: summarize(measurements) for tool, measurements in runs.items()}

    record = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": psutil.virtual_memory().total / GB,
            "platform": platform.platform(),
        },
        "versions": versions,
        "checkpoint": {
            "size": args.size,
            "params": synth_llama.num_params(spec.shape),
            "bytes_per_checkpoint": sum(p.stat().st_size for p in inputs) // 2,
            "shards": spec.num_shards,
            "base": str(base),
            "sft": str(sft),
        },
        "settings": {
            "repeats": args.repeats,
            "page_cache": args.page_cache,
            "alpha": args.alpha,
            "poll_interval_s": args.poll_interval,
            "atol_floor": args.atol_floor,
            "offline_env": OFFLINE_ENV,
        },
        "commands": commands,
        "mergekit_config": mergekit_config,
        "runs": {tool: [m.to_json() for m in ms] for tool, ms in runs.items()},
        "summary": summary,
        "targets": {
            "rayrejuv_over_mergekit_wall_max": TARGET_WALL_RATIO_VS_MERGEKIT,
            "rayrejuv_peak_rss_gb_max": TARGET_PEAK_RSS_GB,
        },
        "ratios": ratios(summary),
        "correctness": checks,
    }
    write_results(args.results, args.size, record)
    log(format_report(record))
    log(f"\nresults written to {args.results}")
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
