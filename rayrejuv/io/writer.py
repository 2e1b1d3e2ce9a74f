"""Write a checkpoint atomically: plan shards, stream tensors into them, verify, rename into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rayrejuv.errors import RejuvError
from rayrejuv.io.checkpoint import SAFETENSORS_INDEX, WEIGHT_FILE_SUFFIXES, WEIGHT_INDEX_FILES
from rayrejuv.io.safetensors_format import TensorMeta, encode_header, read_header, read_tensor, tensor_bytes

MANIFEST = "checksums.json"


@dataclass(frozen=True)
class ShardPlan:
    file: str  # e.g. "model-00001-of-00003.safetensors"
    entries: tuple[tuple[str, TensorMeta], ...]

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for _, m in self.entries)


def plan_shards(entries: list[tuple[str, TensorMeta]], max_shard_bytes: int) -> list[ShardPlan]:
    """Greedy packing in the given order: a shard closes before it would exceed the limit."""
    groups: list[list[tuple[str, TensorMeta]]] = [[]]
    size = 0
    for name, meta in entries:
        if groups[-1] and size + meta.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, meta))
        size += meta.nbytes
    n = len(groups)
    if n == 1:
        return [ShardPlan("model.safetensors", tuple(groups[0]))]
    return [ShardPlan(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


class ShardWriter:
    """Streams the tensors of one planned shard, in plan order, hashing as it writes."""

    def __init__(self, directory: Path, plan: ShardPlan):
        self.plan = plan
        self.path = directory / plan.file
        self._next = 0
        self.checksums: dict[str, str] = {}
        self._f = open(self.path, "wb")
        self._f.write(encode_header(list(plan.entries), {"format": "pt"}))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, meta = self.plan.entries[self._next]
        if name != expected_name or tensor.dtype != meta.dtype or tuple(tensor.shape) != meta.shape:
            raise RuntimeError(
                f"shard {self.plan.file}: got {name} {tensor.dtype} {tuple(tensor.shape)}, "
                f"planned {expected_name} {meta.dtype} {meta.shape}"
            )
        data = tensor_bytes(tensor)
        start = self._f.tell()
        self._f.write(data)
        self.checksums[name] = hashlib.sha256(data).hexdigest()
        self._next += 1
        # Start writing these pages back now (asynchronously), so the fsync in close() that makes
        # the shard durable finds little left to do.
        self._f.flush()
        os.posix_fadvise(self._f.fileno(), start, len(data), os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Close the complete shard. Durability is fsync_file()'s job, which may run in the
        background while the next shard is written."""
        if self._next != len(self.plan.entries):
            raise RuntimeError(f"shard {self.plan.file}: wrote {self._next} of {len(self.plan.entries)} tensors")
        self._f.close()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(directory: Path, plans: list[ShardPlan]) -> None:
    if len(plans) == 1 and plans[0].file == "model.safetensors":
        return
    index = {
        "metadata": {"total_size": sum(p.nbytes for p in plans)},
        "weight_map": {name: p.file for p in plans for name, _ in p.entries},
    }
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))


