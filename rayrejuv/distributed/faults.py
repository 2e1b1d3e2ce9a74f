"""Fault injection for tests: a worker process that has passed RAYREJUV_FAULT_AFTER fault points
(default 0) and finds no file at RAYREJUV_FAULT_ONCE creates it and dies at once, as a crashed
node would. Workers call `fault_point()` where a crash is most awkward."""

from __future__ import annotations

import os
from pathlib import Path

FAULT_ENV = "RAYREJUV_FAULT_ONCE"
FAULT_AFTER_ENV = "RAYREJUV_FAULT_AFTER"
_passed = 0


def fault_point() -> None:
    global _passed
    marker = os.environ.get(FAULT_ENV)
    if marker and not os.path.exists(marker) and _passed >= int(os.environ.get(FAULT_AFTER_ENV, "0")):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    _passed += 1


def fault_env() -> dict[str, str]:
    """The hooks set in this process, to forward into worker processes."""
    return {k: os.environ[k] for k in (FAULT_ENV, FAULT_AFTER_ENV) if k in os.environ}
