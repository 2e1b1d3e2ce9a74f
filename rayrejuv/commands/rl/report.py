"""What `rayrejuv rl` shows: figures and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrejuv.commands.rl.summary import RLSummary
from rayrejuv.figures import pyplot


def plot_rl_curves(records: list[dict], path: Path, title: str = "GRPO") -> None:
    """Reward, entropy, gradient norm vs weight-update magnitude (the paper's Figure 4 pair), eval,
    from the run's metrics.jsonl records."""
    plt = pyplot()
    panels = [
        ("reward", ["reward/mean"]),
        ("token entropy of samples", ["policy/entropy"]),
        ("gradient norm | update magnitude", ["policy/grad_norm", "policy/update_norm"]),
        ("eval", ["eval/pass_at_1", "eval/pass_at_k"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 12 else None, ms=3, label=key.split("/")[-1])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_rl_summary(summary: RLSummary) -> None:
    c = Console(width=max(Console().width, 120))
    t = Table(title=f"GRPO: {summary.steps} steps -> {summary.final_checkpoint}")
    t.add_column("metric")
    t.add_column("first step", justify="right")
    t.add_column("last step", justify="right")
    for key in ("reward/mean", "reward/zero_std_fraction", "policy/entropy", "policy/kl", "policy/grad_norm",
                "policy/update_norm", "response/length_mean", "time/step"):
        if key in summary.last:
            t.add_row(key, f"{summary.first[key]:.4f}", f"{summary.last[key]:.4f}")
    for key in ("eval/pass_at_1", "eval/pass_at_k"):
        if key in summary.eval_last:
            t.add_row(key, f"{summary.eval_first[key]:.4f}", f"{summary.eval_last[key]:.4f}")
    c.print(t)
    c.print(f"mean step {summary.mean_step_seconds:.2f}s; wall {summary.seconds:.1f}s")


def rl_line(cfg):
    """run_lines' `find` for `rayrejuv rl`: the one run, named by its start and seed."""
    from rayrejuv.commands.rl.driver import RunLayout
    from rayrejuv.runs.console import RunLine

    line = RunLine(f"GRPO from {Path(cfg.model).name} seed {cfg.seed}", RunLayout(Path(cfg.out).absolute()).metrics,
                   cfg.steps)
    return lambda: [line]
