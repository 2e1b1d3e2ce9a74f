"""Claiming a command's run directory: one directory belongs to one config.

    missing or empty        -> a new run (nothing is written until RunDir.save())
    manifest, same config   -> resumed (the stored state comes back)
    manifest, other config  -> refused, unless the command's replace flag is set (then wiped)
    anything else           -> refused: never delete or mix into a directory we did not make
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrejuv.errors import RejuvError
from rayrejuv.io.writer import atomic_write_text


@dataclass
class RunDir:
    root: Path
    manifest: Path
    state: dict[str, Any]  # persisted in the manifest; state[key] is the fingerprint of the config it belongs to
    resumed: bool
    replaced: bool = field(default=False)

    def save(self) -> None:
        """Persist the state (a new run's directory is created here, not when it is claimed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest, json.dumps(self.state, indent=1))


def _differences(stored: dict, wanted: dict) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def claim_run_dir(
    root: Path,
    *,
    manifest: str,
    fingerprint: dict[str, Any],
    kind: str,
    replace: bool,
    replace_flag: str,
    initial: dict[str, Any] | None = None,
    key: str = "fingerprint",
) -> RunDir:
    """Claim `root` for a run of `kind` (e.g. "rayrejuv rl run") whose config has `fingerprint`.

    `replace` (the command's --overwrite / --force) wipes a directory that holds another run of
    this kind; `initial` seeds the state of a new run; `key` names the manifest's fingerprint field
    (the demo's and the testbed's manifests call it "config")."""
    root = Path(root)
    path = root / manifest
    if root.exists() and not root.is_dir():
        raise RejuvError(f"--out {root} exists and is not a directory; choose another --out")
    replaced = False
    if path.is_file():
        stored = json.loads(path.read_text())
        if not replace and stored[key] == fingerprint:
            return RunDir(root, path, stored, resumed=True)
        if not replace:
            diff = ", ".join(_differences(stored[key], fingerprint))
            raise RejuvError(
                f"--out {root} holds a {kind} with different settings ({diff}); resume it with the same config, "
                f"pass {replace_flag} to start again, or choose another --out"
            )
        shutil.rmtree(root)
        replaced = True
    elif root.exists() and any(root.iterdir()):
        raise RejuvError(f"--out {root} is not empty and is not a {kind} (no {manifest}); choose another --out")
    return RunDir(root, path, {key: fingerprint, **(initial or {})}, resumed=False, replaced=replaced)