def write_manifest(directory: Path, checksums: dict[str, str]) -> None:
    """sha256 of every tensor's bytes (hashed while streaming) and the size of every file."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"tensors": checksums, "file_bytes": files}, indent=2))


def copy_side_files(src: Path, dst: Path, skip: set[str]) -> list[str]:
    """Copy tokenizer, generation config and other non-weight files of a checkpoint."""
    copied = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name in skip or p.name in WEIGHT_INDEX_FILES or p.suffix in WEIGHT_FILE_SUFFIXES:
            continue
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


@dataclass
class AtomicDir:
    """A temporary sibling of `target` that becomes `target` only on commit().

    On an exception inside the `with` block the target is left exactly as it was. The temporary
    directory is removed, except for a `resumable` one after a crash that is not a user error:
    it has a stable name (.<name>.partial) and a later run with `resume` picks it up.
    """

    target: Path
    overwrite: bool = False
    resumable: bool = False
    resume: bool = False
    tmp: Path = field(init=False)

    def __post_init__(self) -> None:
        self.target = Path(self.target).absolute()
        if self.target.exists() and not self.overwrite:
            raise RejuvError(f"output directory {self.target} already exists; pass --overwrite or choose another --out")
        if self.target.exists() and not self.target.is_dir():
            raise RejuvError(f"output path {self.target} exists and is not a directory; choose another --out")
        suffix = "partial" if self.resumable else f"tmp-{uuid.uuid4().hex[:8]}"
        self.tmp = self.target.parent / f".{self.target.name}.{suffix}"

    def __enter__(self) -> AtomicDir:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists() and not self.resume:
            shutil.rmtree(self.tmp)  # a stale partial run the user did not ask to resume
        self.tmp.mkdir(exist_ok=True)
        return self

    def require_free_bytes(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.tmp).free
        if free < nbytes:
            raise RejuvError(
                f"not enough disk space for the output: {nbytes / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free "
                f"under {self.target.parent}; free space or choose --out on another disk"
            )

    def commit(self) -> None:
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
        os.rename(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        keep = self.resumable and exc is not None and not isinstance(exc, RejuvError) and not disk_full
        if self.tmp.exists() and not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if disk_full:
            raise RejuvError(
                f"disk full while writing {self.target} (nothing was written there); free space or choose "
                "--out on another disk"
            ) from None


class ShardPatcher:
    """Rewrite some tensors of a complete shard in place (same dtype and shape), rehashing them."""

    def __init__(self, directory: Path, plan: ShardPlan):
        self.path = directory / plan.file
        self._stored = read_header(self.path)
        self.checksums: dict[str, str] = {}

    def __enter__(self) -> ShardPatcher:
        self._f = open(self.path, "r+b")
        return self

    def read(self, name: str) -> torch.Tensor:
        return read_tensor(self._f, self._stored[name])

    def write(self, name: str, tensor: torch.Tensor) -> None:
        stored = self._stored[name]
        if tensor.dtype != stored.meta.dtype or tuple(tensor.shape) != stored.meta.shape:
            raise RuntimeError(f"{self.path.name}: patch of {name} changes its dtype or shape")
        data = tensor_bytes(tensor)
        os.pwrite(self._f.fileno(), data, stored.offset)
        self.checksums[name] = hashlib.sha256(data).hexdigest()

    def __exit__(self, *exc) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file through a temporary sibling and os.replace: readers see the old file
    or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (a GGUF download, a checkpoint's shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MARKER_SUFFIX = ".done.json"


def write_marker(directory: Path, plan: ShardPlan, stage: str, fingerprint: str, checksums: dict[str, str]) -> None:
    """Record that a shard is complete and durable at `stage` ("fused" or "final")."""
    path = directory / (plan.file + MARKER_SUFFIX)
    body = {
        "stage": stage,
        "fingerprint": fingerprint,
        "bytes": (directory / plan.file).stat().st_size,
        "checksums": checksums,
    }
    atomic_write_text(path, json.dumps(body))


def read_marker(directory: Path, plan: ShardPlan, fingerprint: str) -> dict | None:
    """A shard's marker if it belongs to this run (same fingerprint) and the file is intact."""
    path = directory / (plan.file + MARKER_SUFFIX)
    shard = directory / plan.file
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if body.get("fingerprint") != fingerprint or not shard.is_file() or shard.stat().st_size != body.get("bytes"):
        return None
    if set(body.get("checksums", {})) != {n for n, _ in plan.entries}:
        return None
    return body


def remove_markers(directory: Path) -> None:
    for p in directory.glob("*" + MARKER_SUFFIX):
        p.unlink()


def verify_shards(directory: Path, plans: list[ShardPlan]) -> None:
    """Before the rename: every planned shard exists with exactly its planned header and size
    (tensor checksums were taken by the writers as they wrote)."""
    for plan in plans:
        path = directory / plan.file
        stored = read_header(path)
        got = [(n, s.meta) for n, s in sorted(stored.items(), key=lambda kv: kv[1].offset)]
        if got != list(plan.entries):
            raise RuntimeError(f"shard {plan.file} does not hold its planned tensors; the run is corrupt")
        end = max((s.offset + s.meta.nbytes for s in stored.values()), default=0)
        if path.stat().st_size != end:
            raise RuntimeError(f"shard {plan.file} is {path.stat().st_size} bytes, expected {end}")
