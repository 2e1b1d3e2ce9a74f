"""Rejuvenation (paper Algorithm 1): base-anchored fusion + targeted neuron reset.

    validate the pair -> plan output shards ->
      in process:  find the reset set (steps 1-4), then write every shard (Eq. 1 + Eq. 5)
      on Ray:      LayerShard actors write fused shards WHILE the attribution actor finds the
                   reset set; then each actor patches its shards' reset neurons (Eq. 5)
    -> index, config, tokenizer, report, checksums -> rename into place.
Both paths give the same bytes. Shards that completed are marked, so --resume reuses them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rejuvenate.report import REPORT, RESET_MAP, plot_reset_map, write_report
from rayrejuv.distributed.layer_shard import ShardResult, ShardWorker
from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.pair import check_pair
from rayrejuv.io.writer import (
    MANIFEST,
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
from rayrejuv.rejuvenation.reset_search import find_reset_set, neuron_index
from rayrejuv.rejuvenation.writer import output_entries
from rayrejuv.runs.tracking import tracked_run
from rayrejuv.timing import PhaseTimer


def rejuvenate(cfg: RejuvenateConfig, progress: bool = True) -> dict:
    """Write the rejuvenated checkpoint to cfg.out and return its report."""
    timer = PhaseTimer()
    with tracked_run(cfg.tracking, run_name=f"rejuvenate:{Path(cfg.sft).name}") as run:
        run.log_params(cfg.model_dump(mode="json"))
        with (
            Checkpoint(cfg.base, role="base", allow_pickle=cfg.allow_pickle) as base,
            Checkpoint(cfg.sft, role="SFT", allow_pickle=cfg.allow_pickle) as sft,
        ):
            with timer.phase("validate"):
                names = check_pair(base, sft)
                out = AtomicDir(cfg.out, overwrite=cfg.overwrite, resumable=True, resume=cfg.resume)
                plans = plan_shards(output_entries(names, sft, cfg.dtype), int(cfg.max_shard_gb * 1e9))
            with out:
                out.require_free_bytes(sum(p.nbytes for p in plans))
                run_shards = rejuvenate_on_ray if cfg.ray.enabled else rejuvenate_in_process
                reset, stats, results, extra = run_shards(
                    cfg, base, sft, plans, out.tmp, fingerprint(cfg, plans, base, sft), timer, progress
                )
                with timer.phase("finalize"):
                    verify_shards(out.tmp, plans)
                    remove_markers(out.tmp)
                    write_index(out.tmp, plans)
                    copy_side_files(sft.path, out.tmp, skip={"config.json", REPORT, RESET_MAP, MANIFEST})
                    tied = sft.spec.lm_head not in names
                    write_output_config(sft.path / "config.json", out.tmp / "config.json", tied, cfg.dtype)
                    write_manifest(out.tmp, {k: v for r in results for k, v in r.checksums.items()})
                report = build_report(cfg, sft, reset, stats, timer, plans, results, extra)
                write_report(out.tmp / REPORT, report)
                if reset.size:
                    kinds = [k.name for k in sft.spec.neuron_kinds]
                    plot_reset_map(reset, sft.geometry.num_layers, kinds, out.tmp / RESET_MAP)
                out.commit()
        run.log_metrics(summary_metrics(report))
        run.log_artifact(Path(cfg.out) / REPORT)
        if reset.size:
            run.log_artifact(Path(cfg.out) / RESET_MAP)
    return report


def rejuvenate_in_process(cfg, base, sft, plans, directory, fp, timer, progress):
    if cfg.fusion_only:
        reset, stats = ResetSet.empty(neuron_index(sft).total), None
    else:
        reset, stats = find_reset_set(cfg, base, sft, timer, progress)
    worker = ShardWorker(str(cfg.base), str(cfg.sft), cfg.allow_pickle, str(directory), cfg.alpha, cfg.omega, fp)
    results: list[ShardResult] = []
    with (
        timer.phase("write"),
        tqdm(
            total=sum(p.nbytes for p in plans), desc="fuse + reset", unit="B", unit_scale=True, disable=not progress
        ) as bar,
    ):
        for plan in plans:
            results.append(worker.write(plan, reset, reset.digest()))
            bar.update(plan.nbytes)
    return reset, stats, results, {"mode": "in-process", "workers": 1}


def rejuvenate_on_ray(cfg, base, sft, plans, directory, fp, timer, progress):
    import os

    from rayrejuv.runs.cluster import ray_session

    rc = cfg.ray
    # A local instance gets enough logical CPUs for every actor (one per core by default, plus
    # the attribution actor): Ray would otherwise leave the attribution actor pending forever.
    workers = rc.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with ray_session(rc.address, workers * rc.cpus_per_worker + rc.attribution_cpus) as resources:
        timer.seconds["ray_start"] = time.perf_counter() - t0
        return _on_ray(cfg, sft, plans, directory, fp, timer, progress, resources)


def _on_ray(cfg, sft, plans, directory, fp, timer, progress, resources):
    import ray

    from rayrejuv.distributed.attribution import AttributionWorker
    from rayrejuv.distributed.group import LayerShardGroup, per_worker_seconds

    rc = cfg.ray
    attribution_cpus = 0.0 if cfg.fusion_only else rc.attribution_cpus
    default = int(resources.get("GPU", 0)) or max(
        1, int((resources.get("CPU", 1) - attribution_cpus) // rc.cpus_per_worker)
    )
    workers = min(rc.workers or default, len(plans))
    needed = workers * rc.cpus_per_worker + attribution_cpus
    if needed > resources.get("CPU", 0):
        raise RejuvError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs but {workers} workers x {rc.cpus_per_worker:g} "
            f"+ attribution {attribution_cpus:g} need {needed:g}; lower --workers or ray.cpus_per_worker"
        )
    args = {
        "base": str(cfg.base),
        "sft": str(cfg.sft),
        "allow_pickle": cfg.allow_pickle,
        "directory": str(directory),
        "alpha": cfg.alpha,
        "omega": cfg.omega,
        "fingerprint": fp,
    }
    with timer.phase("actors_start"):
        group = LayerShardGroup(
            workers,
            args,
            cpus=rc.cpus_per_worker,
            gpus=rc.gpus_per_worker,
            placement=rc.placement,
            max_restarts=rc.max_restarts,
        )
    try:
        nodes = group.nodes()
        if cfg.fusion_only:
            reset, stats = ResetSet.empty(neuron_index(sft).total), None
            with timer.phase("write"):
                results = group.map("write", plans, [(reset, reset.digest())] * len(plans), "fuse", progress)
            timed = results
        else:
            gpus = rc.attribution_gpus if rc.attribution_gpus is not None else float(cfg.device.startswith("cuda"))
            attributor = ray.remote(AttributionWorker).options(num_cpus=rc.attribution_cpus, num_gpus=gpus).remote()
            # runs while the workers fuse
            attribution = attributor.run.remote(cfg, cfg.base, cfg.sft, cfg.allow_pickle, progress)
            with timer.phase("write"):
                fused = group.map("write", plans, [(None, "")] * len(plans), "fuse", progress)
            with timer.phase("attribution_wait"):
                reset, stats, attribution_timings = ray.get(attribution)
            timer.seconds.update({f"attribution_actor.{k}": v for k, v in attribution_timings.items()})
            with timer.phase("reset"):
                digest = reset.digest()
                results = group.map("patch", plans, [(f, reset, digest) for f in fused], "reset", progress)
            timed = fused + results
    finally:
        group.shutdown()
    extra = {"mode": "ray", "workers": workers, "nodes": sorted(set(nodes)), "per_worker": per_worker_seconds(timed)}
    return reset, stats, results, extra


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


def build_report(cfg, sft: Checkpoint, reset: ResetSet, stats, timer: PhaseTimer, plans, results, extra) -> dict:
    from dataclasses import asdict

    return {
        "config": cfg.model_dump(mode="json"),
        "architecture": sft.geometry.architecture,
        "num_layers": sft.geometry.num_layers,
        "num_neurons": reset.num_neurons,
        "reset_count": reset.size,
        "reset_fraction": reset.size / max(reset.num_neurons, 1),
        "reset_by_kind": reset.count_by_kind(),
        "reset_by_layer": {str(k): v for k, v in reset.count_by_layer().items()},
        "attribution": asdict(stats) if stats is not None else None,
        "output": {
            "files": [p.file for p in plans],
            "bytes": sum(p.nbytes for p in plans),
            "reused_shards": sum(r.reused for r in results),
        },
        "execution": extra,
        "timings_s": dict(timer.seconds),
        "neurons": reset.records(),
    }


def summary_metrics(report: dict) -> dict[str, float]:
    m = {
        "reset_count": report["reset_count"],
        "reset_fraction": report["reset_fraction"],
        "reused_shards": report["output"]["reused_shards"],
        **{f"reset_by_kind.{k}": v for k, v in report["reset_by_kind"].items()},
        **{f"time.{k}": v for k, v in report["timings_s"].items()},
    }
    if report["attribution"] is not None:
        m.update({f"attribution.{k}": v for k, v in report["attribution"].items()})
    return m
