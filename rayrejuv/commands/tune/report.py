"""What `rayrejuv tune` shows: figures and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rayrejuv.figures import pyplot


def plot_objective_vs_params(rows: list[dict], params: list[str], path: Path) -> None:
    """One scatter per hyperparameter: the search objective of every finished trial."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.0), squeeze=False)
    for ax, name in zip(axes[0], params):
        xs = [r[name] for r in rows]
        labels = sorted({str(x) for x in xs}) if any(isinstance(x, str) for x in xs) else None
        pos = [labels.index(str(x)) for x in xs] if labels else xs
        ax.scatter(pos, [r["objective"] for r in rows], s=18)
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("objective")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
