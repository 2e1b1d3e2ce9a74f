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


# The data field each measured value needs: teacher-forced on the reference "response", sampled
# and checked against the "answer".
MEASURED_FROM = {
    "sft_loss": "response",
    "entropy": "response",
    "tokens": "response",
    "pass_at_1": "answer",
    "pass_at_k": "answer",
    "pass_gap": "answer",
    "sample_accuracy": "answer",
    "k": "answer",
}


@dataclass(frozen=True)
class Symptom:
    """One of the paper's Table 1 symptoms: a value below its threshold."""

    name: str  # as the verdict lists it
    value: str  # the DiagnosisRow field it is read from (and the Thresholds field it is compared with)

    @property
    def needs(self) -> str:
        return MEASURED_FROM[self.value]


SYMPTOMS = (Symptom("entropy collapse", "entropy"), Symptom("SFT loss saturation", "sft_loss"),
            Symptom("diversity collapse", "pass_gap"))  # fmt: skip
UNDETERMINED = "undetermined"  # no symptom found, but not every symptom was measured: plastic cannot be said


@dataclass(frozen=True, kw_only=True)
class DiagnosisRow:
    """One checkpoint. A value is None where it was not measured (the data lacks responses or
    answers; the base has no drift); diagnose.json leaves those keys out, and lists the symptoms'
    values that were not measured under `not_measured`, the data fields that would measure them
    under `missing` (both only when not empty)."""

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
    verdict: str | None = None  # rigid, at risk, plastic, undetermined; None until judged
    symptoms: list[str] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)  # values of SYMPTOMS that are None, e.g. ["sft_loss"]
    missing: list[str] = field(default_factory=list)  # data fields they need, e.g. ["response"]
    notes: list[str] = field(default_factory=list)  # findings that are not symptoms (a negative gap)

    def judged(self, thresholds: Thresholds) -> DiagnosisRow:
        """The row with its symptoms and verdict: rigid: two or more symptoms; at risk: one;
        plastic: none, every symptom measured; undetermined: none found, some not measured."""
        found = [s.name for s in SYMPTOMS if self._shows(s, thresholds)]
        unmeasured = [s for s in SYMPTOMS if getattr(self, s.value) is None]
        if len(found) >= 2:
            verdict = "rigid"
        elif found:
            verdict = "at risk"
        else:
            verdict = UNDETERMINED if unmeasured else "plastic"
        return replace(
            self,
            verdict=verdict,
            symptoms=found,
            not_measured=[s.value for s in unmeasured],
            missing=sorted({s.needs for s in unmeasured}),
            notes=self._negative_gap(),
        )

    def _shows(self, symptom: Symptom, thresholds: Thresholds) -> bool:
        value = getattr(self, symptom.value)
        if value is None or value >= getattr(thresholds, symptom.value):
            return False
        # a model that solves nothing has no diversity to lose; a negative gap (samples worse than
        # greedy) is the opposite of samples collapsing onto the greedy answer (gap exactly 0)
        return symptom.value != "pass_gap" or (self.pass_at_1 > 0 and value >= 0)

    def _negative_gap(self) -> list[str]:
        if self.pass_gap is None or self.pass_gap >= 0:
            return []
        return [
            f"negative gap: pass@k {self.pass_at_k:.4f} < pass@1 {self.pass_at_1:.4f} (sampled answers are worse "
            "than the greedy one; not a diversity collapse)"
        ]

    def explained(self) -> str:
        """The verdict with its reasons, as the report and the terminal print it."""
        parts = [", ".join(self.symptoms)] if self.symptoms else []
        if self.not_measured:
            needs = " and ".join(f"'{f}'" for f in self.missing)
            parts.append(f"{', '.join(self.not_measured)} not measured: --data rows need {needs}")
        return f"{self.verdict} ({'; '.join(parts)})" if parts else str(self.verdict)

    def numbers(self) -> dict[str, float]:
        """The measured numbers (MLflow metrics)."""
        return {k: v for k, v in self.to_json().items() if isinstance(v, (int, float))}

    def to_json(self) -> dict[str, Any]:
        """Measured values and the verdict; the lists added since the first format only when not empty."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) is not None and (f.name not in _SAID_WHEN_NOT_EMPTY or getattr(self, f.name))
        }


_SAID_WHEN_NOT_EMPTY = ("not_measured", "missing", "notes")


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
