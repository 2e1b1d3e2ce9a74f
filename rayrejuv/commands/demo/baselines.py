"""`rayrejuv demo --baselines`: rejuvenate, or fix it inside RL? GRPO from OverSFT with each of the
RL-side remedies practitioners reach for first (DAPO's dynamic sampling, clip-higher, an entropy
bonus), against GRPO from the rejuvenated OverSFT: at the same number of steps, and at the same
number of generated tokens (dynamic sampling draws more prompts per step, so it also runs once more
with Rejuvenation's token count as its budget: RLConfig.token_budget).

Each remedy is data: its GRPOConfig fields over the demo's recipe. Pure functions of the measured
runs turn them into the comparison table and its findings."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from rayrejuv.commands.demo.results import Finding, SeedRun, Spread, wins

REFERENCE = "oversft_rejuvenation"  # the row every remedy is compared with


@dataclass(frozen=True)
class Remedy:
    label: str
    grpo: dict[str, Any]  # GRPOConfig fields set over the demo's recipe
    tokens_of: str | None = None  # token budget: the generated tokens of this row's run of the same seed


# The values: DAPO's published clip-higher (epsilon_high 0.28, epsilon 0.2) and its dynamic sampling
# with verl's draw cap; the entropy coefficient is verl's order of magnitude (its old default 1e-3)
# raised tenfold. Clip-higher needs several optimizer steps per batch to act at all: with one, the
# importance ratio is exactly 1 and no clip bound is reached (measured: bit-identical to OverSFT,
# docs/testbed.md). So it runs as DAPO and verl run it, 4 minibatches per batch (verl's
# ppo_mini_batch_size below the train batch), beside a row with the 4 minibatches alone, which
# separates what the extra optimizer steps do from what the raised bound does.
MINIBATCHES = 4
REMEDIES: dict[str, Remedy] = {
    "oversft_dynamic_sampling": Remedy("OverSFT + dynamic sampling", {"dynamic_sampling": True}),
    "oversft_dynamic_sampling_tokens": Remedy("OverSFT + dynamic sampling, Rejuvenation's tokens",
                                              {"dynamic_sampling": True}, tokens_of=REFERENCE),
    "oversft_minibatches": Remedy(f"OverSFT + {MINIBATCHES} minibatches per batch", {"minibatches": MINIBATCHES}),
    "oversft_clip_higher": Remedy(f"OverSFT + clip-higher ({MINIBATCHES} minibatches)",
                                  {"epsilon_high": 0.28, "minibatches": MINIBATCHES}),
    "oversft_entropy_bonus": Remedy("OverSFT + entropy bonus", {"entropy_coeff": 0.01}),
}


@dataclass(frozen=True)
class BaselineRow:
    """One row of the comparison: a start's runs over seeds, after RL, with what each cost."""

    label: str
    per_seed: list[SeedRun]
    steps: float  # mean GRPO steps run
    generated_tokens: float  # mean completion tokens sampled (every draw, the dropped groups included)
    entropy_after: float
    spread: dict[str, Spread]  # id_after, ood_after

    @classmethod
    def of(cls, label: str, runs: list[SeedRun]) -> BaselineRow:
        return cls(label, runs, statistics.fmean(r.steps for r in runs),
                   statistics.fmean(r.generated_tokens for r in runs), statistics.fmean(r.entropy_after for r in runs),
                   {k: Spread.of([getattr(r, k) for r in runs]) for k in ("id_after", "ood_after")})


@dataclass(frozen=True)
class BaselineTable:
    seeds: list[int]
    rows: dict[str, BaselineRow]  # oversft, each remedy, oversft_rejuvenation
    findings: dict[str, Finding]  # rejuvenation_beats_<remedy>_<split>

    def to_json(self) -> dict:
        return {"seeds": self.seeds, "rows": {k: asdict(r) for k, r in self.rows.items()},
                "findings": {k: f.to_json() for k, f in self.findings.items()}}


def compare(seeds: list[int], labels: dict[str, str], per_seed: dict[str, list[SeedRun]]) -> BaselineTable:
    """`per_seed[row]`: its runs in `seeds` order, for oversft, every remedy and Rejuvenation."""
    for name, runs in per_seed.items():
        if [r.seed for r in runs] != list(seeds):
            raise ValueError(f"{name}: runs for seeds {[r.seed for r in runs]}, expected {list(seeds)}")
    rows = {name: BaselineRow.of(labels[name], runs) for name, runs in per_seed.items()}
    reference = per_seed[REFERENCE]
    found: dict[str, Finding] = {}
    for name in REMEDIES:
        for split in ("id", "ood"):
            mine = [getattr(r, f"{split}_after") for r in reference]
            theirs = [getattr(r, f"{split}_after") for r in per_seed[name]]
            found[f"rejuvenation_beats_{name.removeprefix('oversft_')}_{split}"] = Finding(
                statistics.fmean(mine) > statistics.fmean(theirs), wins(mine, theirs),
                {"rejuvenation": statistics.fmean(mine), name: statistics.fmean(theirs)})
    return BaselineTable(list(seeds), rows, found)


def token_budget(remedy: Remedy, seed: int, finished: dict[str, list[SeedRun]]) -> int | None:
    """The remedy's RLConfig.token_budget at `seed`: the tokens its `tokens_of` row's run generated."""
    if remedy.tokens_of is None:
        return None
    (run,) = [r for r in finished[remedy.tokens_of] if r.seed == seed]
    return int(run.generated_tokens)


def markdown(table: BaselineTable, id_name: str, ood_name: str) -> str:
    n = len(table.seeds)
    lines = [f"| start | GRPO steps | generated tokens | ID ({id_name}) after | OOD ({ood_name}) after | "
             "entropy after |", "|---|---|---|---|---|---|"]
    for r in table.rows.values():
        lines.append(f"| {r.label} | {r.steps:.1f} | {r.generated_tokens:,.0f} | {r.spread['id_after'].pm()} | "
                     f"{r.spread['ood_after'].pm()} | {r.entropy_after:.3f} |")
    lines += ["", f"Mean ± sample std over {n} seed(s) {table.seeds}. Rejuvenation against each remedy (decided on "
              "the means; seeds: on how many paired seeds Rejuvenation is ahead):"]
    for name, f in table.findings.items():
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in f.numbers.items())
        lines.append(f"- {name.replace('_', ' ')}: **{f.verdict(n)}** ({numbers})")
    return "\n".join(lines) + "\n"

