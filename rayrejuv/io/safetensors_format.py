"""The safetensors container format, read and written without loading tensor data.

Layout: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data.
Writing the header first from a plan lets us stream each tensor's bytes as it is computed,
so a shard never has to sit in memory.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
ST_TO_DTYPE = {v: k for k, v in DTYPE_TO_ST.items()}
_ALIGN = 8


@dataclass(frozen=True)
class TensorMeta:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class StoredTensor:
    meta: TensorMeta
    offset: int  # absolute byte offset of the data in the file


def read_header(path: Path) -> dict[str, StoredTensor]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in ST_TO_DTYPE:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        meta = TensorMeta(ST_TO_DTYPE[info["dtype"]], tuple(info["shape"]))
        begin, end = info["data_offsets"]
        if end - begin != meta.nbytes:
            raise ValueError(f"{path}: tensor {name} spans {end - begin} bytes, its shape needs {meta.nbytes}")
        out[name] = StoredTensor(meta, 8 + n + begin)
    return out


def read_tensor(f, stored: StoredTensor) -> torch.Tensor:
    """Read one tensor with a positioned read into fresh memory (no mmap: the process keeps
    only the tensors it holds, whatever the checkpoint size)."""
    meta = stored.meta
    buf = torch.empty(meta.nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    got = os.preadv(f.fileno(), [view], stored.offset) if meta.nbytes else 0
    while got < meta.nbytes:  # preadv may return short reads on some filesystems
        n = os.preadv(f.fileno(), [view[got:]], stored.offset + got)
        if n == 0:
            raise ValueError(f"{f.name}: file ends inside a tensor; the checkpoint is truncated")
        got += n
    return buf.view(meta.dtype).reshape(meta.shape)


def encode_header(entries: list[tuple[str, TensorMeta]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, meta in entries:
        header[name] = {
            "dtype": DTYPE_TO_ST[meta.dtype],
            "shape": list(meta.shape),
            "data_offsets": [offset, offset + meta.nbytes],
        }
        offset += meta.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _ALIGN)  # data must start 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian raw bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype is torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")
