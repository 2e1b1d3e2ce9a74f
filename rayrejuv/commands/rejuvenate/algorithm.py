"""Rejuvenation (paper Algorithm 1): base-anchored fusion + targeted neuron reset.

    check the inputs (the pair, the calibration file, no partial output left over) -> plan output shards ->
      in process:  find the reset set (steps 1-4), then write every shard (Eq. 1 + Eq. 5)
      on Ray:      LayerShard actors write fused shards WHILE the attribution actor finds the
                   reset set; then each actor patches its shards' reset neurons (Eq. 5)
    -> index, config, tokenizer, report, checksums -> rename into place.
Both paths give the same bytes. Shards that completed are marked, so --resume reuses them.
Which path runs: `execution_mode` (in process unless more processes can gain). The command's
entry, with its MLflow run, is driver.rejuvenate.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rejuvenate.report import REPORT, RESET_MAP, plot_reset_map, write_report
from rayrejuv.config.rejuvenation import FusionParams
from rayrejuv.config.runtime import RayConfig
from rayrejuv.data.chat import print_rendered
from rayrejuv.distributed.layer_shard import ShardResult, ShardWorker
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.pair import check_pair
from rayrejuv.io.writer import (
    MANIFEST,
    MARKER_SUFFIX,
    AtomicDir,
    ShardPlan,
    copy_side_files,
    plan_shards,
    remove_markers,
    verify_shards,
    write_index,
    write_manifest,
)
from rayrejuv.method.neurons import ResetSet
from rayrejuv.rejuvenation.job import RejuvenationJob
from rayrejuv.rejuvenation.reset_search import (
    AttributionStats,
    calibration_batches,
    calibration_example,
    find_reset_set,
    neuron_index,
)
from rayrejuv.rejuvenation.writer import output_entries
from rayrejuv.runs.cluster import cluster_address
from rayrejuv.runs.resources import set_torch_threads
from rayrejuv.timing import PhaseTimer


@dataclass
class Outcome:
    """What an execution path returns."""

    reset: ResetSet  # the reset set it applied (empty for --fusion-only)
    stats: AttributionStats | None  # what the attribution saw; None for --fusion-only
    results: list[ShardResult]  # the final shards, in plan order
    execution: dict  # the report's `execution`: mode, workers (on Ray also nodes, per-worker seconds)


def write_checkpoint(cfg: RejuvenateConfig, progress: bool) -> dict:
    """Write the rejuvenated checkpoint to cfg.out and return its report."""
    timer = PhaseTimer()
    with (
        Checkpoint(cfg.base, role="base", allow_pickle=cfg.allow_pickle) as base,
        Checkpoint(cfg.sft, role="SFT", allow_pickle=cfg.allow_pickle) as sft,
    ):
        with timer.phase("validate"):
            names = check_pair(base, sft)
            example = check_calibration(cfg, sft, progress)
            out = AtomicDir(cfg.out, overwrite=cfg.overwrite, resumable=True, resume=cfg.resume)
            check_leftover(out, cfg)
            plans = plan_shards(output_entries(names, sft, cfg.dtype), int(cfg.max_shard_gb * 1e9))
        with say_what_is_left(out), out:
            out.require_free_bytes(sum(p.nbytes for p in plans))
            job = RejuvenationJob(
                cfg.base, cfg.sft, cfg.allow_pickle, fusion_params(cfg), out.tmp, tuple(plans),
                fingerprint(cfg, plans, base, sft),
            )  # fmt: skip
            outcome = EXECUTION_MODES[execution_mode(cfg.ray)](cfg, job, base, sft, timer, progress)
            with timer.phase("finalize"):
                finalize(job, sft, names, outcome, cfg.dtype)
            report = build_report(cfg, sft, outcome, timer, plans) | {"calibration_example": example}
            warn_union_size(cfg, report)
            write_report(out.tmp / REPORT, report)
            if outcome.reset.size:
                kinds = [k.name for k in sft.spec.neuron_kinds]
                plot_reset_map(outcome.reset, sft.geometry.num_layers, kinds, out.tmp / RESET_MAP)
            out.commit()
    return report


def check_calibration(cfg: RejuvenateConfig, sft: Checkpoint, show: bool) -> str | None:
    """Refuse a bad calibration file before any work, on either path (on Ray the attribution actor
    reads it, which would otherwise be after the fusion ran). Returns its first row as the model
    sees it (printed when `show`; the report keeps it), None for --fusion-only."""
    if cfg.fusion_only:
        return None
    calibration_batches(cfg, sft)
    example = calibration_example(cfg, sft)
    if show:
        print_rendered(example, cfg.chat_template, "calibration")
    return example


def check_leftover(out: AtomicDir, cfg: RejuvenateConfig) -> None:
    """A partial output left by a killed run (.<out>.partial) is named, with the ways on: it is
    neither resumed nor discarded without being asked."""
    if out.tmp.exists() and not cfg.resume and not cfg.overwrite:
        raise RejuvError(f"{leftover(out)}; pass --resume to finish that run, or --overwrite to discard it")


def leftover(out: AtomicDir) -> str:
    done = len(list(out.tmp.glob(f"*{MARKER_SUFFIX}")))
    return f"a partial output of an interrupted run is left at {out.tmp} ({done} finished shard(s))"


@contextmanager
def say_what_is_left(out: AtomicDir):
    """When a run fails and its partial output stays (a crash, not a refused input), say where
    and how to go on; outside `with out`, so it sees what AtomicDir kept."""
    try:
        yield
    except BaseException:
        if out.tmp.exists():
            print(f"{leftover(out)}: rerun with --resume to reuse them, or --overwrite to discard it", file=sys.stderr)
        raise


def warn_union_size(cfg: RejuvenateConfig, report: dict) -> None:
    """--selection union gives whatever the union of per-token tops is: say when it is larger
    than reset_ratio asks for, and its real ratio."""
    requested = report["reset_requested"]
    if cfg.selection == "union" and requested is not None and report["reset_count"] > requested:
        warnings.warn(
            f"--selection union reset {report['reset_count']} neurons, {report['reset_count'] / requested:.1f}x "
            f"the {requested} that --reset-ratio {cfg.reset_ratio} asks for: a real ratio of "
            f"{report['reset_fraction_of_candidates']:.4f} of the {report['candidates']} candidates "
            f"({report['reset_fraction']:.4f} of all {report['num_neurons']} neurons)",
            stacklevel=2,
        )


def fusion_params(cfg: RejuvenateConfig) -> FusionParams:
    return FusionParams(**cfg.model_dump(include=set(FusionParams.model_fields)))


def no_reset(sft: Checkpoint) -> tuple[ResetSet, None]:
    """--fusion-only: an empty reset set over the checkpoint's neurons, no attribution."""
    return ResetSet.empty(neuron_index(sft).total), None


