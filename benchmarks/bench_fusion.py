"""Fusion benchmark: `rayrejuv rejuvenate --fusion-only` vs mergekit task_arithmetic.

Both tools compute ``bf16(base + alpha * (sft - base))`` over a synthetic Llama pair
(see synth_llama.py). For each command this measures whole-process wall time and peak
RSS of the process tree (see proc_measure.py), next to an "IO floor": plain `cat` of
both inputs plus `cp` of one checkpoint's shards, i.e. the same bytes read and written
with no compute. The main rayrejuv row is the default command exactly as a user types it
(no --no-ray, MLflow on). Then it checks rayrejuv's output against mergekit's (and both
against a float32 reference) within one bf16 ulp, prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_fusion.py --size 1b --repeats 3
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

# Run in this order per repeat. rayrejuv: the default command (on one machine with no cluster
# named it runs in process; MLflow on, its sqlite store in a scratch working directory);
# rayrejuv_no_track: the same with --no-track; rayrejuv_rayN: forced onto a local Ray instance
# with N LayerShard workers (--ray --workers N), Ray start-up included.
RAYREJUV_VARIANTS = {
    "rayrejuv": [],
    "rayrejuv_no_track": ["--no-track"],
    "rayrejuv_ray1": ["--ray", "--workers", "1", "--no-track"],
    "rayrejuv_ray2": ["--ray", "--workers", "2", "--no-track"],
}
TOOLS = ("io_floor", "mergekit", *RAYREJUV_VARIANTS)
MAIN = "rayrejuv"
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
    add = parser.add_argument
    add("--size", choices=sorted(synth_llama.SHAPES), default="1b",
        help="synthetic checkpoint size: 1b = TinyLlama-1.1B shape, small = 0.29B / 8 layers, "
        "tiny = harness smoke test (default: 1b)")
    add("--repeats", type=int, default=1,
        help="timed runs per command; the table shows the median wall time and the max peak RSS (default: 1)")
    add("--keep", action="store_true", help="keep the merged outputs under CACHE_DIR/SIZE/out/")
    add("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="commands to run (default: all)")
    add("--alpha", type=float, default=0.5, help="fusion weight: out = base + alpha*(sft-base) (default: 0.5)")
    add("--page-cache", choices=("warm", "cold"), default="warm",
        help="before each timed command: 'warm' reads both inputs once so they are in the page cache; "
        "'cold' drops the page cache (needs root) (default: warm)")
    add("--shards", type=int, default=3, help="safetensors shards per input checkpoint (default: 3)")
    add("--seed", type=int, default=0, help="generator seed (default: 0)")
    add("--cache-dir", type=Path, default=BENCH_DIR / ".cache",
        help="synthetic pairs and outputs (default: benchmarks/.cache)")
    add("--results", type=Path, default=BENCH_DIR / "results" / "fusion.json",
        help="JSON results file; the entry for --size is replaced, other sizes are kept "
        "(default: benchmarks/results/fusion.json)")
    add("--rayrejuv", type=Path, default=REPO_ROOT / ".venv" / "bin" / "rayrejuv",
        help="rayrejuv executable (default: .venv/bin/rayrejuv)")
    add("--mergekit-venv", type=Path, default=None,
        help="venv holding mergekit-yaml (default: .venv-bench if it exists, else the project's .venv if it "
        f"holds mergekit (pip install -e '.[bench]'), else .venv-bench created with {' '.join(MERGEKIT_PINS)})")
    add("--poll-interval", type=float, default=0.05,
        help="seconds between RSS samples of the process tree (default: 0.05)")
    add("--atol-floor", type=float, default=1e-6,
        help="absolute tolerance added to the 1-bf16-ulp relative tolerance, for values near zero (default: 1e-6)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- tools


def mergekit_venv(chosen: Path | None) -> Path:
    """--mergekit-venv, else .venv-bench if present, else the project venv if it holds mergekit."""
    if chosen is not None:
        return chosen
    bench, project = REPO_ROOT / ".venv-bench", REPO_ROOT / ".venv"
    if not (bench / "bin" / "mergekit-yaml").exists() and (project / "bin" / "mergekit-yaml").exists():
        return project
    return bench


def ensure_mergekit_venv(venv: Path) -> Path:
    """Return the mergekit-yaml executable, creating the venv if it is missing."""
    mergekit_yaml = venv / "bin" / "mergekit-yaml"
    if mergekit_yaml.exists():
        return mergekit_yaml
    log(f"[setup] creating {venv} with {' '.join(MERGEKIT_PINS)}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
    subprocess.run([str(venv / "bin" / "pip"), "install", *MERGEKIT_PINS], check=True, timeout=1800)
    return mergekit_yaml


def check_rayrejuv(rayrejuv: Path) -> None:
    """`rayrejuv rejuvenate --help` runs and lists the flags the variants use, or exit with why."""
    if not rayrejuv.exists():
        raise SystemExit(f"rayrejuv not found at {rayrejuv} (omit it with --tools io_floor mergekit)")
    proc = subprocess.run(
        [str(rayrejuv), "rejuvenate", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**subprocess_env(), "COLUMNS": "200"},  # unwrapped help
    )
    missing = [f for f in ("--no-ray", "--no-track", "--workers") if f not in proc.stdout]
    if proc.returncode != 0 or missing:
        raise SystemExit(
            f"`{rayrejuv} rejuvenate --help` failed (rc={proc.returncode}) or lacks {missing}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def rayrejuv_argv(rayrejuv: Path, base: Path, sft: Path, out: Path, alpha: float, extra: list[str]) -> list[str]:
    """The default command (--fusion-only, --overwrite to reuse OUT across repeats) + a variant's flags."""
    return [str(rayrejuv), "rejuvenate", "--base", str(base), "--sft", str(sft), "--out", str(out),
            "--alpha", str(alpha), "--fusion-only", "--overwrite", *extra]  # fmt: skip


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
    proc = subprocess.run([str(python), "-c", code, *packages], check=False, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def build_commands(args: argparse.Namespace, tools: list[str], base: Path, sft: Path, work: Path) -> dict:
    """Per tool its argv, plus the versions and the mergekit config the record keeps."""
    outputs = {tool: work / tool for tool in tools}
    commands: dict[str, list[str]] = {}
    versions: dict[str, dict] = {}
    mergekit_config: dict = {}
    if "io_floor" in tools:
        commands["io_floor"] = io_floor_argv(base, sft, outputs["io_floor"])
    if "mergekit" in tools:
        venv = mergekit_venv(args.mergekit_venv)
        mergekit_config = write_mergekit_config(work / "mergekit.yaml", base, sft, args.alpha)
        commands["mergekit"] = mergekit_argv(ensure_mergekit_venv(venv), work / "mergekit.yaml", outputs["mergekit"])
        versions["mergekit_venv"] = package_versions(venv / "bin" / "python", ["mergekit", "torch", "transformers"])
    ours = [t for t in tools if t in RAYREJUV_VARIANTS]
    if ours:
        check_rayrejuv(args.rayrejuv)
        for tool in ours:
            commands[tool] = rayrejuv_argv(args.rayrejuv, base, sft, outputs[tool], args.alpha, RAYREJUV_VARIANTS[tool])
        versions["rayrejuv_venv"] = package_versions(
            args.rayrejuv.parent / "python", ["rayrejuv", "torch", "safetensors", "ray", "mlflow"]
        )
    return {"commands": commands, "outputs": outputs, "versions": versions, "mergekit_config": mergekit_config}


# --------------------------------------------------------------------------- page cache


def read_files(paths: list[Path]) -> None:
    chunk = 64 << 20
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(chunk):
                pass


def prepare_page_cache(mode: str, inputs: list[Path]) -> None:
    """Flush dirty pages, then warm the inputs into the page cache or drop it."""
    subprocess.run(["sync"], check=True, timeout=600)
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
    work: Path,
) -> dict[str, list[proc_measure.Measurement]]:
    """Every command once per repeat, in TOOLS order. Each runs in work/cwd, where the default
    rayrejuv command's MLflow store (sqlite:///mlflow.db) lives, as in a user's directory: the
    first run creates it."""
    runs: dict[str, list[proc_measure.Measurement]] = {tool: [] for tool in commands}
    cwd = work / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        for tool, argv in commands.items():
            shutil.rmtree(outputs[tool], ignore_errors=True)
            prepare_page_cache(args.page_cache, inputs)
            log(f"[run] {tool} (repeat {repeat + 1}/{args.repeats}): {shlex.join(argv)}")
            logfile = args.cache_dir / args.size / "logs" / f"{tool}-{repeat + 1}.log"
            result = proc_measure.measure(tool, argv, subprocess_env(), logfile, args.poll_interval, cwd=cwd)
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
    """Median wall of every rayrejuv variant over mergekit's, the IO floor's and (Ray rows) the
    default command's, all from this run; the targets apply to the default command (MAIN)."""
    out: dict = {}
    wall = {tool: s["wall_s_median"] for tool, s in summary.items()}
    for tool in (t for t in RAYREJUV_VARIANTS if t in summary):
        out[f"{tool}_max_single_process_rss_gb"] = summary[tool]["max_single_rss_gb"]
        if "mergekit" in wall:
            out[f"{tool}_over_mergekit_wall"] = wall[tool] / wall["mergekit"]
        if "io_floor" in wall:
            out[f"{tool}_over_io_floor_wall"] = wall[tool] / wall["io_floor"]
        if tool != MAIN and MAIN in wall:
            out[f"{tool}_over_{MAIN}_wall"] = wall[tool] / wall[MAIN]
    if f"{MAIN}_over_mergekit_wall" in out:
        out[f"{MAIN}_over_mergekit_wall_ok"] = out[f"{MAIN}_over_mergekit_wall"] <= TARGET_WALL_RATIO_VS_MERGEKIT
        # repeat 1 may start the store's MLflow tracking agent (cold); later repeats find it (warm)
        out[f"{MAIN}_first_repeat_over_mergekit_wall"] = summary[MAIN]["wall_s_all"][0] / wall["mergekit"]
    if MAIN in summary:
        out[f"{MAIN}_peak_rss_gb"] = summary[MAIN]["peak_rss_gb"]
        out[f"{MAIN}_peak_rss_ok"] = summary[MAIN]["peak_rss_gb"] <= TARGET_PEAK_RSS_GB
    if "mergekit" in wall and "io_floor" in wall:
        out["mergekit_over_io_floor_wall"] = wall["mergekit"] / wall["io_floor"]
    return out


