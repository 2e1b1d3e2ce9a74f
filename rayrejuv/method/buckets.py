"""Weights as flat byte buckets, for a broadcast bucket by bucket: plan, pack, unpack, checksum.

    plan = plan_buckets(specs, bucket_bytes)      specs: (name, shape, dtype) in send order
    for b, buf in packed(plan, tensors, buffers): sender: cast-and-copy into a buffer, one bucket at a time
        send(buf)
    for piece, view in views(plan, b, buf):       receiver: views of the bucket, one per tensor piece

A tensor that fits in a bucket is never split (a new bucket starts instead); a larger one fills the
current bucket and continues in the next ones. Pieces start at byte offsets aligned to ALIGN, so a
view of any dtype can be taken at them. Pure tensor functions: no process group, no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

ALIGN = 256  # bytes: every piece starts at a multiple (any dtype's view; CUDA's vectorised copies)
CHUNKS = 64  # slices of a tensor that the checksum weights by position


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype without its prefix: "bfloat16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return self.torch_dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class Piece:
    tensor: int  # index into the plan's specs
    first: int  # the piece is elements [first, stop) of the flattened tensor
    stop: int
    at: int  # byte offset of the piece in its bucket

    @property
    def numel(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True)
class Bucket:
    nbytes: int  # bytes that travel (the end of the last piece)
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class BucketPlan:
    specs: tuple[TensorSpec, ...]
    buckets: tuple[Bucket, ...]
    align: int  # piece offsets (and a split bucket's size) are multiples of it
    # spec index -> [(bucket index, piece)], in order (derived)
    pieces_of: dict[int, list[tuple[int, Piece]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        pieces: dict[int, list[tuple[int, Piece]]] = {i: [] for i in range(len(self.specs))}
        for b, bucket in enumerate(self.buckets):
            for p in bucket.pieces:
                pieces[p.tensor].append((b, p))
        object.__setattr__(self, "pieces_of", pieces)

    @property
    def max_bytes(self) -> int:
        """Size of a buffer that holds any bucket."""
        return max((b.nbytes for b in self.buckets), default=0)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def to_wire(self) -> dict:
        """Plain lists and strings (travel through Ray and vLLM's RPC, which takes no dataclasses)."""
        return {
            "specs": [[s.name, list(s.shape), s.dtype] for s in self.specs],
            "buckets": [[b.nbytes, [[p.tensor, p.first, p.stop, p.at] for p in b.pieces]] for b in self.buckets],
            "align": self.align,
        }

    @classmethod
    def from_wire(cls, wire: dict) -> BucketPlan:
        specs = tuple(TensorSpec(n, tuple(shape), d) for n, shape, d in wire["specs"])
        buckets = tuple(Bucket(nbytes, tuple(Piece(*p) for p in pieces)) for nbytes, pieces in wire["buckets"])
        return cls(specs, buckets, wire["align"])


def spec_of(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> TensorSpec:
    """The spec of `t` as sent: its name and shape, in `dtype` (the receiver's) or its own."""
    return TensorSpec(name, tuple(t.shape), str(dtype or t.dtype).removeprefix("torch."))


def _aligned(n: int, align: int) -> int:
    return -(-n // align) * align


def plan_buckets(specs: Iterable[TensorSpec], bucket_bytes: int, align: int = ALIGN) -> BucketPlan:
    """Greedy, in order: each tensor goes into the current bucket if it fits; one that fits an
    empty bucket starts a new one; a larger one is split across buckets at element boundaries."""
    specs = tuple(specs)
    capacity = bucket_bytes - bucket_bytes % align
    if align % 8 or capacity <= 0:
        raise ValueError(f"bucket of {bucket_bytes} bytes with alignment {align}: need a multiple of 8, <= the bucket")
    buckets: list[Bucket] = []
    current: list[Piece] = []
    used = end = 0

    for i, s in enumerate(specs):
        if current and used + s.nbytes > capacity and s.nbytes <= capacity:
            buckets.append(Bucket(end, tuple(current)))
            current, used, end = [], 0, 0
        first = 0
        while True:
            room = (capacity - used) // s.itemsize
            if room == 0 and first < s.numel:  # full: the rest of the tensor goes on in the next bucket
                buckets.append(Bucket(end, tuple(current)))
                current, used, end = [], 0, 0
                continue
            take = min(s.numel - first, room)
            current.append(Piece(i, first, first + take, used))
            end = used + take * s.itemsize
            used, first = _aligned(end, align), first + take
            if first == s.numel:
                break
    if current:
        buckets.append(Bucket(end, tuple(current)))
    return BucketPlan(specs, tuple(buckets), align)


def flat_layout(plan: BucketPlan) -> tuple[list[int], list[int], int]:
    """The plan laid out in one flat buffer, each bucket one contiguous region (a bucket can be
    received in place) and each tensor one contiguous run: the buckets back to back at aligned
    starts, so a split tensor's pieces meet (the bucket it starts in is full to its end, a multiple
    of the alignment). Returns (each bucket's start, each tensor's start, total bytes)."""
    starts, end = [], 0
    for bucket in plan.buckets:
        starts.append(end)
        end = _aligned(end + bucket.nbytes, plan.align)
    first = [plan.pieces_of[i][0] for i in range(len(plan.specs))]
    return starts, [starts[b] + p.at for b, p in first], end


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1)


def piece_view(plan: BucketPlan, piece: Piece, buffer: torch.Tensor) -> torch.Tensor:
    """The piece's elements in a bucket's bytes (uint8 buffer): a flat view in the spec's dtype."""
    s = plan.specs[piece.tensor]
    return buffer[piece.at : piece.at + piece.numel * s.itemsize].view(s.torch_dtype)


def packed(
    plan: BucketPlan, tensors: Iterable[torch.Tensor], buffers: list[torch.Tensor]
) -> Iterator[tuple[int, torch.Tensor]]:
    """Copy `tensors` (the plan's, in its order, any dtype: cast by the copy) into bucket b's buffer,
    buffers[b % len(buffers)] (uint8, at least that bucket's nbytes), and yield (b, its bytes) as each
    bucket fills. When the caller asks for the next bucket, the buffer it will fill must be free
    again (with two buffers: bucket b-1 sent while b was being filled)."""
    count = 0
    for i, t in enumerate(tensors):
        s = plan.specs[i]
        if tuple(t.shape) != s.shape:
            raise ValueError(f"{s.name}: shape {tuple(t.shape)}, the plan has {s.shape}")
        flat = _flat(t)
        for b, p in plan.pieces_of[i]:
            buffer = buffers[b % len(buffers)]
            piece_view(plan, p, buffer).copy_(flat[p.first : p.stop])
            if p is plan.buckets[b].pieces[-1]:  # the bucket is full
                yield b, buffer[: plan.buckets[b].nbytes]
        count += 1
    if count != len(plan.specs):
        raise ValueError(f"{count} tensors for a plan of {len(plan.specs)}")


def views(plan: BucketPlan, b: int, buffer: torch.Tensor) -> Iterator[tuple[Piece, torch.Tensor]]:
    """Each piece of bucket `b` as a flat view of `buffer` (its bytes) in the piece's dtype."""
    for p in plan.buckets[b].pieces:
        yield p, piece_view(plan, p, buffer)


def unpacked(plan: BucketPlan, buckets: Iterable[tuple[int, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Whole tensors (name, tensor in the spec's shape) from received buckets, in plan order. A tensor
    inside one bucket is a view of it (valid until that buffer is reused); a split one is assembled
    into its own memory."""
    partial: dict[int, torch.Tensor] = {}
    for b, buffer in buckets:
        for p, view in views(plan, b, buffer):
            s = plan.specs[p.tensor]
            if p.first == 0 and p.stop == s.numel:
                yield s.name, view.view(s.shape)
                continue
            if p.first == 0:
                partial[p.tensor] = torch.empty(s.numel, dtype=s.torch_dtype, device=buffer.device)
            partial[p.tensor][p.first : p.stop].copy_(view)
            if p.stop == s.numel:
                yield s.name, partial.pop(p.tensor).view(s.shape)


def _words(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor's bytes as (int64 words, the < 8 trailing bytes as int64)."""
    b = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if b.storage_offset() % 8:  # a view at an odd offset cannot be read as int64: its own memory
        b = b.clone()
    n = b.numel() // 8 * 8
    return b[:n].view(torch.int64), b[n:].to(torch.int64)


def checksum(t: torch.Tensor) -> tuple[int, int]:
    """An exact fingerprint of a tensor's bytes: (S, W), S the sum of its 8-byte words and
    W = sum_k (k+1) S_k over CHUNKS consecutive slices, both modulo 2^64 (int64 additions wrap).
    Integer sums do not depend on the order of summation, so equal bytes give equal values on any
    device and thread count; a stale or garbled tensor changes S, slices out of place change W.
    One read of the tensor (~9 GB/s on one CPU thread)."""
    words, tail = _words(t)
    k = max(1, min(CHUNKS, words.numel()))
    n = words.numel() // k * k
    slices = words[:n].view(k, -1).sum(1) if n else torch.zeros(k, dtype=torch.int64, device=words.device)
    slices[-1] += words[n:].sum() + tail.sum()
    positions = torch.arange(1, k + 1, dtype=torch.int64, device=words.device)
    return int(slices.sum()), int((slices * positions).sum())


def mismatches(want: dict[str, tuple[int, int]], got: dict[str, tuple[int, int]]) -> list[str]:
    """Names whose checksums differ (or that one side lacks), in `want`'s order."""
    return [k for k in want if got.get(k) != want[k]] + [k for k in got if k not in want]
