"""`rayrejuv diagnose`: is this SFT checkpoint rigid? (paper Table 1 symptoms + Figure 3 drift)

    for every SFT checkpoint: drift from the base, per matrix
    for the base (reference) and every SFT checkpoint:
        SFT loss and mean token entropy (teacher-forced), greedy pass@1, pass@k and their gap
        verdict from explicit thresholds (rigid, at risk, plastic; undetermined where the data
        left a symptom unmeasured and none was found)
    figures, report.md and diagnose.json -> OUT (written to a temporary sibling, renamed when complete)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rayrejuv.commands.diagnose.config import DiagnoseConfig
from rayrejuv.commands.diagnose.report import (
    EPOCHS,
    markdown_report,
    plot_drift_by_layer,
    plot_heatmaps,
    plot_ladder,
)
from rayrejuv.commands.diagnose.results import Diagnosis, DiagnosisRow, DriftRow, Thresholds
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.pair import check_pair
from rayrejuv.io.writer import AtomicDir
from rayrejuv.method.metrics import mean_squared_drift, pooled_abs_delta, relative_drift
from rayrejuv.models.evaluate import evaluate_pass_at_k, teacher_forced_stats
from rayrejuv.models.loading import load_model, load_tokenizer, resolve_device
from rayrejuv.runs.tracking import Run, tracked_run

_EPOCH = re.compile(r"epoch-([0-9.]+)$")


def diagnose(cfg: DiagnoseConfig, progress: bool = True) -> Diagnosis:
    # A report, not a resumable run: it appears complete or not at all, and --overwrite replaces
    # the old one only once the new one is written (AtomicDir; a run directory is claimed up front).
    out = AtomicDir(cfg.out or Path(f"diagnose-{Path(cfg.sft[-1]).name}"), overwrite=cfg.overwrite)
    base, sfts = _checkpoints(cfg)
    labels = _labels(cfg.sft)
    rows, device = _read_data(cfg), resolve_device(cfg.device)
    thresholds = Thresholds(entropy=cfg.entropy_threshold, sft_loss=cfg.loss_threshold, pass_gap=cfg.gap_threshold)
    with tracked_run(cfg.tracking, run_name=f"diagnose:{labels[-1]}") as run, out:
        run.log_params(cfg.model_dump(mode="json") | _rendered_example(cfg, rows, sfts[-1], progress))
        checkpoints = ([("base", base)] if cfg.include_base else []) + list(zip(labels, sfts))
        measured = {label: evaluate_checkpoint(ckpt, rows, cfg, device, progress) for label, ckpt in checkpoints}
        drift = {label: drift_table(base, ckpt, progress) for label, ckpt in zip(labels, sfts)}
        table = [
            DiagnosisRow(checkpoint=label, path=str(ckpt.path), **measured[label], **drift_summary(drift, label))
            .judged(thresholds)
            for label, ckpt in checkpoints
        ]
        figures = write_figures(out.tmp, cfg, base, sfts[-1], labels, table, drift, thresholds)
        result = Diagnosis(cfg.model_dump(mode="json"), thresholds, table, drift, figures, out=str(out.target))
        (out.tmp / "diagnose.json").write_text(json.dumps(result.to_json(), indent=2))
        (out.tmp / "report.md").write_text(markdown_report(result))
        out.commit()
        _log(run, result)
    return result


def _checkpoints(cfg: DiagnoseConfig) -> tuple[Checkpoint, list[Checkpoint]]:
    base = Checkpoint(cfg.base, role="base")
    sfts = [Checkpoint(p, role="SFT") for p in cfg.sft]
    for s in sfts:
        check_pair(base, s)
    return base, sfts


def _read_data(cfg: DiagnoseConfig) -> list[dict[str, str]]:
    if cfg.data is None:
        return []
    return read_jsonl(cfg.data, ("prompt",), "diagnose data", optional=("response", "answer"))[: cfg.max_examples]


def _rendered_example(cfg: DiagnoseConfig, rows: list[dict], sft: Checkpoint, show: bool) -> dict[str, str]:
    """What the model sees for the first row (printed when `show`), for the run's params; {} without data."""
    from rayrejuv.data.chat import print_rendered, rendered_text

    if not rows:
        return {}
    text = rendered_text(load_tokenizer(sft), rows[0], cfg.chat_template)
    if show:
        print_rendered(text, cfg.chat_template, "diagnose")
    return {"rendered_prompt": text}