def correctness(outputs: dict[str, Path], base: Path, sft: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The default command vs mergekit (1 bf16 ulp) and vs the float32 reference; on Ray
    (2 workers) vs in process: bit-identical."""
    compared = (MAIN, "mergekit", "rayrejuv_ray2")
    merged = {tool: find_checkpoint_dir(outputs[tool]) for tool in compared if tool in outputs}
    results: dict[str, dict] = {}
    if "rayrejuv_ray2" in merged and MAIN in merged:
        log("[check] rayrejuv on Ray (2 workers) vs the default command (in process)")
        results["ray2_vs_default"] = checkpoint_compare.compare_checkpoints(
            "ray2_vs_default", merged["rayrejuv_ray2"], merged[MAIN], 0.0
        ).to_json()
    if MAIN in merged and "mergekit" in merged:
        log("[check] rayrejuv vs mergekit")
        results["rayrejuv_vs_mergekit"] = checkpoint_compare.compare_checkpoints(
            "rayrejuv_vs_mergekit", merged[MAIN], merged["mergekit"], args.atol_floor
        ).to_json()
    for tool in (t for t in (MAIN, "mergekit") if t in merged):
        log(f"[check] {tool} vs float32 reference")
        results[f"{tool}_vs_reference"] = checkpoint_compare.compare_with_fusion_reference(
            f"{tool}_vs_reference", merged[tool], base, sft, args.alpha, args.atol_floor
        ).to_json()
    return results


# --------------------------------------------------------------------------- reporting


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table_lines(record: dict) -> list[str]:
    ckpt, settings, summary = record["checkpoint"], record["settings"], record["summary"]
    lines = [
        "",
        f"fusion benchmark  size={ckpt['size']}  params={ckpt['params'] / 1e9:.3f}B  "
        f"checkpoint={ckpt['bytes_per_checkpoint'] / GB:.2f} GB x2 in {ckpt['shards']} shards",
        f"repeats={settings['repeats']}  page cache={settings['page_cache']}  alpha={settings['alpha']}  "
        f"cpus={record['machine']['cpus']}",
        "",
        f"{'command':<18} {'wall s':>8} {'peak RSS GB':>12} {'anon GB':>8} {'1-proc GB':>10} {'CPU s':>7} "
        f"{'other CPU':>10}",
    ]
    for tool in (t for t in TOOLS if t in summary):
        s = summary[tool]
        lines.append(
            f"{tool:<18} {s['wall_s_median']:>8.2f} {s['peak_rss_gb']:>12.2f} {s['peak_tree_anon_gb']:>8.2f} "
            f"{s['max_single_rss_gb']:>10.2f} {s['cpu_s_median']:>7.1f} {s['other_cpu_share_max']:>9.0%}"
        )
    return lines


def ratio_lines(r: dict) -> list[str]:
    lines = [""]
    for tool in RAYREJUV_VARIANTS:
        if f"{tool}_over_mergekit_wall" in r:
            target = (f"   target <= {TARGET_WALL_RATIO_VS_MERGEKIT}  {_verdict(r[f'{MAIN}_over_mergekit_wall_ok'])}"
                      if tool == MAIN else "")  # fmt: skip
            lines.append(f"{tool + '/mergekit wall':<32} {r[f'{tool}_over_mergekit_wall']:6.3f}{target}")
        for other in ("io_floor", MAIN):
            if f"{tool}_over_{other}_wall" in r:
                lines.append(f"{tool + '/' + other + ' wall':<32} {r[f'{tool}_over_{other}_wall']:6.3f}")
    if f"{MAIN}_first_repeat_over_mergekit_wall" in r:
        lines.append(f"{MAIN + ' repeat 1/mergekit wall':<32} {r[f'{MAIN}_first_repeat_over_mergekit_wall']:6.3f}"
                     "   (repeat 1 starts the tracking agent unless one is up)")  # fmt: skip
    if f"{MAIN}_peak_rss_gb" in r:
        lines.append(f"{MAIN + ' peak RSS GB':<32} {r[f'{MAIN}_peak_rss_gb']:6.3f}   target <= {TARGET_PEAK_RSS_GB}  "
                     f"{_verdict(r[f'{MAIN}_peak_rss_ok'])}")  # fmt: skip
    if "mergekit_over_io_floor_wall" in r:
        lines.append(f"{'mergekit/io_floor wall':<32} {r['mergekit_over_io_floor_wall']:6.3f}")
    return lines


def check_lines(checks: dict[str, dict]) -> list[str]:
    return [
        f"{label}: {_verdict(c['ok'])}  names equal={c['names_equal']} ({c['tensors_compared']} tensors), "
        f"tensors with any difference={c['tensors_with_any_difference']}, beyond 1 bf16 ulp="
        f"{len(c['tensors_beyond_tolerance'])}, elements different={c['elements_different']}/"
        f"{c['elements_compared']}, max|diff|={c['max_abs_diff']:.3g}"
        for label, c in checks.items()
    ]


def note_lines(record: dict) -> list[str]:
    summary, settings = record["summary"], record["settings"]
    busy = [
        t
        for t, s in summary.items()
        if s["other_cpu_share_max"] > OTHER_CPU_WARNING and s["other_cpu_s_max"] > OTHER_CPU_WARNING_MIN_S
    ]
    lines = []
    if busy:
        lines += ["", f"WARNING: other processes used > {OTHER_CPU_WARNING:.0%} of the CPUs during {', '.join(busy)}: "
                  "wall times are inflated (ratios between commands of the same run still compare)."]  # fmt: skip
    return lines + [
        "",
        "wall s: median over repeats.  peak RSS GB: max over repeats of max(summed RSS of the process tree sampled "
        f"every {settings['poll_interval_s'] * 1000:.0f} ms, kernel ru_maxrss).  anon GB: the sampled tree sum "
        "without file-backed/shared pages.  1-proc GB: kernel ru_maxrss (largest single process).  GB = 1e9 bytes.  "
        "CPU s: user+system time of the command's process tree.  other CPU: max share of all CPUs used by other "
        "processes during the run.",
    ]


def format_report(record: dict) -> str:
    lines = table_lines(record) + ratio_lines(record["ratios"]) + check_lines(record["correctness"])
    return "\n".join(lines + note_lines(record))


def write_results(path: Path, size: str, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema_version": 2, "results": {}}
    if path.exists():
        document = json.loads(path.read_text())
        document["schema_version"] = 2
    document["results"][size] = record
    path.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def make_record(args, spec, base: Path, sft: Path, inputs: list[Path], built: dict, runs: dict, checks: dict) -> dict:
    summary = {tool: summarize(measurements) for tool, measurements in runs.items()}
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / GB,
                    "platform": platform.platform(), "load_avg_1_5_15": os.getloadavg()},  # fmt: skip
        "versions": built["versions"],
        "checkpoint": {
            "size": args.size,
            "params": synth_llama.num_params(spec.shape),
            "bytes_per_checkpoint": sum(p.stat().st_size for p in inputs) // 2,
            "shards": spec.num_shards,
            "base": str(base),
            "sft": str(sft),
        },
        "settings": {"repeats": args.repeats, "page_cache": args.page_cache, "alpha": args.alpha,
                     "poll_interval_s": args.poll_interval, "atol_floor": args.atol_floor, "offline_env": OFFLINE_ENV},
        "commands": built["commands"],
        "mergekit_config": built["mergekit_config"],
        "runs": {tool: [m.to_json() for m in ms] for tool, ms in runs.items()},
        "summary": summary,
        "targets": {f"{MAIN}_over_mergekit_wall_max": TARGET_WALL_RATIO_VS_MERGEKIT,
                    f"{MAIN}_peak_rss_gb_max": TARGET_PEAK_RSS_GB},
        "ratios": ratios(summary),
        "correctness": checks,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tools = [tool for tool in TOOLS if tool in args.tools]
    spec = synth_llama.pair_spec(args.size, args.shards, args.seed)
    base, sft = synth_llama.build_pair(args.cache_dir, spec, log=log)
    work = args.cache_dir / args.size / "out"
    built = build_commands(args, tools, base, sft, work)
    inputs = sorted(base.glob("*.safetensors")) + sorted(sft.glob("*.safetensors"))
    try:
        runs = run_repeats(built["commands"], built["outputs"], inputs, args, work)
        checks = correctness(built["outputs"], base, sft, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record = make_record(args, spec, base, sft, inputs, built, runs, checks)
    write_results(args.results, args.size, record)
    log(format_report(record))
    log(f"\nresults written to {args.results}")
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
