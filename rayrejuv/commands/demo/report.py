"""What `rayrejuv demo` shows: figures and the terminal summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from rayrejuv.commands.demo.baselines import BaselineTable
from rayrejuv.commands.demo.results import LABELS, STARTS, DemoResults, DemoTable, SeedRun
from rayrejuv.figures import pyplot
from rayrejuv.runs.console import RunLine


def rl_lines(directory: Path, specs, labels: dict[str, str], steps: int):
    """run_lines' `find` for a phase of the demo's RL runs: every run of `specs` (driver.RunSpec,
    under rl/<row>/seed-<s>) in the order they run, named as the tables name their rows."""
    from rayrejuv.commands.rl.driver import RunLayout

    runs = [RunLine(f"{labels[s.row]} seed {s.seed}", RunLayout(directory / s.row / f"seed-{s.seed}").metrics, steps)
            for s in specs]
    return lambda: runs


def _tick_labels() -> list[str]:
    return [LABELS[s].replace(" + ", "\n+ ") for s in STARTS]


def plot_demo_pass_at_1(table: DemoTable, path: Path) -> None:
    """The demo's table as bars: pass@1 before and after RL (mean, min-max over seeds), ID and OOD."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    xs = range(len(STARTS))
    rows = [table.rows[s] for s in STARTS]
    for ax, split, name in zip(axes[:2], ("id", "ood"), (table.id_split, table.ood_split)):
        after = [r.spread[f"{split}_after"] for r in rows]
        ax.bar([x - 0.2 for x in xs], [getattr(r, f"{split}_before") for r in rows], 0.4, label="before RL",
               color="#bbb")
        ax.bar([x + 0.2 for x in xs], [a.mean for a in after], 0.4, label="after RL", color="#3a7")
        ax.errorbar([x + 0.2 for x in xs], [a.mean for a in after], fmt="none", ecolor="k", capsize=3,
                    yerr=[[a.mean - a.min for a in after], [a.max - a.mean for a in after]])
        ax.set_title(f"greedy pass@1, {split.upper()} ({name})", fontsize=10)
        ax.set_xticks(list(xs), _tick_labels(), fontsize=8)
        ax.legend(fontsize=8)
    axes[2].bar(list(xs), [r.entropy_before for r in rows], color="#58c")
    axes[2].set_title("token entropy before RL (teacher-forced)", fontsize=10)
    axes[2].set_xticks(list(xs), _tick_labels(), fontsize=8)
    fig.suptitle(f"rayrejuv demo: {len(table.seeds)} RL seed(s); bars after RL = mean, whiskers = min..max")
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


def plot_demo_rewards(per_seed: dict[str, list[SeedRun]], path: Path, window: int = 5) -> None:
    """Per start, over seeds (line: mean, band: min..max), each curve a trailing mean over `window`
    steps (a step's reward is 8 prompts' worth: too noisy to read raw): the GRPO reward, and the
    fraction of groups whose samples all got the same reward (no gradient: the rigidity)."""
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    panels = (
        (lambda r: r.rewards, "mean reward of the step's samples"),
        (lambda r: r.zero_std_fractions, "groups with zero reward variance"),
    )
    for ax, (curve, ylabel) in zip(axes, panels):
        for start, runs in per_seed.items():
            curves = _trailing_mean(np.array([curve(r) for r in runs], dtype=float), window)  # (seeds, steps)
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


def plot_baselines(table: BaselineTable, id_name: str, ood_name: str, path: Path) -> None:
    """Rejuvenate, or fix it in RL? Each run as a point: pass@1 after RL against the completion
    tokens it generated, ID and OOD; a row's mean as a large marker."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, split, name in zip(axes, ("id", "ood"), (id_name, ood_name)):
        for row in table.rows.values():
            xs = [r.generated_tokens / 1e3 for r in row.per_seed]
            points = ax.scatter(xs, [getattr(r, f"{split}_after") for r in row.per_seed], s=18, alpha=0.6)
            ax.scatter([row.generated_tokens / 1e3], [row.spread[f"{split}_after"].mean], s=120, marker="D",
                       color=points.get_facecolor()[0], edgecolor="k", label=row.label)
        ax.set_xlabel("completion tokens generated in RL (thousands)")
        ax.set_ylabel(f"greedy pass@1 after RL, {split.upper()} ({name})")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"RL-side remedies from OverSFT vs Rejuvenation ({len(table.seeds)} seeds; diamond = mean)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_demo_summary(results: DemoResults) -> None:
    """The paper's table (mean ± std over seeds), the findings, and the time of each phase."""
    table = results.table
    c = Console(width=max(Console().width, 140))
    n = len(table.seeds)
    idn, oodn = table.split_labels()
    t = Table(title=f"rayrejuv demo: GRPO from four starts, {n} seed(s) {table.seeds} (after: mean ± std)")
    for col in ("start", "entropy before", f"{idn} before", f"{idn} after", f"{idn} gain", f"{oodn} before",
                f"{oodn} after", f"{oodn} gain"):
        t.add_column(col, justify="left" if col == "start" else "right")
    for start in STARTS:
        r = table.rows[start]
        pm = {k: v.pm() for k, v in r.spread.items()}
        t.add_row(LABELS[start], f"{r.entropy_before:.3f}", f"{r.id_before:.3f}", pm["id_after"],
                  pm["id_gain"], f"{r.ood_before:.3f}", pm["ood_after"], pm["ood_gain"])
    c.print(t)
    se = table.standard_error()
    c.print(f"  each pass@1 over {table.prompts} prompts per split (standard error at most {se:.3f})")
    _print_findings(c, table.findings, n)
    if results.baselines is not None:
        _print_baselines(c, results.baselines, idn, oodn)
    times = ", ".join(f"{k} {v:.0f}s" for k, v in results.timings_s.items())
    c.print(f"phases: {times}; wall {results.wall_s:.0f}s")
    extra = ", baselines.md, baselines.png" if results.baselines is not None else ""
    c.print(f"outputs: {results.out} (results.json, table.md, pass_at_1.png, rewards.png{extra})")


def _print_baselines(c: Console, table: BaselineTable, idn: str, oodn: str) -> None:
    n = len(table.seeds)
    t = Table(title=f"Rejuvenate, or fix it in RL? GRPO from OverSFT with each remedy, {n} seed(s) (mean ± std)")
    for col in ("start", "steps", "generated tokens", f"{idn} after", f"{oodn} after", "entropy after"):
        t.add_column(col, justify="left" if col == "start" else "right")
    for r in table.rows.values():
        t.add_row(r.label, f"{r.steps:.1f}", f"{r.generated_tokens:,.0f}", r.spread["id_after"].pm(),
                  r.spread["ood_after"].pm(), f"{r.entropy_after:.3f}")
    c.print(t)
    _print_findings(c, table.findings, n)


def _print_findings(c: Console, findings: dict, n_seeds: int) -> None:
    """One line per finding: its name and verdict, green when it holds."""
    for name, f in findings.items():
        color = "green" if f.holds else "red"
        c.print(f"  {name.replace('_', ' ')}: [{color}]{f.verdict(n_seeds)}[/{color}]")