def _labels(paths: list[Path]) -> list[str]:
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _log(run: Run, result: Diagnosis) -> None:
    for r in result.rows:
        run.log_metrics({f"{r.checkpoint}.{k}": v for k, v in r.numbers().items()})
    out = Path(result.out)
    run.log_artifact(out / "diagnose.json")
    run.log_artifact(out / "report.md")
    for f in result.figures:
        run.log_artifact(out / f, artifact_path="figures")


def evaluate_checkpoint(ckpt: Checkpoint, rows, cfg: DiagnoseConfig, device, progress: bool) -> dict:
    """The DiagnosisRow fields the data allows: loss and entropy from responses, pass@k from answers."""
    if not rows:
        return {}
    tok = load_tokenizer(ckpt)
    model = load_model(ckpt, torch.float32, device)
    out: dict = {}
    if "response" in rows[0]:
        out.update(teacher_forced_stats(model, tok, rows, cfg.chat_template, cfg.batch_size))
    if "answer" in rows[0]:
        p = evaluate_pass_at_k(
            model,
            tok,
            rows,
            chat_template=cfg.chat_template,
            k=cfg.k,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            progress=progress,
        )
        out.update(
            {
                "pass_at_1": p.pass_at_1,
                "pass_at_k": p.pass_at_k,
                "pass_gap": p.gap,
                "sample_accuracy": p.sample_accuracy,
                "k": p.k,
            }
        )
    return out


def drift_table(base: Checkpoint, sft: Checkpoint, progress: bool) -> list[DriftRow]:
    """Per matrix (every tensor of the SFT checkpoint): mean-squared and relative drift."""
    rows = []
    for name in tqdm(sft.names, desc=f"drift {sft.path.name}", unit="tensor", disable=not progress):
        s, b = sft.get(name), base.get(name)
        role = sft.spec.role(name)
        module = role.kind.name if role.kind is not None else name.rsplit(".", 2)[-2]
        rows.append(DriftRow(name, role.layer, module, mean_squared_drift(s, b), relative_drift(s, b)))
    return rows


def drift_summary(drift: dict[str, list[DriftRow]], label: str) -> dict[str, float]:
    """Mean squared drift over the matrices, and the largest relative drift (none for the base)."""
    if label not in drift:
        return {}
    rows = drift[label]
    return {"drift_msd_mean": sum(d.msd for d in rows) / len(rows), "drift_rel_max": max(d.relative for d in rows)}


def write_figures(
    directory: Path, cfg, base, last_sft, labels, table: list[DiagnosisRow], drift, thresholds: Thresholds
) -> list[str]:
    plot_drift_by_layer(drift, directory / "drift_by_layer.png")
    figs = ["drift_by_layer.png"]
    if cfg.heatmaps and _plot_top_heatmaps(directory, cfg.heatmaps, base, last_sft, labels[-1], drift[labels[-1]]):
        figs.append("drift_heatmaps.png")
    sft_rows = [r for r in table if r.checkpoint in labels]
    if len(sft_rows) > 1 and (sft_rows[0].entropy is not None or sft_rows[0].pass_at_1 is not None):
        epochs = [_EPOCH.search(lbl) for lbl in labels]
        if all(epochs):
            xs, xlabel = [float(m.group(1)) for m in epochs], EPOCHS
        else:
            xs, xlabel = [float(i + 1) for i in range(len(labels))], "checkpoint"
        plot_ladder(sft_rows, xs, xlabel, thresholds, directory / "ladder.png")
        figs.append("ladder.png")
    return figs


def _plot_top_heatmaps(directory: Path, n: int, base, sft, label: str, drift: list[DriftRow]) -> bool:
    """Heat maps of the `n` most-drifted matrices of `sft`; False when it has no matrix."""
    top = sorted((d for d in drift if len(sft.meta(d.name).shape) == 2), key=lambda d: -d.msd)[:n]
    maps = [(d.name, pooled_abs_delta(sft.get(d.name), base.get(d.name))) for d in top]
    if maps:
        plot_heatmaps(maps, f"largest |SFT - base| ({label})", directory / "drift_heatmaps.png")
    return bool(maps)