# --------------------------------------------------------------------------- where it runs


def execution_mode(rc: RayConfig) -> str:
    """'ray' or 'in-process'. `ray.enabled` decides when set (--ray / --no-ray). Unset, a run goes
    on Ray only where more processes can gain: a cluster is named (--ray-address, $RAY_ADDRESS),
    this process is already connected to Ray (a Ray job, the demo), or more than one LayerShard
    worker is asked for (--workers N > 1). On one machine fusion is IO/memory-bound and the
    in-process writer already overlaps reading, computing and writing, so starting Ray (seconds)
    buys nothing; the attribution's overlap with fusion is worth it only for large checkpoints
    (pass --ray)."""
    if rc.enabled is not None:
        return "ray" if rc.enabled else "in-process"
    asked = rc.workers is not None and rc.workers > 1
    return "ray" if cluster_address(rc.address) is not None or _ray_connected() or asked else "in-process"


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # not imported means not connected (and importing it costs ~1 s)
    return ray is not None and ray.is_initialized()


def rejuvenate_in_process(cfg, job: RejuvenationJob, base, sft, timer: PhaseTimer, progress: bool) -> Outcome:
    with threads_for(cfg.ray.attribution_cpus):  # the same threads as the attribution actor on Ray
        reset, stats = no_reset(sft) if cfg.fusion_only else find_reset_set(cfg, base, sft, timer, progress)
    worker, digest = ShardWorker(job, None), reset.digest()
    results: list[ShardResult] = []
    with (
        timer.phase("write"),
        tqdm(total=job.nbytes, desc="fuse + reset", unit="B", unit_scale=True, disable=not progress) as bar,
        worker,  # its own handles on the pair, closed after the last shard
    ):
        for plan in job.plans:
            results.append(worker.write(plan, reset, digest))
            bar.update(plan.nbytes)
    return Outcome(reset, stats, results, {"mode": "in-process", "workers": 1})


