"""What `rayrejuv testbed build` shows: the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayrejuv.commands.testbed.driver import BuildManifest


def print_testbed_summary(manifest: BuildManifest, out: Path, wall_s: float) -> None:
    print(f"testbed ready in {out} ({wall_s:.1f}s; build timings {manifest.timings_s})")
