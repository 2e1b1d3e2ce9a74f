"""What a finished `rayrejuv rl` run reports: `RLSummary`, stored as --out/summary.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RLSummary:
    steps: int  # GRPO steps the run has finished
    final_checkpoint: Path  # --out/final: the HF checkpoint of the last step
    seconds: float  # wall time of this invocation (a resumed run counts its own part)
    first: dict[str, float]  # the first step's metrics (metrics.jsonl keys, without "step")
    last: dict[str, float]  # the last step's metrics
    eval_first: dict[str, float]  # the first evaluation record (eval/* keys and its "step"); {} without eval
    eval_last: dict[str, float]
    mean_step_seconds: float  # mean time/step over the recorded steps

    @classmethod
    def of(cls, records: list[dict], steps: int, final: Path, seconds: float) -> RLSummary:
        """From the run's metric records (the MetricsSink's metrics.jsonl)."""
        step_records = [r for r in records if "reward/mean" in r]
        evals = [r for r in records if "eval/pass_at_1" in r]
        without_step = [{k: v for k, v in r.items() if k != "step"} for r in step_records]
        return cls(
            steps=steps,
            final_checkpoint=Path(final),
            seconds=seconds,
            first=without_step[0] if without_step else {},
            last=without_step[-1] if without_step else {},
            eval_first=evals[0] if evals else {},
            eval_last=evals[-1] if evals else {},
            mean_step_seconds=sum(r["time/step"] for r in step_records) / max(1, len(step_records)),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"final_checkpoint": str(self.final_checkpoint)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RLSummary:
        values = json.loads(text)
        return cls(**values | {"final_checkpoint": Path(values["final_checkpoint"])})