@contextmanager
def threads_for(reserved_cpus: float):
    """torch's threads sized to the CPUs a step reserves, for the block, then as they were (in
    process the step shares its process with the caller; the writer keeps its own threads)."""
    import torch

    old = torch.get_num_threads()
    set_torch_threads(reserved_cpus)
    try:
        yield
    finally:
        set_torch_threads(old)


def rejuvenate_on_ray(cfg, job: RejuvenationJob, base, sft, timer: PhaseTimer, progress: bool) -> Outcome:
    from rayrejuv.distributed.group import LayerShardGroup, per_worker_seconds
    from rayrejuv.runs.cluster import ray_session

    rc = cfg.ray
    attribution_cpus = 0.0 if cfg.fusion_only else rc.attribution_cpus
    # A local instance gets enough logical CPUs for every actor (one per core by default, plus
    # the attribution actor): Ray would otherwise leave the attribution actor pending forever.
    local_workers = rc.workers if rc.workers is not None else os.cpu_count()
    t0 = time.perf_counter()
    with ray_session(rc.address, local_workers * rc.cpus_per_worker + attribution_cpus) as resources:
        timer.seconds["ray_start"] = time.perf_counter() - t0
        workers = shard_workers(rc, resources, attribution_cpus, len(job.plans))
        with timer.phase("actors_start"):
            group = LayerShardGroup(job, workers, rc)
        try:
            nodes = group.nodes()
            on_ray = fuse_on_ray if cfg.fusion_only else fuse_and_reset_on_ray
            reset, stats, results, timed = on_ray(group, cfg, job, sft, timer, progress)
        finally:
            group.shutdown()
    return Outcome(
        reset, stats, results,
        {"mode": "ray", "workers": workers, "nodes": sorted(set(nodes)), "per_worker": per_worker_seconds(timed)},
    )  # fmt: skip


