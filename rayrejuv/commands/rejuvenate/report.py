"""The rejuvenation report: JSON for machines, a PNG map of the reset for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from rayrejuv.figures import pyplot

if TYPE_CHECKING:  # torch: the CLI imports this module before the driver starts the MLflow side process
    from rayrejuv.method.neurons import ResetSet

REPORT = "rejuvenation_report.json"
RESET_MAP = "reset_map.png"


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2))


def plot_reset_map(reset: ResetSet, num_layers: int, kinds: list[str], path: Path) -> None:
    """Heat map of reset neurons: layers (rows) x module kinds (columns)."""
    import numpy as np

    plt = pyplot()
    counts = np.zeros((num_layers, len(kinds)))
    for (layer, kind), idx in reset.indices.items():
        counts[layer, kinds.index(kind)] = idx.numel()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(kinds), 1.2 + 0.28 * num_layers))
    im = ax.imshow(counts, aspect="auto", cmap="magma_r", origin="lower")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_ylabel("layer")
    ax.set_title(f"reset neurons ({reset.size} of {reset.num_neurons})")
    fig.colorbar(im, ax=ax, label="neurons reset")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_rejuvenation_summary(report: dict, wall_s: float) -> None:
    c = Console(width=max(Console().width, 120))
    cfg = report["config"]
    t = Table(title=f"rejuvenated -> {cfg['out']}", show_header=False)
    t.add_row("architecture", f"{report['architecture']} ({report['num_layers']} layers)")
    t.add_row("alpha / rho / omega", f"{cfg['alpha']} / {cfg['reset_ratio']} / {cfg['omega']}")
    t.add_row("reset", f"{report['reset_count']} of {report['num_neurons']} neurons ({report['reset_fraction']:.2%})")
    if report["candidates"] is not None:
        t.add_row("candidates", candidates_line(report))
    if report["reset_by_kind"]:
        t.add_row("reset by module", ", ".join(f"{k} {v}" for k, v in sorted(report["reset_by_kind"].items())))
    att = report["attribution"]
    if att is not None:
        t.add_row("calibration", f"{att['examples']} examples, {att['target_tokens']} target tokens")
        t.add_row("entropy base / sft", f"{att['entropy_base']:.4f} / {att['entropy_sft']:.4f}")
        t.add_row(
            "logit reconstruction err",
            f"max {att['reconstruction_error_max']:.2e}, mean {att['reconstruction_error_mean']:.2e}",
        )
    t.add_row("output", f"{len(report['output']['files'])} shard(s), {report['output']['bytes'] / 1e6:.1f} MB")
    t.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in report["timings_s"].items()) + f"; wall {wall_s:.1f}s")
    c.print(t)


def candidates_line(report: dict) -> str:
    """What the reset was chosen from: 'C neurons SFT changed (E untouched excluded; ...)'."""
    line = f"{report['candidates']} neurons, {report['reset_fraction_of_candidates']:.2%} of them reset"
    if report["excluded_untouched"]:
        line += (
            f"; {report['excluded_untouched']} that SFT left equal to the base excluded "
            "(resetting them is a no-op; --reset-untouched keeps them)"
        )
    return line
