"""The rejuvenation report: JSON for machines, a PNG map of the reset for people."""

from __future__ import annotations

import json
from pathlib import Path

REPORT = "rejuvenation_report.json"
RESET_MAP = "reset_map.png"


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2))
