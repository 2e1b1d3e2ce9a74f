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
from rayrejuv.io.safetensors_format import StoredTensor, TensorMeta, read_header, read_tensor

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEX_FILES = (SAFETENSORS_INDEX, PICKLE_INDEX)
GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file (llama.cpp's quantized single-file format)


def _is_gguf(path: Path) -> bool:
    """A GGUF file, or a directory holding one but no config.json (a llama.cpp download)."""
    if path.is_dir():
        return not (path / "config.json").is_file() and any(path.glob("*.gguf"))
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return path.suffix.lower() == ".gguf" or f.read(4) == GGUF_MAGIC


def refuse_gguf(path: Path, role: str) -> None:
    if _is_gguf(path):
        raise RejuvError(
            f"{role} checkpoint {path} is a GGUF (llama.cpp's quantized format), not a Hugging Face checkpoint; "
            "convert it first: AutoModelForCausalLM.from_pretrained(dir, gguf_file=name) (pip install gguf), then "
            "save_pretrained a model built from its config without quantization_config (`rayrejuv testbed real` "
            "does this for SmolLM2's GGUF, see docs/real-model.md)"
        )


def _load_config(path: Path) -> dict:
    """config.json as a dict (read directly: importing transformers costs seconds)."""
    f = path / "config.json"
    if not f.is_file():
        raise RejuvError(f"{path}: no config.json; pass the directory of a Hugging Face checkpoint")
    try:
        config = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise RejuvError(f"{f} is not valid JSON ({e}); repair the checkpoint's config") from None
    if not isinstance(config, dict):
        raise RejuvError(f"{f} must hold a JSON object")
    return config


class Checkpoint:
    """A checkpoint directory: config, geometry, and lazy access to its tensors."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False, role: str = "checkpoint"):
        self.path = Path(path)
        self.role = role  # "base" / "sft": names the checkpoint in error messages
        refuse_gguf(self.path, role)
        if not self.path.is_dir():
            raise RejuvError(f"{role} checkpoint {self.path} is not a directory; pass a checkpoint directory")
        self.config = _load_config(self.path)
        self.geometry = ModelGeometry.from_config(self.config)
        self.spec: ArchSpec = self.geometry.spec
        self.is_pickle, self._file_of = self._index_files(allow_pickle)
        self._meta: dict[str, TensorMeta] = {}
        self._stored: dict[str, StoredTensor] = {}
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
            self._stored = header
            self._meta = {n: st.meta for n, st in header.items()}
            return
        for f in sorted(set(self._file_of.values())):
            header = self._safe_header(f)
            for name, stored in header.items():
                if self._file_of.get(name) == f:
                    self._stored[name] = stored
                    self._meta[name] = stored.meta
        missing = set(self._file_of) - set(self._meta)
        if missing:
            raise RejuvError(
                f"{self.role} checkpoint {self.path}: index lists tensors absent from their shards: "
                f"{sorted(missing)[:5]}; the checkpoint is corrupt"
            )

    def _safe_header(self, f: Path) -> dict[str, StoredTensor]:
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

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a tied lm_head reads the embedding)."""
        src = self.logical_source(name)
        if src not in self._file_of:
            raise RejuvError(f"{self.role} checkpoint {self.path} has no tensor {name}")
        f = self._file_of[src]
        if self.is_pickle:
            return self._pickle_state(f)[src]
        if f not in self._handles:
            self._handles[f] = open(f, "rb")
        return read_tensor(self._handles[f], self._stored[src])

    def check_finite(self, name: str, tensor: torch.Tensor) -> None:
        """Raise naming this checkpoint if `tensor` (read from it as `name`) holds NaN/Inf."""
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise RejuvError(
                f"{self.role} checkpoint {self.path}: tensor {self.logical_source(name)} holds {bad} NaN/Inf "
                "values; repair or replace this checkpoint before rejuvenating it"
            )

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        self._pickle_cache.clear()

    def __enter__(self) -> Checkpoint:
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
