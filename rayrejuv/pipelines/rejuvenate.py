"""Rejuvenation (paper Algorithm 1): base-anchored fusion + targeted neuron reset, one pass."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rayrejuv.config import RejuvenateConfig
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.pair import check_pair
from rayrejuv.io.writer import MANIFEST, AtomicDir, copy_side_files, plan_shards, write_index, write_manifest
from rayrejuv.method.neurons import ResetSet
from rayrejuv.pipelines.fuse_reset import output_entries, write_shards
from rayrejuv.pipelines.targeted_reset import find_reset_set, neuron_index
from rayrejuv.plots import plot_reset_map
from rayrejuv.report import REPORT, RESET_MAP, write_report
from rayrejuv.timing import PhaseTimer
from rayrejuv.tracking import tracked_run


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
                out = AtomicDir(cfg.out, overwrite=cfg.overwrite)  # refuses an existing dir before any work

            # Steps 1-4: which neurons to reset (attribution needs base and SFT, not the output).
            if cfg.fusion_only:
                reset, stats = ResetSet.empty(neuron_index(sft).total), None
            else:
                reset, stats = find_reset_set(cfg, base, sft, timer, progress)

            # Eq. 1 + Eq. 5, tensor by tensor, into a temporary directory renamed on success.
            with out:
                with timer.phase("write"):
                    entries = output_entries(names, sft, cfg.dtype)
                    plans = plan_shards(entries, int(cfg.max_shard_gb * 1e9))
                    out.require_free_bytes(sum(p.nbytes for p in plans))
                    checksums = write_shards(out.tmp, plans, base, sft, reset, cfg.alpha, cfg.omega, progress)
                    write_index(out.tmp, plans)
                    copy_side_files(sft.path, out.tmp, skip={"config.json", REPORT, RESET_MAP, MANIFEST})
                    tied = sft.spec.lm_head not in names
                    write_output_config(sft.path / "config.json", out.tmp / "config.json", tied, cfg.dtype)
                    write_manifest(out.tmp, checksums)
                report = build_report(cfg, sft, reset, stats, timer, plans)
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


def write_output_config(src: Path, dst: Path, tied: bool, dtype: str) -> None:
    """The SFT config, with the output's tying (an untied result must not say tied) and dtype."""
    config = json.loads(src.read_text())
    config["tie_word_embeddings"] = tied
    if dtype != "auto":
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    dst.write_text(json.dumps(config, indent=2, sort_keys=True))


def build_report(cfg, sft: Checkpoint, reset: ResetSet, stats, timer: PhaseTimer, plans) -> dict:
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
        "output": {"files": [p.file for p in plans], "bytes": sum(p.nbytes for p in plans)},
        "timings_s": dict(timer.seconds),
        "neurons": reset.records(),
    }


def summary_metrics(report: dict) -> dict[str, float]:
    m = {
        "reset_count": report["reset_count"],
        "reset_fraction": report["reset_fraction"],
        **{f"reset_by_kind.{k}": v for k, v in report["reset_by_kind"].items()},
        **{f"time.{k}": v for k, v in report["timings_s"].items()},
    }
    if report["attribution"] is not None:
        m.update({f"attribution.{k}": v for k, v in report["attribution"].items()})
    return m
