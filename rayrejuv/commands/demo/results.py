"""The demo's table: per-start means and spreads over seeds, the paper's three findings checked
on the numbers, and the Markdown people read. Pure functions of the measured scores."""

from __future__ import annotations

import statistics

STARTS = ("modsft", "oversft", "oversft_fusion", "oversft_rejuvenation")
LABELS = {
    "modsft": "ModSFT",
    "oversft": "OverSFT",
    "oversft_fusion": "OverSFT + fusion",
    "oversft_rejuvenation": "OverSFT + Rejuvenation",
}
# what the table reports per start; `_before` values do not depend on the RL seed (greedy decoding)
AFTER = ("id_after", "ood_after")
BEFORE = ("id_before", "ood_before", "entropy_before")


def spread(xs: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }


def aggregate(seeds: list[int], before: dict[str, dict], per_seed: dict[str, list[dict]]) -> dict:
    """results.json: `before[start]` = {id_before, ood_before, entropy_before};
    `per_seed[start]` = one {seed, id_after, ood_after, ...} per seed, in `seeds` order."""
    rows = {}
    for start in STARTS:
        runs = per_seed[start]
        if [r["seed"] for r in runs] != list(seeds):
            raise ValueError(f"{start}: runs for seeds {[r['seed'] for r in runs]}, expected {list(seeds)}")
        row = {k: before[start][k] for k in BEFORE} | {"per_seed": runs}
        for k in AFTER:
            row[k] = spread(_after(row, k))["mean"]
        gains = {f"{split}_gain": _gains(row, split) for split in ("id", "ood")}
        row |= {k: statistics.fmean(v) for k, v in gains.items()}
        row["spread"] = {k: spread(_after(row, k)) for k in AFTER} | {k: spread(v) for k, v in gains.items()}
        rows[start] = row
    return {"seeds": list(seeds), "rows": rows, "findings": findings(rows)}


def _after(row: dict, key: str) -> list[float]:
    return [r[key] for r in row["per_seed"]]


def _gains(row: dict, split: str) -> list[float]:
    """Per seed: pass@1 after RL minus the start's (seed-free) level before it."""
    return [r[f"{split}_after"] - row[f"{split}_before"] for r in row["per_seed"]]


def _wins(better: list[float], worse: list[float]) -> int:
    """Seeds on which `better` beats `worse` (paired: every start runs the same seeds)."""
    return sum(b > w for b, w in zip(better, worse, strict=True))


def findings(rows: dict[str, dict]) -> dict[str, dict]:
    """The paper's claims, each decided on the means over seeds, with the number of seeds on which
    it holds (seed-paired) beside it, and the numbers it was decided on."""
    mod, over, rejuv = rows["modsft"], rows["oversft"], rows["oversft_rejuvenation"]
    return {
        "oversft_gains_less_than_modsft": {
            "holds": over["id_gain"] < mod["id_gain"],
            "seeds_holding": _wins(_gains(mod, "id"), _gains(over, "id")),
            "oversft_id_gain": over["id_gain"],
            "modsft_id_gain": mod["id_gain"],
        },
        "rejuvenation_beats_oversft_after_rl_id": {
            "holds": rejuv["id_after"] > over["id_after"],
            "seeds_holding": _wins(_after(rejuv, "id_after"), _after(over, "id_after")),
            "rejuvenation": rejuv["id_after"],
            "oversft": over["id_after"],
        },
        "rejuvenation_beats_oversft_after_rl_ood": {
            "holds": rejuv["ood_after"] > over["ood_after"],
            "seeds_holding": _wins(_after(rejuv, "ood_after"), _after(over, "ood_after")),
            "rejuvenation": rejuv["ood_after"],
            "oversft": over["ood_after"],
        },
        "rejuvenation_restores_entropy": {  # before RL: greedy and teacher-forced, so seed-free
            "holds": over["entropy_before"] < rejuv["entropy_before"],
            "oversft": over["entropy_before"],
            "rejuvenation": rejuv["entropy_before"],
            "modsft": mod["entropy_before"],
        },
    }


def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def split_labels(results: dict) -> tuple[str, str]:
    """Column names of the two eval splits, e.g. ("ID (hard)", "OOD (general)")."""
    return f"ID ({results['id_split']})", f"OOD ({results['ood_split']})"


def verdict(finding: dict, n_seeds: int) -> str:
    """'holds, 3 of 3 seeds' / 'does not hold, 1 of 3 seeds' (no count for seed-free findings)."""
    text = "holds" if finding["holds"] else "does not hold"
    if "seeds_holding" in finding:
        text += f", {finding['seeds_holding']} of {n_seeds} seeds"
    return text


def markdown(results: dict) -> str:
    """The paper's table: pass@1 before/after RL in and out of distribution, the gain, entropy."""
    n = len(results["seeds"])
    id_name, ood_name = split_labels(results)
    lines = [
        f"| start | entropy before RL | {id_name} before | {id_name} after | {id_name} gain | "
        f"{ood_name} before | {ood_name} after | {ood_name} gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for start in STARTS:
        r = results["rows"][start]
        sp = r["spread"]
        lines.append(
            f"| {LABELS[start]} | {r['entropy_before']:.3f} | {r['id_before']:.3f} | {_pm(sp['id_after'])} | "
            f"{_pm(sp['id_gain'])} | {r['ood_before']:.3f} | {_pm(sp['ood_after'])} | {_pm(sp['ood_gain'])} |"
        )
    lines.append("")
    lines.append(f"After-RL columns: mean ± sample std over {n} seed(s) {results['seeds']}; before-RL columns are")
    lines.append("greedy, so seed-free. Findings (decided on the means; seeds: on how many paired seeds it holds):")
    for name, f in results["findings"].items():
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in f.items() if k not in ("holds", "seeds_holding"))
        head, _, seeds = verdict(f, n).partition(", ")
        lines.append(f"- {name.replace('_', ' ')}: **{head}**{', ' + seeds if seeds else ''} ({numbers})")
    return "\n".join(lines) + "\n"
