"""What `rayrejuv diagnose` measured, typed: a row per checkpoint, the drift per matrix, the
thresholds of the verdicts; `Diagnosis.to_json()` is diagnose.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class DriftRow:
    """One matrix (tensor) of an SFT checkpoint against the base."""

    name: str
    layer: int | None  # None for tensors outside the decoder layers (embeddings, final norm)
    module: str
    msd: float  # mean squared drift
    relative: float  # ||SFT - base|| / ||base||


@dataclass(frozen=True)
class Thresholds:
    """A symptom is a value below its threshold: entropy (nats), SFT loss, pass@k - pass@1."""

    entropy: float
    sft_loss: float
    pass_gap: float


@dataclass(frozen=True, kw_only=True)
class DiagnosisRow:
    """One checkpoint. A value is None where it was not measured (the data lacks responses or
    answers; the base has no drift); diagnose.json leaves those keys out."""

    checkpoint: str
    path: str
    sft_loss: float | None = None
    entropy: float | None = None
    tokens: int | None = None
    pass_at_1: float | None = None
    pass_at_k: float | None = None
    pass_gap: float | None = None
    sample_accuracy: float | None = None
    k: int | None = None
    drift_msd_mean: float | None = None
    drift_rel_max: float | None = None
    verdict: str | None = None  # rigid, at risk, plastic; None until judged
    symptoms: list[str] = field(default_factory=list)

    def judged(self, thresholds: Thresholds) -> DiagnosisRow:
        """The row with its symptoms and verdict: rigid: two or more symptoms; at risk: one; plastic: none."""
        found = []
        if self.entropy is not None and self.entropy < thresholds.entropy:
            found.append("entropy collapse")
        if self.sft_loss is not None and self.sft_loss < thresholds.sft_loss:
            found.append("SFT loss saturation")
        if self.pass_gap is not None and self.pass_at_1 > 0 and self.pass_gap < thresholds.pass_gap:
            found.append("diversity collapse")  # a model that solves nothing has no diversity to lose
        verdict = "rigid" if len(found) >= 2 else "at risk" if found else "plastic"
        return replace(self, verdict=verdict, symptoms=found)

    def numbers(self) -> dict[str, float]:
        """The measured numbers (MLflow metrics)."""
        return {k: v for k, v in self.to_json().items() if isinstance(v, (int, float))}

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Diagnosis:
    config: dict[str, Any]
    thresholds: Thresholds
    rows: list[DiagnosisRow]
    drift: dict[str, list[DriftRow]]  # SFT label -> one row per tensor
    figures: list[str]
    out: str  # the report directory (not in diagnose.json)

    def verdicts(self) -> dict[str, str]:
        return {r.checkpoint: r.verdict for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "thresholds": asdict(self.thresholds),
            "rows": [r.to_json() for r in self.rows],
            "drift": {label: [asdict(d) for d in rows] for label, rows in self.drift.items()},
            "figures": self.figures,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], out: str) -> Diagnosis:
        return cls(
            config=data["config"],
            thresholds=Thresholds(**data["thresholds"]),
            rows=[DiagnosisRow(**r) for r in data["rows"]],
            drift={label: [DriftRow(**d) for d in rows] for label, rows in data["drift"].items()},
            figures=data["figures"],
            out=out,
        )
