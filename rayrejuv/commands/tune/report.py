"""What `rayrejuv tune` shows: figures and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rayrejuv.commands.tune.results import TrialRow, TuneSummary, leaderboard_markdown
from rayrejuv.figures import pyplot


def plot_objective_vs_params(rows: list[TrialRow], params: list[str], path: Path) -> None:
    """One scatter per hyperparameter: the search objective of every finished trial."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.0), squeeze=False)
    for ax, name in zip(axes[0], params):
        xs = [r.params[name] for r in rows]
        labels = sorted({str(x) for x in xs}) if any(isinstance(x, str) for x in xs) else None
        pos = [labels.index(str(x)) for x in xs] if labels else xs
        ax.scatter(pos, [r.objective for r in rows], s=18)
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("objective")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tune_summary(summary: TuneSummary) -> None:
    """The leaderboard (as leaderboard.md), the best trial's config and checkpoint, the times."""
    print(leaderboard_markdown(summary.leaderboard, list(summary.best.params)))
    print(f"best: {summary.best_yaml} (checkpoint {summary.best_checkpoint})")
    print(f"search {summary.wall_seconds:.0f}s; sum of trial times {summary.trial_seconds_sum:.0f}s")


def probe_lines(cfg):
    """run_lines' `find` for `rayrejuv tune`: each trial's GRPO probe (OUT/trials/<id>/probe, trial.py)."""
    from rayrejuv.runs.console import runs_under

    return runs_under(Path(cfg.out).absolute() / "trials", "*/probe/metrics.jsonl", cfg.probe.steps,
                      lambda p: f"trial {p.parent.parent.name} probe seed {cfg.seed}")
