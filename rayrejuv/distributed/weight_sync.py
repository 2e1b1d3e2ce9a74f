"""Weight sync over a process group: learner rank 0 broadcasts the weights bucket by bucket to every
rollout engine (rollout.sync = collective).

    rank 0 (learner, in RolloutGroup)                ranks 1..n (an hf actor; each vLLM TP worker)
    store = TCPStore(node ip, free port)
    Rendezvous(host, port, world, generation, plan) ->   Receiver(rendezvous, rank)
    SyncGroup(rendezvous, 0, store)                      (both: a PrefixStore per generation + gloo/NCCL)
    send(group, plan, weights): cast, pack, broadcast -> for each bucket: broadcast into a buffer,
    compare checksums                              <-      copy / load_weights it, checksum the result

The group is not torch.distributed's default group (the learner ranks have theirs from Ray Train and
vLLM's workers theirs): it is built directly from a store, used through the backend object, and
rebuilt under a new store prefix (generation) whenever a member restarts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import torch

from rayrejuv.method.buckets import BucketPlan, TensorSpec, checksum, mismatches, packed, views

TIMEOUT = timedelta(minutes=10)  # a rendezvous or a broadcast that waits longer has lost a member

Checksums = dict[str, tuple[int, int]]


class WeightSyncError(RuntimeError):
    """A rollout engine does not hold the weights the learner sent."""


def local_ip(towards: str) -> str:
    """This host's address on the route to `towards` (no packet is sent: a UDP socket's connect
    only picks the interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((towards, 1))
        return s.getsockname()[0]


def _gloo(store, rank: int, world: int, ip: str):
    opts = torch.distributed.ProcessGroupGloo._Options()
    opts._devices = [torch.distributed.ProcessGroupGloo.create_device(hostname=ip)]  # bind where rank 0 reaches us
    opts._timeout = TIMEOUT
    return torch.distributed.ProcessGroupGloo(store, rank, world, opts)


def _nccl(store, rank: int, world: int, ip: str):
    from torch.distributed import ProcessGroupNCCL  # absent from CPU builds of torch

    opts = ProcessGroupNCCL.Options()
    opts._timeout = TIMEOUT
    return ProcessGroupNCCL(store, rank, world, opts)


BACKENDS: dict[str, Callable] = {"gloo": _gloo, "nccl": _nccl}


def gpu_uuid(device: torch.device) -> str | None:
    """The physical GPU behind `device` (None off CUDA): the same across processes, whatever each
    one's CUDA_VISIBLE_DEVICES numbers it."""
    return str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None


def group_backend(sender_gpu: str | None, member_gpus: list[str | None]) -> str:
    """NCCL when the sender and every member hold a GPU of their own; else gloo. NCCL refuses two
    ranks of one communicator on one GPU ("Duplicate GPU detected": colocated placement, or
    fractional GPU shares on one card), so members sharing a GPU go through gloo on the host."""
    gpus = [sender_gpu, *member_gpus]
    return "nccl" if None not in gpus and len(set(gpus)) == len(gpus) else "gloo"
BUFFER_DEVICE = {"gloo": lambda device: torch.device("cpu"), "nccl": lambda device: device}  # where buckets live


@dataclass(frozen=True)
class Rendezvous:
    """What every member needs to join (plain values: it travels through Ray and vLLM's RPC)."""

    host: str  # rank 0's node
    port: int  # its TCPStore
    world: int  # 1 + every receiving member
    generation: int  # the store prefix of this build of the group
    backend: str  # gloo | nccl
    plan: dict  # BucketPlan.to_wire()
    aliases: dict  # tied names not sent -> the sent name they share (vLLM's loader wants both)

    def to_wire(self) -> dict:
        return asdict(self)


class SyncGroup:
    """A stateless process group (no torch.distributed.init_process_group): rank 0 owns the store."""

    def __init__(self, rdv: Rendezvous, rank: int, store=None):
        if store is None:
            store = torch.distributed.TCPStore(rdv.host, rdv.port, None, False, TIMEOUT, wait_for_workers=False)
        ip = rdv.host if rank == 0 else local_ip(rdv.host)
        prefixed = torch.distributed.PrefixStore(f"rayrejuv-sync/{rdv.generation}", store)
        self.pg = BACKENDS[rdv.backend](prefixed, rank, rdv.world, ip)
        self.rank, self.store = rank, store

    def broadcast(self, t: torch.Tensor):
        """Start broadcasting `t` from rank 0 into every member's `t` (same size and dtype); returns
        the work to wait() on (gloo moves the bytes in its own threads, NCCL on its stream)."""
        opts = torch.distributed.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([t], opts)


