"""What `rayrejuv diagnose` shows: figures, report.md and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrejuv.commands.diagnose.results import Diagnosis, DiagnosisRow, DriftRow
from rayrejuv.figures import pyplot


def plot_drift_by_layer(drift: dict[str, list[DriftRow]], path: Path) -> None:
    """Per checkpoint, mean-squared drift from base per layer, one line per module kind."""
    plt = pyplot()
    labels = list(drift)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        kinds = sorted({r.module for r in drift[label] if r.layer is not None})
        for kind in kinds:
            rows = sorted((r for r in drift[label] if r.module == kind and r.layer is not None), key=lambda r: r.layer)
            ax.plot([r.layer for r in rows], [r.msd for r in rows], marker="o", ms=3, label=kind)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("mean squared drift from base")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def plot_ladder(rows: list[DiagnosisRow], xs: list[float], xlabel: str, path: Path) -> None:
    """SFT loss, entropy, pass@1 / pass@k and their gap along a ladder of checkpoints."""
    plt = pyplot()
    panels = [
        ("sft_loss", "SFT loss", True),
        ("entropy", "token entropy (nats)", True),
        (("pass_at_1", "pass_at_k"), "accuracy", False),
        ("pass_gap", "pass@k - pass@1", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.4))
    for ax, (key, label, log) in zip(axes, panels):
        for k in key if isinstance(key, tuple) else (key,):
            ys = [getattr(r, k) for r in rows]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=k.replace("_at_", "@"))
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(label)
        if isinstance(key, tuple):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


REPORT_COLUMNS = ("checkpoint", "sft_loss", "entropy", "pass_at_1", "pass_at_k", "pass_gap", "drift_msd_mean",
                  "drift_rel_max", "verdict")


def markdown_report(result: Diagnosis) -> str:
    """report.md: the verdict rules, one table row per checkpoint, the figures, the symptoms found."""
    t = result.thresholds
    lines = [
        "# rayrejuv diagnose",
        "",
        f"Verdict rules: a symptom is entropy < {t.entropy} nats, SFT loss < {t.sft_loss}, or "
        f"pass@k - pass@1 < {t.pass_gap} (with pass@1 > 0); two or more symptoms = **rigid**, one = **at risk**.",
        "",
        "| " + " | ".join(c.replace("_at_", "@") for c in REPORT_COLUMNS) + " |",
        "|" + "---|" * len(REPORT_COLUMNS),
    ]
    for r in result.rows:
        lines.append("| " + " | ".join(_fmt(getattr(r, c)) for c in REPORT_COLUMNS) + " |")
    lines += [""] + [f"![{f}]({f})" for f in result.figures] + [""]
    for r in result.rows:
        if r.symptoms:
            lines.append(f"- **{r.checkpoint}**: {r.verdict} ({', '.join(r.symptoms)})")
    return "\n".join(lines) + "\n"


def print_diagnose_summary(result: Diagnosis) -> None:
    c = Console(width=max(Console().width, 120))
    t = Table(title=f"rayrejuv diagnose -> {result.out}")
    cols = [
        ("checkpoint", "checkpoint"),
        ("sft_loss", "SFT loss"),
        ("entropy", "entropy"),
        ("pass_at_1", "pass@1"),
        ("pass_at_k", "pass@k"),
        ("pass_gap", "gap"),
        ("drift_rel_max", "max rel drift"),
        ("verdict", "verdict"),
    ]
    for _, title in cols:
        t.add_column(title, justify="left" if title in ("checkpoint", "verdict") else "right", no_wrap=True)
    for r in result.rows:
        values = [getattr(r, k) for k, _ in cols]
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v) for v in values])
    c.print(t)
    th = result.thresholds
    c.print(
        f"symptoms: entropy < {th.entropy}, SFT loss < {th.sft_loss}, pass@k - pass@1 < {th.pass_gap}; "
        "two or more = rigid"
    )
