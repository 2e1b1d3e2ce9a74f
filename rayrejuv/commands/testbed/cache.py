"""Built tiny worlds kept in the user's cache, so that a second demo with the same world (another
--out, a fresh clone) copies it instead of pre-training the base again (the stronger base's 875
steps are most of a demo's CPU time on 2 cores).

The key is the world's fingerprint with the torch and transformers versions, WORLD_THREADS and
the CPU kernels (runs.kernels): the build is bit-identical given those (tests/test_install.py), so
a cached world is the world the build would make. Writes are atomic (a temporary sibling renamed into place)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.commands.testbed.driver import MANIFEST, WORLD_THREADS
from rayrejuv.io.writer import AtomicDir
from rayrejuv.runs.kernels import cpu_kernels


def cached_world(cfg: TinyWorldConfig) -> Path:
    """$XDG_CACHE_HOME (else ~/.cache)/rayrejuv/world-<digest of what determines the world's bits>."""
    import torch
    import transformers

    key = {"world": cfg.fingerprint(), "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": WORLD_THREADS, "kernels": cpu_kernels()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rayrejuv" / f"world-{digest}"


def _complete(directory: Path, cfg: TinyWorldConfig) -> bool:
    """A finished build of exactly cfg's world."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    stored = json.loads(manifest.read_text())
    return bool(stored.get("complete")) and stored.get("config") == cfg.fingerprint()


def restore_world(cfg: TinyWorldConfig) -> Path | None:
    """Copy the cached world into cfg.out when cfg.out holds nothing yet; the cache it came from, or None."""
    source, target = cached_world(cfg), Path(cfg.out)
    if target.exists() or not _complete(source, cfg):
        return None
    with AtomicDir(target) as out:
        shutil.copytree(source, out.tmp, dirs_exist_ok=True)
        out.commit()
    return source


def store_world(cfg: TinyWorldConfig) -> Path | None:
    """Copy the finished world in cfg.out into the cache (kept when the cache has it); the cache, or None."""
    source, target = Path(cfg.out), cached_world(cfg)
    if _complete(target, cfg) or not _complete(source, cfg):
        return None
    with AtomicDir(target, overwrite=True) as out:
        shutil.copytree(source, out.tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".state"))
        out.commit()
    return target