@dataclass
class WeightSource:
    """What a sync needs of the learner: the parameters' names and full shapes (send order), and a
    walk over them (each call walks again)."""

    shapes: dict[str, tuple[int, ...]]
    walk: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    device: torch.device  # where the walked tensors live
    transient: bool = False  # a walked tensor is valid only until the walk moves on (ZeRO-3 gathers)
    collective: bool = False  # the walk is a collective of every learner rank: rank 0 cannot walk it alone
    aliases: dict[str, str] = field(default_factory=dict)  # tied name not walked -> the walked name it shares

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> WeightSource:
        """A state dict's tensors, each storage once (tied embeddings alias lm_head to embed_tokens:
        sent once; the alias is named in `aliases`)."""
        unique, first, aliases = {}, {}, {}
        for k, v in state_dict.items():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype)
            if key in first:
                aliases[k] = first[key]
            else:
                first[key] = k
                unique[k] = v.detach()
        device = next(iter(unique.values())).device
        return cls({k: tuple(v.shape) for k, v in unique.items()}, lambda: iter(unique.items()), device,
                   aliases=aliases)

    def specs(self, dtype: torch.dtype) -> list[TensorSpec]:
        return [TensorSpec(k, shape, str(dtype).removeprefix("torch.")) for k, shape in self.shapes.items()]


def _in_order(plan: BucketPlan, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[torch.Tensor]:
    for spec, (name, t) in zip(plan.specs, weights, strict=True):
        if name != spec.name:
            raise WeightSyncError(f"the learner walked {name!r} where the sync plan has {spec.name!r}")
        yield t


def send(group: SyncGroup, plan: BucketPlan, weights: Iterable[tuple[str, torch.Tensor]],
         device: torch.device) -> Checksums:
    """Rank 0: cast each tensor into a bucket buffer (on `device`), broadcast each full bucket;
    the checksums of what was sent. Two buffers: bucket b is packed and checksummed while b-1 is
    on the wire. A tensor split over buckets is checksummed from its own cast."""
    sizes = [max((b.nbytes for b in plan.buckets[i::2]), default=0) for i in range(2)]  # even / odd buckets
    buffers = [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes]
    sums: Checksums = {}
    in_flight = None

    def checked(tensors: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for i, t in enumerate(tensors):
            s = plan.specs[i]
            if len(plan.pieces_of[i]) > 1:
                sums[s.name] = checksum(t.to(s.torch_dtype))
            yield t

    for b, buf in packed(plan, checked(_in_order(plan, weights)), buffers):
        work = group.broadcast(buf)
        for p, view in views(plan, b, buf):  # read while the bytes go out
            s = plan.specs[p.tensor]
            if p.numel == s.numel:
                sums[s.name] = checksum(view)
        if in_flight is not None:
            in_flight.wait()  # bucket b-1 is out: its buffer is packed next
        in_flight = work
    if in_flight is not None:
        in_flight.wait()
    return sums


class Receiver:
    """A member's side of the group: it joins at construction and receives buckets on demand."""

    def __init__(self, rendezvous: dict, rank: int, device: torch.device):
        rdv = Rendezvous(**rendezvous)
        self.plan = BucketPlan.from_wire(rdv.plan)
        self.aliases = rdv.aliases
        self.device = BUFFER_DEVICE[rdv.backend](device)
        self.group = SyncGroup(rdv, rank)

    def buckets(self, into: Callable[[int], torch.Tensor] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(bucket index, its bytes) as each arrives; bucket b+1 is already arriving while the
        consumer reads bucket b. into(b): the bucket's nbytes-long landing place (the hf worker: its
        parameters' own memory), free when the consumer asks for bucket b; by default a new buffer
        per bucket (vLLM's layerwise reload keeps a layer's tensors until the layer is complete)."""
        n = len(self.plan.buckets)
        land = into or (lambda b: torch.empty(self.plan.buckets[b].nbytes, dtype=torch.uint8, device=self.device))
        arriving = land(0) if n else None
        work = self.group.broadcast(arriving) if n else None
        for b in range(n):
            ready = arriving
            work.wait()
            if b + 1 < n:
                arriving = land(b + 1)
                work = self.group.broadcast(arriving)
            yield b, ready


def check_checksums(sent: Checksums, got: list[Checksums], members: list[str]) -> None:
    """Every member's checksums equal the sent ones, or an error naming the member and tensors."""
    for who, theirs in zip(members, got, strict=True):
        wrong = mismatches(sent, theirs)
        if wrong:
            first = wrong[0]
            raise WeightSyncError(
                f"weight sync: {who} does not hold the weights the learner sent: {len(wrong)} tensor(s) differ, "
                f"first {first!r} (checksum {theirs.get(first)}, sent {sent.get(first)}); all: {wrong[:8]}"
            )
