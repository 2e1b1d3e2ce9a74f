"""What `rayrejuv diagnose` shows: figures, report.md and the terminal summary."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrejuv.commands.diagnose.results import (
    MEASURED_FROM,
    SYMPTOMS,
    UNDETERMINED,
    Diagnosis,
    DiagnosisRow,
    DriftRow,
    Thresholds,
)
from rayrejuv.figures import pyplot

NOT_MEASURED = "not measured"
EPOCHS = "SFT epochs"  # the ladder's x label when its checkpoints are named epoch-<e>


def plot_drift_by_layer(drift: dict[str, list[DriftRow]], path: Path) -> None:
    """Per checkpoint, mean-squared drift from base per layer, one line per module kind."""
    _save(drift_figure(drift), path)


def drift_figure(drift: dict[str, list[DriftRow]]):
    """The drift_by_layer figure. Its y axis is symlog, linear below the smallest non-zero drift
    and logarithmic above: a layer SFT left untouched (a frozen layer, drift exactly 0) is a
    point on the zero line, where a log axis drops it, while the decades between trained layers
    stay apart (a linear inset would show the zeros but flatten those decades). Layers without
    any drift are also named in the panel."""
    plt = pyplot()
    labels, linthresh = list(drift), _smallest_positive([r.msd for rows in drift.values() for r in rows])
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        layered = [r for r in drift[label] if r.layer is not None]
        for kind in sorted({r.module for r in layered}):
            rows = sorted((r for r in layered if r.module == kind), key=lambda r: r.layer)
            ax.plot([r.layer for r in rows], [r.msd for r in rows], marker="o", ms=3, label=kind)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.axhline(0.0, color="0.6", lw=0.6)
        frozen = zero_drift_layers(layered)
        if frozen:
            ax.text(0.02, 0.03, f"no drift: layers {_spans(frozen)}", transform=ax.transAxes, fontsize=7)
        ax.set_title(label)
        ax.set_xlabel("layer")
    # the zero line clear of the frame; the top at the decade above the largest drift, so it has a tick (shared y)
    top = max((r.msd for rows in drift.values() for r in rows), default=0.0)
    axes[0][0].set_ylim(-0.5 * linthresh, 10 ** math.ceil(math.log10(top) + 0.05) if top > 0 else 1.0)
    axes[0][0].set_ylabel("mean squared drift from base (symlog)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def zero_drift_layers(rows: list[DriftRow]) -> list[int]:
    """Layers every tensor of which equals the base's (drift exactly 0), sorted."""
    layers = {r.layer for r in rows}
    return sorted(layer for layer in layers if all(r.msd == 0 for r in rows if r.layer == layer))


