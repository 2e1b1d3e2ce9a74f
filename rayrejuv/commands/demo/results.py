"""The demo's table: per-start means and spreads over seeds, the paper's findings checked on the
numbers, and the Markdown people read. Pure functions of the measured scores, into typed results
whose `to_json()` is results.json."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayrejuv.commands.demo.baselines import BaselineTable

STARTS = ("modsft", "oversft", "oversft_fusion", "oversft_rejuvenation")
LABELS = {
    "modsft": "ModSFT",
    "oversft": "OverSFT",
    "oversft_fusion": "OverSFT + fusion",
    "oversft_rejuvenation": "OverSFT + Rejuvenation",
}
# what the table spreads over seeds; `_before` values do not depend on the RL seed (greedy decoding)
AFTER = ("id_after", "ood_after")
GAINS = ("id_gain", "ood_gain")


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation, 0 for one seed
    min: float
    max: float

    @classmethod
    def of(cls, xs: list[float]) -> Spread:
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, min(xs), max(xs))

    def pm(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


@dataclass(frozen=True)
class StartScores:
    """A start before RL: greedy pass@1 in and out of distribution, teacher-forced entropy."""

    id_before: float
    ood_before: float
    entropy_before: float


@dataclass(frozen=True)
class SeedRun:
    """One GRPO run from one start: its final checkpoint's scores, and its per-step curves."""

    seed: int
    id_after: float
    ood_after: float
    entropy_after: float
    reward_first: float
    reward_last: float
    zero_std_fraction_first: float
    rl_seconds: float
    steps: int  # GRPO steps run (fewer than the recipe's under a token budget)
    generated_tokens: float  # completion tokens sampled in the run (every draw: dynamic sampling draws more)
    rewards: list[float]  # (steps,) mean reward of the step's samples
    zero_std_fractions: list[float]  # (steps,) fraction of groups whose samples all got one reward
    run_dir: str


