"""The rejuvenation report: JSON for machines, a PNG map of the reset for people."""

from __future__ import annotations

import json
from pathlib import Path

from rayrejuv.method.neurons import ResetSet

REPORT = "rejuvenation_report.json"
RESET_MAP = "reset_map.png"


def plot_reset_map(reset: ResetSet, num_layers: int, kinds: list[str], path: Path) -> None:
    """Heat map of reset neurons: layers (rows) x module kinds (columns), as a share of each block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2))