def _smallest_positive(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return min(positive) if positive else 1.0  # nothing drifted: any scale shows the zeros


def _spans(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_heatmaps(maps: list[tuple[str, object]], title: str, path: Path) -> None:
    """|theta_SFT - theta_base| of the most-drifted matrices, max-pooled (spikes stay visible)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.4 * len(maps), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps):
        im = ax.imshow(m.numpy(), aspect="auto", cmap="viridis")
        ax.set_title(name.replace("model.layers.", "L"), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# (values drawn, title, log y, the Thresholds field drawn as the symptom's line or None)
LADDER_PANELS = (
    (("sft_loss",), "SFT loss", True, "sft_loss"),
    (("entropy",), "token entropy (nats)", True, "entropy"),
    (("pass_at_1", "pass_at_k"), "accuracy", False, None),
    (("pass_gap",), "pass@k - pass@1", False, "pass_gap"),
)


def plot_ladder(rows: list[DiagnosisRow], xs: list[float], xlabel: str, thresholds: Thresholds, path: Path) -> None:
    """SFT loss, entropy, pass@1 / pass@k and their gap along a ladder of checkpoints."""
    _save(ladder_figure(rows, xs, xlabel, thresholds), path)


def ladder_figure(rows: list[DiagnosisRow], xs: list[float], xlabel: str, thresholds: Thresholds):
    """The ladder figure: checkpoint names on every x axis (log2-spaced SFT epochs when the names
    give them, else evenly spaced), each symptom's threshold dashed, a value the data did not
    measure said in its panel (not an empty one)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LADDER_PANELS), figsize=(16, 3.6))
    for ax, (keys, title, log, threshold) in zip(axes, LADDER_PANELS):
        drawn = [k for k in keys if all(getattr(r, k) is not None for r in rows)]
        for k in drawn:
            ax.plot(xs, [getattr(r, k) for r in rows], marker="o", label=k.replace("_at_", "@"))
        if not drawn:
            ax.text(0.5, 0.5, f"{NOT_MEASURED}\n(--data rows need '{MEASURED_FROM[keys[0]]}')", ha="center",
                    va="center", transform=ax.transAxes, color="0.4")  # fmt: skip
            ax.set_yticks([])
        elif threshold is not None:
            ax.axhline(getattr(thresholds, threshold), color="0.5", ls="--", lw=0.8, label="symptom below")
        if xlabel == EPOCHS:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [r.checkpoint for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_xticks([], minor=True)
        if log and drawn:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        if drawn:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cell(row: DiagnosisRow, column: str) -> str:
    """One table cell: a value the data did not measure says so; '-' where there is nothing to
    measure (the base's drift)."""
    v = getattr(row, column)
    if v is None:
        return NOT_MEASURED if column in MEASURED_FROM else "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def verdict_rules(t: Thresholds) -> str:
    return (
        f"a symptom is entropy < {t.entropy} nats, SFT loss < {t.sft_loss}, or 0 <= pass@k - pass@1 < {t.pass_gap} "
        "(with pass@1 > 0; a negative gap is reported, not counted); two or more symptoms = rigid, one = at risk, "
        f"none = plastic when all {len(SYMPTOMS)} were measured, else {UNDETERMINED}"
    )


def findings(result: Diagnosis) -> list[str]:
    """A line per checkpoint with a symptom, a value not measured or a note."""
    return [
        f"{r.checkpoint}: {r.explained()}" + "".join(f"; {n}" for n in r.notes)
        for r in result.rows
        if r.symptoms or r.not_measured or r.notes
    ]


REPORT_COLUMNS = ("checkpoint", "sft_loss", "entropy", "pass_at_1", "pass_at_k", "pass_gap", "drift_msd_mean",
                  "drift_rel_max", "verdict")


def markdown_report(result: Diagnosis) -> str:
    """report.md: the verdict rules, one table row per checkpoint, the figures, the findings."""
    lines = [
        "# rayrejuv diagnose",
        "",
        f"Verdict rules: {verdict_rules(result.thresholds)}.",
        "",
        "| " + " | ".join(c.replace("_at_", "@") for c in REPORT_COLUMNS) + " |",
        "|" + "---|" * len(REPORT_COLUMNS),
    ]
    for r in result.rows:
        lines.append("| " + " | ".join(cell(r, c) for c in REPORT_COLUMNS) + " |")
    lines += [""] + [f"![{f}]({f})" for f in result.figures] + [""]
    lines += [f"- **{line.replace(': ', '**: ', 1)}" for line in findings(result)]
    return "\n".join(lines) + "\n"


SUMMARY_COLUMNS = {"checkpoint": "checkpoint", "sft_loss": "SFT loss", "entropy": "entropy", "pass_at_1": "pass@1",
                   "pass_at_k": "pass@k", "pass_gap": "gap", "drift_rel_max": "max rel drift", "verdict": "verdict"}


def print_diagnose_summary(result: Diagnosis) -> None:
    c = Console(width=max(Console().width, 120))
    t = Table(title=f"rayrejuv diagnose -> {result.out}")
    for title in SUMMARY_COLUMNS.values():
        t.add_column(title, justify="left" if title in ("checkpoint", "verdict") else "right", no_wrap=True)
    for r in result.rows:
        t.add_row(*[cell(r, k) for k in SUMMARY_COLUMNS])
    c.print(t)
    for line in findings(result):
        c.print(f"  {line}", markup=False, soft_wrap=True)
    c.print(f"verdict rules: {verdict_rules(result.thresholds)}", markup=False, soft_wrap=True)