@dataclass(frozen=True)
class StartRow:
    """A row of the table: the start before RL, its runs (in seed order), their means and spreads."""

    id_before: float
    ood_before: float
    entropy_before: float
    per_seed: list[SeedRun]
    id_after: float
    ood_after: float
    id_gain: float
    ood_gain: float
    spread: dict[str, Spread]  # id_after, ood_after, id_gain, ood_gain

    def after(self, split: str) -> list[float]:
        """Per seed: pass@1 on `split` (id, ood) after RL."""
        return [getattr(r, f"{split}_after") for r in self.per_seed]

    def gains(self, split: str) -> list[float]:
        """Per seed: pass@1 after RL minus the start's (seed-free) level before it."""
        before = getattr(self, f"{split}_before")
        return [a - before for a in self.after(split)]


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims, decided on the means over seeds; `seeds_holding`: on how many
    paired seeds it holds (None for a seed-free claim); `numbers`: what it was decided on."""

    holds: bool
    seeds_holding: int | None
    numbers: dict[str, float]

    def verdict(self, n_seeds: int) -> str:
        """'holds, 3 of 3 seeds' / 'does not hold, 1 of 3 seeds' (no count for seed-free findings)."""
        text = "holds" if self.holds else "does not hold"
        return text if self.seeds_holding is None else f"{text}, {self.seeds_holding} of {n_seeds} seeds"

    def to_json(self) -> dict:
        counted = {} if self.seeds_holding is None else {"seeds_holding": self.seeds_holding}
        return {"holds": self.holds, **counted, **self.numbers}


@dataclass(frozen=True)
class DemoTable:
    """The ablation over seeds: one row per start, the findings, the names of the eval splits."""

    seeds: list[int]
    rows: dict[str, StartRow]
    findings: dict[str, Finding]
    id_split: str
    ood_split: str
    prompts: int  # held-out prompts per eval split: every pass@1 of the table is a mean over this many

    def standard_error(self) -> float:
        """Largest binomial standard error of one pass@1 on `prompts` prompts (at p = 0.5): a seed's
        finding within about twice it is not evidence either way."""
        return 0.5 / math.sqrt(self.prompts)

    def split_labels(self) -> tuple[str, str]:
        """Column names of the two eval splits, e.g. ("ID (hard)", "OOD (general)")."""
        return f"ID ({self.id_split})", f"OOD ({self.ood_split})"


@dataclass(frozen=True)
class DemoResults:
    """What a demo measured; `to_json()` is results.json (`out`, where it lies, is not in it)."""

    table: DemoTable
    diagnosis: dict[str, str]  # checkpoint -> verdict (rigid, at risk, plastic)
    timings_s: dict[str, float]
    wall_s: float
    out: str
    baselines: BaselineTable | None = None  # --baselines: the RL-side remedies against Rejuvenation

    def to_json(self) -> dict:
        t = self.table
        return {
            "seeds": t.seeds,
            "rows": {s: asdict(r) for s, r in t.rows.items()},
            "findings": {name: f.to_json() for name, f in t.findings.items()},
            "id_split": t.id_split,
            "ood_split": t.ood_split,
            "prompts_per_split": t.prompts,
            "diagnosis": self.diagnosis,
            "timings_s": self.timings_s,
            "wall_s": self.wall_s,
            "baselines": None if self.baselines is None else self.baselines.to_json(),
        }


def start_row(before: StartScores, runs: list[SeedRun]) -> StartRow:
    """Means and spreads over the runs of one start."""
    after = {k: [getattr(r, k) for r in runs] for k in AFTER}
    gains = {f"{split}_gain": [a - getattr(before, f"{split}_before") for a in after[f"{split}_after"]]
             for split in ("id", "ood")}
    spread = {k: Spread.of(v) for k, v in (after | gains).items()}
    return StartRow(**asdict(before), per_seed=runs, **{k: spread[k].mean for k in AFTER},
                    **{k: statistics.fmean(gains[k]) for k in GAINS}, spread=spread)


def aggregate(seeds: list[int], before: dict[str, StartScores], per_seed: dict[str, list[SeedRun]],
              id_split: str, ood_split: str, prompts: int) -> DemoTable:
    """`before[start]`: the start's scores; `per_seed[start]`: one run per seed, in `seeds` order;
    `prompts`: held-out prompts per eval split."""
    for start in STARTS:
        if [r.seed for r in per_seed[start]] != list(seeds):
            raise ValueError(f"{start}: runs for seeds {[r.seed for r in per_seed[start]]}, expected {list(seeds)}")
    rows = {start: start_row(before[start], per_seed[start]) for start in STARTS}
    return DemoTable(list(seeds), rows, findings(rows), id_split, ood_split, prompts)


def wins(better: list[float], worse: list[float]) -> int:
    """Seeds on which `better` beats `worse` (paired: every start runs the same seeds)."""
    return sum(b > w for b, w in zip(better, worse, strict=True))


def findings(rows: dict[str, StartRow]) -> dict[str, Finding]:
    """The paper's claims, each decided on the means over seeds, with the number of seeds on which
    it holds (seed-paired) beside it, and the numbers it was decided on."""
    mod, over, rejuv = rows["modsft"], rows["oversft"], rows["oversft_rejuvenation"]

    def after_rl(split: str) -> Finding:
        mean = f"{split}_after"
        return Finding(getattr(rejuv, mean) > getattr(over, mean), wins(rejuv.after(split), over.after(split)),
                       {"rejuvenation": getattr(rejuv, mean), "oversft": getattr(over, mean)})

    return {
        "oversft_gains_less_than_modsft": Finding(
            over.id_gain < mod.id_gain, wins(mod.gains("id"), over.gains("id")),
            {"oversft_id_gain": over.id_gain, "modsft_id_gain": mod.id_gain},
        ),
        "rejuvenation_beats_oversft_after_rl_id": after_rl("id"),
        "rejuvenation_beats_oversft_after_rl_ood": after_rl("ood"),
        "rejuvenation_restores_entropy": Finding(  # before RL: greedy and teacher-forced, so seed-free
            over.entropy_before < rejuv.entropy_before, None,
            {"oversft": over.entropy_before, "rejuvenation": rejuv.entropy_before, "modsft": mod.entropy_before},
        ),
    }


def markdown(table: DemoTable) -> str:
    """The paper's table: pass@1 before/after RL in and out of distribution, the gain, entropy."""
    n = len(table.seeds)
    id_name, ood_name = table.split_labels()
    lines = [
        f"| start | entropy before RL | {id_name} before | {id_name} after | {id_name} gain | "
        f"{ood_name} before | {ood_name} after | {ood_name} gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for start in STARTS:
        r = table.rows[start]
        sp = r.spread
        lines.append(
            f"| {LABELS[start]} | {r.entropy_before:.3f} | {r.id_before:.3f} | {sp['id_after'].pm()} | "
            f"{sp['id_gain'].pm()} | {r.ood_before:.3f} | {sp['ood_after'].pm()} | {sp['ood_gain'].pm()} |"
        )
    lines.append("")
    lines.append(f"After-RL columns: mean ± sample std over {n} seed(s) {table.seeds}; before-RL columns are")
    lines.append(f"greedy, so seed-free. Each pass@1 is over {table.prompts} prompts per split: standard error at most "
                 f"{table.standard_error():.3f}.")
    lines.append("Findings (decided on the means; seeds: on how many paired seeds it holds):")
    for name, f in table.findings.items():
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in f.numbers.items())
        head, _, seeds = f.verdict(n).partition(", ")
        lines.append(f"- {name.replace('_', ' ')}: **{head}**{', ' + seeds if seeds else ''} ({numbers})")
    return "\n".join(lines) + "\n"
