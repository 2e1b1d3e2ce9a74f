"""Figures (matplotlib, Agg backend): where people would rather look than read."""

from __future__ import annotations

from pathlib import Path

from rayrejuv.method.neurons import ResetSet


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reset_map(reset: ResetSet, num_layers: int, kinds: list[str], path: Path) -> None:
    """Heat map of reset neurons: layers (rows) x module kinds (columns)."""
    import numpy as np

    plt = _plt()
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


def plot_drift_by_layer(drift: dict[str, list[dict]], path: Path) -> None:
    """Per checkpoint, mean-squared drift from base per layer, one line per module kind."""
    plt = _plt()
    labels = list(drift)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        kinds = sorted({r["module"] for r in drift[label] if r["layer"] is not None})
        for kind in kinds:
            rows = sorted(
                (r for r in drift[label] if r["module"] == kind and r["layer"] is not None), key=lambda r: r["layer"]
            )
            ax.plot([r["layer"] for r in rows], [r["msd"] for r in rows], marker="o", ms=3, label=kind)
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
    plt = _plt()
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


def plot_ladder(rows: list[dict], xs: list[float], xlabel: str, path: Path) -> None:
    """SFT loss, entropy, pass@1 / pass@k and their gap along a ladder of checkpoints."""
    plt = _plt()
    panels = [
        ("sft_loss", "SFT loss", True),
        ("entropy", "token entropy (nats)", True),
        (("pass_at_1", "pass_at_k"), "accuracy", False),
        ("pass_gap", "pass@k - pass@1", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.4))
    for ax, (key, label, log) in zip(axes, panels):
        for k in key if isinstance(key, tuple) else (key,):
            ys = [r.get(k) for r in rows]
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


def plot_rl_curves(records: list[dict], path: Path, title: str = "GRPO") -> None:
    """Reward, entropy, gradient norm vs weight-update magnitude (the paper's Figure 4 pair), eval."""
    plt = _plt()
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


def plot_objective_vs_params(rows: list[dict], params: list[str], path: Path) -> None:
    """One scatter per hyperparameter: the search objective of every finished trial."""
    plt = _plt()
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


def plot_demo_pass_at_1(results: dict, path: Path) -> None:
    """The demo's table as bars: pass@1 before and after RL (mean, min-max over seeds), ID and OOD."""
    from rayrejuv.demo_results import LABELS, STARTS

    plt = _plt()
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

    from rayrejuv.demo_results import LABELS

    plt = _plt()
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
