"""What `rayrejuv demo` shows: figures and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrejuv.figures import pyplot


def plot_demo_pass_at_1(results: dict, path: Path) -> None:
    """The demo's table as bars: pass@1 before and after RL (mean, min-max over seeds), ID and OOD."""
    from rayrejuv.commands.demo.results import LABELS, STARTS

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    xs = range(len(STARTS))
    for ax, split in zip(axes[:2], ("id", "ood")):
        rows = [results["rows"][s] for s in STARTS]
        after = [r["spread"][f"{split}_after"] for r in rows]
        ax.bar([x - 0.2 for x in xs], [r[f"{split}_before"] for r in rows], 0.4, label="before RL", color="#bbb")
        ax.bar([x + 0.2 for x in xs], [a["mean"] for a in after], 0.4, label="after RL", color="#3a7")
        ax.errorbar([x + 0.2 for x in xs], [a["mean"] for a in after], fmt="none", ecolor="k", capsize=3,
                    yerr=[[a["mean"] - a["min"] for a in after], [a["max"] - a["mean"] for a in after]])
        name = results.get(f"{split}_split", split)
        ax.set_title(f"greedy pass@1, {split.upper()} ({name})", fontsize=10)
        ax.set_xticks(list(xs), [LABELS[s].replace(" + ", "\n+ ") for s in STARTS], fontsize=8)
        ax.legend(fontsize=8)
    axes[2].bar(list(xs), [results["rows"][s]["entropy_before"] for s in STARTS], color="#58c")
    axes[2].set_title("token entropy before RL (teacher-forced)", fontsize=10)
    axes[2].set_xticks(list(xs), [LABELS[s].replace(" + ", "\n+ ") for s in STARTS], fontsize=8)
    fig.suptitle(f"rayrejuv demo: {len(results['seeds'])} RL seed(s); bars after RL = mean, whiskers = min..max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trailing_mean(curves, window: int):
    """(seeds, steps) -> the same shape, each point the mean of the last `window` steps so far."""
    import numpy as np

    c = np.cumsum(curves, axis=1)
    shifted = np.concatenate([np.zeros((c.shape[0], window)), c[:, :-window]], axis=1)[:, : c.shape[1]]
    counts = np.minimum(np.arange(1, c.shape[1] + 1), window)
    return (c - shifted) / counts


def plot_demo_rewards(per_seed: dict[str, list[dict]], path: Path, window: int = 5) -> None:
    """Per start, over seeds (line: mean, band: min..max), each curve a trailing mean over `window`
    steps (a step's reward is 8 prompts' worth: too noisy to read raw): the GRPO reward, and the
    fraction of groups whose samples all got the same reward (no gradient: the rigidity)."""
    import numpy as np

    from rayrejuv.commands.demo.results import LABELS

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    panels = (
        ("rewards", "mean reward of the step's samples"),
        ("zero_std_fractions", "groups with zero reward variance"),
    )
    for ax, (key, ylabel) in zip(axes, panels):
        for start, runs in per_seed.items():
            curves = _trailing_mean(np.array([r[key] for r in runs], dtype=float), window)  # (seeds, steps)
            steps = np.arange(1, curves.shape[1] + 1)
            line = ax.plot(steps, curves.mean(0), label=LABELS[start])[0]
            ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GRPO from each start (one recipe; trailing mean over {window} steps; band = min..max over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def print_demo_summary(results: dict) -> None:
    """The paper's table (mean ± std over seeds), the findings, and the time of each phase."""
    from rayrejuv.commands.demo.results import LABELS, STARTS, split_labels, verdict

    c = Console(width=max(Console().width, 140))
    n = len(results["seeds"])
    idn, oodn = split_labels(results)
    t = Table(title=f"rayrejuv demo: GRPO from four starts, {n} seed(s) {results['seeds']} (after: mean ± std)")
    for col in ("start", "entropy before", f"{idn} before", f"{idn} after", f"{idn} gain", f"{oodn} before",
                f"{oodn} after", f"{oodn} gain"):
        t.add_column(col, justify="left" if col == "start" else "right")
    for start in STARTS:
        r = results["rows"][start]
        pm = {k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in r["spread"].items()}
        t.add_row(LABELS[start], f"{r['entropy_before']:.3f}", f"{r['id_before']:.3f}", pm["id_after"],
                  pm["id_gain"], f"{r['ood_before']:.3f}", pm["ood_after"], pm["ood_gain"])
    c.print(t)
    for name, f in results["findings"].items():
        color = "green" if f["holds"] else "red"
        c.print(f"  {name.replace('_', ' ')}: [{color}]{verdict(f, n)}[/{color}]")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in results["timings_s"].items())
    c.print(f"phases: {times}; wall {results['wall_s']:.0f}s")
    c.print(f"outputs: {results['out']} (results.json, table.md, pass_at_1.png, rewards.png)")
