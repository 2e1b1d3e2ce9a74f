"""Terminal summaries (rich tables) printed at the end of a command."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_rejuvenation_summary(report: dict, wall_s: float) -> None:
    c = Console(width=max(Console().width, 120))
    cfg = report["config"]
    t = Table(title=f"rejuvenated -> {cfg['out']}", show_header=False)
    t.add_row("architecture", f"{report['architecture']} ({report['num_layers']} layers)")
    t.add_row("alpha / rho / omega", f"{cfg['alpha']} / {cfg['reset_ratio']} / {cfg['omega']}")
    t.add_row("reset", f"{report['reset_count']} of {report['num_neurons']} neurons ({report['reset_fraction']:.2%})")
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


def print_demo_summary(results: dict) -> None:
    """The paper's table (mean ± std over seeds), the findings, and the time of each phase."""
    from rayrejuv.demo_results import LABELS, STARTS, split_labels, verdict

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


def print_diagnose_summary(result: dict) -> None:
    c = Console(width=max(Console().width, 120))
    t = Table(title=f"rayrejuv diagnose -> {result['out']}")
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
    for r in result["rows"]:
        t.add_row(*[f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k, _ in cols])
    c.print(t)
    th = result["thresholds"]
    c.print(
        f"symptoms: entropy < {th['entropy']}, SFT loss < {th['sft_loss']}, pass@k - pass@1 < {th['pass_gap']}; "
        "two or more = rigid"
    )


def print_rl_summary(summary: dict) -> None:
    c = Console(width=max(Console().width, 120))
    t = Table(title=f"GRPO: {summary['steps']} steps -> {summary['final_checkpoint']}")
    t.add_column("metric")
    t.add_column("first step", justify="right")
    t.add_column("last step", justify="right")
    for key in ("reward/mean", "reward/zero_std_fraction", "policy/entropy", "policy/kl", "policy/grad_norm",
                "policy/update_norm", "response/length_mean", "time/step"):
        if key in summary["last"]:
            t.add_row(key, f"{summary['first'][key]:.4f}", f"{summary['last'][key]:.4f}")
    for key in ("eval/pass_at_1", "eval/pass_at_k"):
        if key in summary["eval_last"]:
            t.add_row(key, f"{summary['eval_first'][key]:.4f}", f"{summary['eval_last'][key]:.4f}")
    c.print(t)
    c.print(f"mean step {summary['mean_step_seconds']:.2f}s; wall {summary['seconds']:.1f}s")
