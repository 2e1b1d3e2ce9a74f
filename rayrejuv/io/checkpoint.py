"""Read HF checkpoints one tensor at a time.

Only headers are parsed up front; `get(name)` reads a single tensor. Pickle checkpoints
(`pytorch_model*.bin`) can execute code when unpickled: they are refused unless the caller
opts in, and then loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rayrejuv.arch import ArchSpec, ModelGeometry
from rayrejuv.errors import RejuvError
from rayrejuv.io.safetensors_format import TensorMeta, read_header

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEX_FILES = (SAFETENSORS_INDEX, PICKLE_INDEX)


def _load_config(path: Path):
    from transformers import AutoConfig  # heavy import, only when a checkpoint is opened

    if not (path / "config.json").is_file():
        raise RejuvError(f"{path}: no config.json; pass the directory of a Hugging Face checkpoint")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad config
        raise RejuvError(f"{path}/config.json could not be parsed by transformers: {e}") from None


class Checkpoint:
    """A checkpoint directory: config, geometry, and lazy access to its tensors."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False, role: str = "checkpoint"):
        self.path = Path(path)
        self.role = role  # "base" / "sft": names the checkpoint in error messages
        if not self.path.is_dir():
            raise RejuvError(f"{role} checkpoint {self.path} is not a directory; pass a checkpoint directory")
        self.config = _load_config(self.path)
        self.geometry = ModelGeometry.from_config(self.config)
        self.spec: ArchSpec = self.geometry.spec
        self.is_pickle, self._file_of = self._index_files(allow_pickle)
        self._meta: dict[str, TensorMeta] = {}
        self._handles: dict[Path, object] = {}
        self._pickle_cache: dict[Path, dict[str, torch.Tensor]] = {}
        self._read_metadata()
        if self.geometry.tie_word_embeddings:
            # The config says lm_head *is* the embedding: a stored copy is ignored.
            self._file_of.pop(self.spec.lm_head, None)
            self._meta.pop(self.spec.lm_head, None)

    # ---- discovery ---------------------------------------------------------------------
    def _index_files(self, allow_pickle: bool) -> tuple[bool, dict[str, Path]]:
        p = self.path
        if (p / SAFETENSORS_INDEX).is_file():
            return False, self._from_index(p / SAFETENSORS_INDEX)
        if (p / SAFETENSORS_SINGLE).is_file():
            return False, {}  # names filled from the header
        if (p / PICKLE_INDEX).is_file() or (p / PICKLE_SINGLE).is_file():
            if not allow_pickle:
                raise RejuvError(
                    f"{self.role} checkpoint {p} holds pickle weights (pytorch_model*.bin), which can run code "
                    "when loaded; convert it to safetensors, or pass --allow-pickle to load it with weights_only=True"
                )
            if (p / PICKLE_INDEX).is_file():
                return True, self._from_index(p / PICKLE_INDEX)
            return True, {}
        raise RejuvError(f"{self.role} checkpoint {p} has no model.safetensors or model.safetensors.index.json")

    def _from_index(self, index: Path) -> dict[str, Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise RejuvError(f"{index}: malformed index json ({e}); re-save the checkpoint") from None
        files = {name: self.path / f for name, f in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise RejuvError(f"{index} names shard {f.name}, which is missing; the checkpoint is incomplete")
        return files

    def _read_metadata(self) -> None:
        if self.is_pickle:
            if not self._file_of:
                self._file_of = {n: self.path / PICKLE_SINGLE for n in self._pickle_state(self.path / PICKLE_SINGLE)}
            for name, f in self._file_of.items():
                t = self._pickle_state(f)[name]
                self._meta[name] = TensorMeta(t.dtype, tuple(t.shape))
            return
        if not self._file_of:
            single = self.path / SAFETENSORS_SINGLE
            header = self._safe_header(single)
            self._file_of = {n: single for n in header}
            self._meta = header
            return
        for f in sorted(set(self._file_of.values())):
            header = self._safe_header(f)
            for name, meta in header.items():
                if self._file_of.get(name) == f:
                    self._meta[name] = meta
        missing = set(self._file_of) - set(self._meta)
        if missing:
            raise RejuvError(
                f"{self.role} checkpoint {self.path}: index lists tensors absent from their shards: "
                f"{sorted(missing)[:5]}; the checkpoint is corrupt"
            )

    def _safe_header(self, f: Path) -> dict[str, TensorMeta]:
        try:
            return read_header(f)
        except Exception as e:
            raise RejuvError(f"{f}: not a readable safetensors file ({e}); the checkpoint is corrupt") from None

    def _pickle_state(self, f: Path) -> dict[str, torch.Tensor]:
        if f not in self._pickle_cache:
            try:
                self._pickle_cache[f] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                first = str(e).strip().splitlines()[-1][:200]
                raise RejuvError(
                    f"{f}: refused by torch.load(weights_only=True) ({type(e).__name__}: {first}); "
                    "it holds more than tensors: convert it to safetensors from a trusted environment"
                ) from None
        return self._pickle_cache[f]

    # ---- access ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._meta)

    def meta(self, name: str) -> TensorMeta:
        return self._meta[name]

    def logical_meta(self, name: str) -> TensorMeta:
        """Like meta(), but a tied lm_head is the embedding."""
        return self._meta[self.logical_source(name)]

    def logical_source(self, name: str) -> str:
        if name == self.spec.lm_head and self.geometry.tie_word_embeddings:
            return self.spec.embed
        return name

    def get(self, name: str, *, check_finite: bool = True) -> torch.Tensor:
        """Read one tensor (a tied lm_head reads the embedding)."""
        src = self.logical_source(name)
        if src not in self._file_of:
            raise RejuvError(f"{self.role} checkpoint {self.path} has no tensor {name}")
        f = self._file_of[src]
        if self.is_pickle:
            t = self._pickle_state(f)[src]
        else:
            t = self._handle(f).get_tensor(src)
        if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise RejuvError(
                f"{self.role} checkpoint {self.path}: tensor {src} holds {bad} NaN/Inf values; "
                "repair or replace this checkpoint before rejuvenating it"
            )
        return t

    def _handle(self, f: Path):
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt", device="cpu")
        return self._handles[f]

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype that holds most parameters (what 'the checkpoint's dtype' means)."""
        by_dtype: dict[torch.dtype, int] = {}
        for m in self._meta.values():
            if m.dtype.is_floating_point:
                by_dtype[m.dtype] = by_dtype.get(m.dtype, 0) + m.numel
        return max(by_dtype, key=by_dtype.__getitem__)

    def close(self) -> None:
        self._handles.clear()
        self._pickle_cache.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_complete(self) -> None:
        """Every tensor the architecture requires is present; nothing unknown inside a layer."""
        g, spec = self.geometry, self.spec
        required = spec.required_tensors(g.num_layers, g.tie_word_embeddings)
        missing = [n for n in required if n not in self._meta]
        if missing:
            raise RejuvError(
                f"{self.role} checkpoint {self.path} lacks {len(missing)} tensors the {spec.family} architecture "
                f"requires, e.g. {missing[:3]}; the checkpoint is incomplete or of another architecture"
            )
        allowed = spec.allowed_layer_tensors()
        for name in self._meta:
            role = spec.role(name)
            if role.layer is None:
                continue
            rel = name[len(spec.layer_tensor(role.layer, "")) :]
            if role.layer >= g.num_layers or rel not in allowed:
                raise RejuvError(
                    f"{self.role} checkpoint {self.path}: unexpected tensor {name} for a {g.num_layers}-layer "
                    f"{spec.family} model; the config and the weights disagree"
                )
