"""What `rayrejuv tune` produces: one `TrialRow` per trial (leaderboard.json / .md) and the
`TuneSummary` (summary.json). The JSON keeps each row flat: trial, the sampled hyperparameters, then
the scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

Status = Literal["finished", "stopped early", "failed"]


@dataclass(frozen=True)
class TrialRow:
    trial: str  # Tune's trial id (its directory under --out/trials)
    params: dict[str, Any]  # the sampled hyperparameters, in the search space's order
    status: Status
    objective: float | None  # finished trials only
    probe_reward_auc: float | None  # mean probe step reward (at the last report of a stopped trial)
    id_pass_at_1: float | None
    ood_pass_at_1: float | None
    reports: int | None  # reports the scheduler saw (Tune's training_iteration)
    trial_seconds: float | None
    checkpoint: str | None  # the trial's rejuvenated checkpoint (finished trials)

    @classmethod
    def of_result(cls, result, names: list[str]) -> TrialRow:
        """From a ray.tune.Result: its last reported metrics (none for a trial that failed at once)."""
        m = result.metrics or {}
        done = "checkpoint" in m  # only the trial's final report carries it
        return cls(
            trial=m.get("trial_id") or Path(result.path).name,
            params={k: result.config.get(k) for k in names},
            status="failed" if result.error else ("finished" if done else "stopped early"),
            objective=m.get("objective") if done else None,
            probe_reward_auc=m.get("probe/reward_auc"),
            id_pass_at_1=m.get("eval/id_pass_at_1"),
            ood_pass_at_1=m.get("eval/ood_pass_at_1"),
            reports=m.get("training_iteration"),
            trial_seconds=m.get("time/trial"),
            checkpoint=m.get("checkpoint"),
        )

    def to_dict(self) -> dict[str, Any]:
        scores = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("trial", "params")}
        return {"trial": self.trial, **self.params, **scores}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> TrialRow:
        named = {f.name for f in fields(cls)}
        return cls(params={k: v for k, v in row.items() if k not in named}, **{k: row[k] for k in named - {"params"}})


def ranked(rows: list[TrialRow]) -> list[TrialRow]:
    """Best objective first; trials without one (stopped, failed) last."""
    return sorted(rows, key=lambda r: (r.objective is None, -(r.objective or 0.0)))


LEADERBOARD_SCORES = ("status", "objective", "probe_reward_auc", "id_pass_at_1", "ood_pass_at_1", "reports",
                      "trial_seconds")


def leaderboard_markdown(rows: list[TrialRow], names: list[str]) -> str:
    """leaderboard.md: one table row per trial, hyperparameters `names` as columns."""
    cols = ["trial", *names, *LEADERBOARD_SCORES]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.to_dict()[c]) for c in cols) + " |" for r in rows]
    return "\n".join(md) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


@dataclass(frozen=True)
class TuneSummary:
    best: TrialRow
    best_yaml: Path  # --out/best.yaml: the best trial's RejuvenateConfig, for `rayrejuv rejuvenate --config`
    best_checkpoint: Path
    wall_seconds: float  # the search's wall time
    trial_seconds_sum: float  # the trials' own run times, summed (ideal wall = this / max_concurrent)
    leaderboard: list[TrialRow]  # ranked

    def to_json(self) -> str:
        return json.dumps({
            "best": self.best.to_dict(), "best_yaml": str(self.best_yaml), "best_checkpoint": str(self.best_checkpoint),
            "wall_seconds": self.wall_seconds, "trial_seconds_sum": self.trial_seconds_sum,
            "leaderboard": [r.to_dict() for r in self.leaderboard],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> TuneSummary:
        v = json.loads(text)
        return cls(
            best=TrialRow.from_dict(v["best"]), best_yaml=Path(v["best_yaml"]),
            best_checkpoint=Path(v["best_checkpoint"]), wall_seconds=v["wall_seconds"],
            trial_seconds_sum=v["trial_seconds_sum"], leaderboard=[TrialRow.from_dict(r) for r in v["leaderboard"]],
        )
