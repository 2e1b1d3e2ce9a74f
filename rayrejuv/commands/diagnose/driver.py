"""`rayrejuv diagnose`: is this SFT checkpoint rigid? (paper Table 1 symptoms + Figure 3 drift)

For the base (reference) and every SFT checkpoint: SFT loss and mean token entropy
(teacher-forced), greedy pass@1, pass@k and their gap; per-matrix drift from the base. Then a
verdict per checkpoint from explicit thresholds, a Markdown report, figures and diagnose.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rayrejuv.commands.diagnose.config import DiagnoseConfig
from rayrejuv.commands.diagnose.report import plot_drift_by_layer, plot_heatmaps, plot_ladder
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.io.checkpoint import Checkpoint
from rayrejuv.io.pair import check_pair
from rayrejuv.io.writer import AtomicDir
from rayrejuv.method.metrics import mean_squared_drift, pooled_abs_delta, relative_drift
from rayrejuv.models.evaluate import evaluate_pass_at_k, teacher_forced_stats
from rayrejuv.models.loading import load_model, load_tokenizer, resolve_device
from rayrejuv.runs.tracking import tracked_run

_EPOCH = re.compile(r"epoch-([0-9.]+)$")


def diagnose(cfg: DiagnoseConfig, progress: bool = True) -> dict:
    out = AtomicDir(cfg.out or Path(f"diagnose-{Path(cfg.sft[-1]).name}"), overwrite=cfg.overwrite)
    base = Checkpoint(cfg.base, role="base")
    sfts = [Checkpoint(p, role="SFT") for p in cfg.sft]
    for s in sfts:
        check_pair(base, s)
    rows = _read_data(cfg)
    labels = _labels(cfg.sft)
    device = resolve_device(cfg.device)
    with tracked_run(cfg.tracking, run_name=f"diagnose:{labels[-1]}") as run, out:
        run.log_params(cfg.model_dump(mode="json"))
        table = []
        for label, ckpt in ([("base", base)] if cfg.include_base else []) + list(zip(labels, sfts)):
            row = {
                "checkpoint": label,
                "path": str(ckpt.path),
                **evaluate_checkpoint(ckpt, rows, cfg, device, progress),
            }
            table.append(row)
        drift = {}
        for label, ckpt in zip(labels, sfts):
            drift[label] = drift_table(base, ckpt, progress)
        for r in table:
            if r["checkpoint"] in drift:
                r["drift_msd_mean"] = sum(d["msd"] for d in drift[r["checkpoint"]]) / len(drift[r["checkpoint"]])
                r["drift_rel_max"] = max(d["relative"] for d in drift[r["checkpoint"]])
            r["verdict"], r["symptoms"] = verdict(r, cfg)
        figures = write_figures(out.tmp, cfg, base, sfts[-1], labels, table, drift)
        result = {
            "config": cfg.model_dump(mode="json"),
            "thresholds": {
                "entropy": cfg.entropy_threshold,
                "sft_loss": cfg.loss_threshold,
                "pass_gap": cfg.gap_threshold,
            },
            "rows": table,
            "drift": drift,
            "figures": figures,
        }
        (out.tmp / "diagnose.json").write_text(json.dumps(result, indent=2))
        (out.tmp / "report.md").write_text(markdown_report(result))
        out.commit()
        for r in table:
            run.log_metrics({f"{r['checkpoint']}.{k}": v for k, v in r.items() if isinstance(v, (int, float))})
        run.log_artifact(out.target / "diagnose.json")
        run.log_artifact(out.target / "report.md")
        for f in figures:
            run.log_artifact(out.target / f, artifact_path="figures")
    result["out"] = str(out.target)
    return result


def _read_data(cfg: DiagnoseConfig) -> list[dict[str, str]]:
    if cfg.data is None:
        return []
    return read_jsonl(cfg.data, ("prompt",), "diagnose data", optional=("response", "answer"))[: cfg.max_examples]


def _labels(paths: list[Path]) -> list[str]:
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def evaluate_checkpoint(ckpt: Checkpoint, rows, cfg: DiagnoseConfig, device, progress: bool) -> dict:
    if not rows:
        return {}
    tok = load_tokenizer(ckpt)
    model = load_model(ckpt, torch.float32, device)
    out: dict = {}
    if "response" in rows[0]:
        out.update(teacher_forced_stats(model, tok, rows, cfg.batch_size))
    if "answer" in rows[0]:
        p = evaluate_pass_at_k(
            model,
            tok,
            rows,
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


def drift_table(base: Checkpoint, sft: Checkpoint, progress: bool) -> list[dict]:
    """Per matrix (every tensor of the SFT checkpoint): mean-squared and relative drift."""
    rows = []
    for name in tqdm(sft.names, desc=f"drift {sft.path.name}", unit="tensor", disable=not progress):
        s, b = sft.get(name), base.get(name)
        role = sft.spec.role(name)
        module = role.kind.name if role.kind is not None else name.rsplit(".", 2)[-2]
        rows.append(
            {
                "name": name,
                "layer": role.layer,
                "module": module,
                "msd": mean_squared_drift(s, b),
                "relative": relative_drift(s, b),
            }
        )
    return rows


def verdict(row: dict, cfg: DiagnoseConfig) -> tuple[str, list[str]]:
    """rigid: two or more symptoms; at risk: one; plastic: none (measured symptoms only)."""
    symptoms = []
    if row.get("entropy") is not None and row["entropy"] < cfg.entropy_threshold:
        symptoms.append("entropy collapse")
    if row.get("sft_loss") is not None and row["sft_loss"] < cfg.loss_threshold:
        symptoms.append("SFT loss saturation")
    if row.get("pass_gap") is not None and row["pass_at_1"] > 0 and row["pass_gap"] < cfg.gap_threshold:
        symptoms.append("diversity collapse")  # a model that solves nothing has no diversity to lose
    return ("rigid" if len(symptoms) >= 2 else "at risk" if symptoms else "plastic"), symptoms


def write_figures(directory: Path, cfg, base, last_sft, labels, table, drift) -> list[str]:
    figs = []
    plot_drift_by_layer(drift, directory / "drift_by_layer.png")
    figs.append("drift_by_layer.png")
    if cfg.heatmaps:
        top = sorted(
            (d for d in drift[labels[-1]] if len(last_sft.meta(d["name"]).shape) == 2), key=lambda d: -d["msd"]
        )[: cfg.heatmaps]
        maps = [(d["name"], pooled_abs_delta(last_sft.get(d["name"]), base.get(d["name"]))) for d in top]
        if maps:
            plot_heatmaps(maps, f"largest |SFT - base| ({labels[-1]})", directory / "drift_heatmaps.png")
            figs.append("drift_heatmaps.png")
    sft_rows = [r for r in table if r["checkpoint"] in labels]
    if len(sft_rows) > 1 and ("entropy" in sft_rows[0] or "pass_at_1" in sft_rows[0]):
        epochs = [_EPOCH.search(lbl) for lbl in labels]
        if all(epochs):
            xs, xlabel = [float(m.group(1)) for m in epochs], "SFT epochs"
        else:
            xs, xlabel = [float(i + 1) for i in range(len(labels))], "checkpoint"
        plot_ladder(sft_rows, xs, xlabel, directory / "ladder.png")
        figs.append("ladder.png")
    return figs


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown_report(result: dict) -> str:
    t = result["thresholds"]
    cols = [
        "checkpoint",
        "sft_loss",
        "entropy",
        "pass_at_1",
        "pass_at_k",
        "pass_gap",
        "drift_msd_mean",
        "drift_rel_max",
        "verdict",
    ]
    lines = [
        "# rayrejuv diagnose",
        "",
        f"Verdict rules: a symptom is entropy < {t['entropy']} nats, SFT loss < {t['sft_loss']}, or "
        f"pass@k - pass@1 < {t['pass_gap']} (with pass@1 > 0); two or more symptoms = **rigid**, one = **at risk**.",
        "",
        "| " + " | ".join(c.replace("_at_", "@") for c in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += [""] + [f"![{f}]({f})" for f in result["figures"]] + [""]
    for r in result["rows"]:
        if r.get("symptoms"):
            lines.append(f"- **{r['checkpoint']}**: {r['verdict']} ({', '.join(r['symptoms'])})")
    return "\n".join(lines) + "\n"