def shard_workers(rc: RayConfig, resources: dict[str, float], attribution_cpus: float, num_shards: int) -> int:
    """LayerShard actors: ray.workers, else one per GPU, else one per CPU the attribution actor
    leaves; never more than there are shards. Refuses a cluster too small for them."""
    cpus, gpus = _amount(resources, "CPU"), _amount(resources, "GPU")
    default = int(gpus) or max(1, int((cpus - attribution_cpus) // rc.cpus_per_worker))
    workers = min(rc.workers if rc.workers is not None else default, num_shards)
    needed = workers * rc.cpus_per_worker + attribution_cpus
    if needed > cpus:
        raise RejuvError(
            f"the Ray cluster has {cpus:g} CPUs but {workers} workers x {rc.cpus_per_worker:g} "
            f"+ attribution {attribution_cpus:g} need {needed:g}; lower --workers or ray.cpus_per_worker"
        )
    return workers


def _amount(resources: dict[str, float], name: str) -> float:
    return float(resources.get(name, 0.0))  # Ray leaves out a resource the cluster has none of


def fuse_on_ray(group, cfg, job: RejuvenationJob, sft, timer: PhaseTimer, progress: bool):
    """--fusion-only on Ray: each actor writes its final shards. (reset, stats, final, timed results)"""
    reset, stats = no_reset(sft)
    with timer.phase("write"):
        results = group.map("write", list(job.plans), [(reset, reset.digest())] * len(job.plans), "fuse", progress)
    return reset, stats, results, results


def fuse_and_reset_on_ray(group, cfg, job: RejuvenationJob, sft, timer: PhaseTimer, progress: bool):
    """The attribution actor finds the reset set while the LayerShard actors write fused shards;
    then each actor patches its shards' reset neurons. (reset, stats, final, timed results)"""
    import ray

    from rayrejuv.distributed.attribution import AttributionWorker

    rc, plans = cfg.ray, list(job.plans)
    gpus = rc.attribution_gpus if rc.attribution_gpus is not None else float(cfg.device.startswith("cuda"))
    attributor = ray.remote(AttributionWorker).options(num_cpus=rc.attribution_cpus, num_gpus=gpus)
    attributor = attributor.remote(rc.attribution_cpus)
    attribution = attributor.run.remote(cfg, job, progress)  # runs while the workers fuse
    with timer.phase("write"):
        fused = group.map("write", plans, [(None, "")] * len(plans), "fuse", progress)
    with timer.phase("attribution_wait"):
        reset, stats, attribution_timings = ray.get(attribution)
    timer.seconds.update({f"attribution_actor.{k}": v for k, v in attribution_timings.items()})
    with timer.phase("reset"):
        digest = reset.digest()
        results = group.map("patch", plans, [(f, reset, digest) for f in fused], "reset", progress)
    return reset, stats, results, fused + results


EXECUTION_MODES = {"in-process": rejuvenate_in_process, "ray": rejuvenate_on_ray}


# --------------------------------------------------------------------------- the output around the shards


def finalize(job: RejuvenationJob, sft: Checkpoint, names: list[str], outcome: Outcome, dtype: str) -> None:
    """Everything but the shards: verified shards, index, config, side files, checksums."""
    plans = list(job.plans)
    verify_shards(job.directory, plans)
    remove_markers(job.directory)
    write_index(job.directory, plans)
    copy_side_files(sft.path, job.directory, skip={"config.json", REPORT, RESET_MAP, MANIFEST})
    tied = sft.spec.lm_head not in names
    write_output_config(sft.path / "config.json", job.directory / "config.json", tied, dtype)
    write_manifest(job.directory, {k: v for r in outcome.results for k, v in r.checksums.items()})


def fingerprint(cfg: RejuvenateConfig, plans: list[ShardPlan], base: Checkpoint, sft: Checkpoint) -> str:
    """What a shard's bytes depend on: inputs, the output plan and the hyperparameters."""
    inputs = [
        (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for c in (base, sft)
        for p in sorted(c.path.iterdir())
        if p.suffix in (".safetensors", ".bin")
    ]
    body = {
        "inputs": inputs,
        "alpha": cfg.alpha,
        "omega": cfg.omega,
        "dtype": cfg.dtype,
        "plans": [(p.file, [(n, str(m.dtype), m.shape) for n, m in p.entries]) for p in plans],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_output_config(src: Path, dst: Path, tied: bool, dtype: str) -> None:
    """The SFT config, with the output's tying (an untied result must not say tied) and dtype."""
    config = json.loads(src.read_text())
    config["tie_word_embeddings"] = tied
    if dtype != "auto":
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    dst.write_text(json.dumps(config, indent=2, sort_keys=True))


def build_report(cfg, sft: Checkpoint, outcome: Outcome, timer: PhaseTimer, plans: list[ShardPlan]) -> dict:
    reset = outcome.reset
    return {
        "config": cfg.model_dump(mode="json"),
        "architecture": sft.geometry.architecture,
        "num_layers": sft.geometry.num_layers,
        "num_neurons": reset.num_neurons,
        "reset_count": reset.size,
        "reset_fraction": reset.size / max(reset.num_neurons, 1),
        **candidate_counts(reset, outcome.stats),
        "reset_by_kind": reset.count_by_kind(),
        "reset_by_layer": {str(k): v for k, v in reset.count_by_layer().items()},
        "attribution": asdict(outcome.stats) if outcome.stats is not None else None,
        "output": {
            "files": [p.file for p in plans],
            "bytes": sum(p.nbytes for p in plans),
            "reused_shards": sum(r.reused for r in outcome.results),
        },
        "execution": outcome.execution,
        "timings_s": dict(timer.seconds),
        "neurons": reset.records(),
    }


def candidate_counts(reset: ResetSet, stats: AttributionStats | None) -> dict:
    """The report's view of what the reset was chosen from (None for --fusion-only): candidate
    neurons, those excluded as untouched by SFT, the size reset_ratio asks for, the real ratio."""
    if stats is None:
        return dict.fromkeys(("candidates", "excluded_untouched", "reset_requested", "reset_fraction_of_candidates"))
    return {
        "candidates": stats.candidates,
        "excluded_untouched": stats.excluded_untouched,
        "reset_requested": stats.reset_requested,
        "reset_fraction_of_candidates": reset.size / max(stats.candidates, 1),
    }
