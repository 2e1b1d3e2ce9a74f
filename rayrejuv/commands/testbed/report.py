"""What `rayrejuv testbed build` and `rayrejuv testbed real` show: the terminal summaries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayrejuv.commands.testbed.driver import BuildManifest
    from rayrejuv.commands.testbed.real import RealBuild


def print_testbed_summary(manifest: BuildManifest, out: Path, wall_s: float) -> None:
    print(f"testbed ready in {out} ({wall_s:.1f}s; build timings {manifest.timings_s})")


def print_real_summary(build: RealBuild, wall_s: float) -> None:
    m = build.manifest
    if build.cached:
        print(f"real fixture in {build.root} is already built with these settings: nothing to do "
              f"(built in {sum(m.timings_s.values()):.0f}s; --overwrite rebuilds)")
        return
    layers = f"{m.trained_layers[0]}-{m.trained_layers[-1]}"
    print(f"real fixture ready in {build.root} ({wall_s:.1f}s; phases {m.timings_s}); SFT trained layers {layers} "
          f"for {m.sft_steps} steps: loss {m.base_loss:.4f} (base) -> {m.sft_saved_loss:.4f} (saved bf16 SFT)")
