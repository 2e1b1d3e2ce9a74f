"""Weight sync over a process group (issue 15 item 1): bucket plan / pack / unpack identities, the
checksum, the hf receiver over a real gloo group, the learner's update norm on its device, and on
Ray: collective and object_store give bit-identical rollout weights, a killed rollout actor
rejoins the group and gets the current weights. (The RL run's log-prob check after every sync,
collective by default, is tests/test_rl.py; the vLLM backend's is tests/test_vllm_backend.py.)"""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from rayrejuv.method.buckets import (
    BucketPlan,
    TensorSpec,
    checksum,
    flat_layout,
    packed,
    plan_buckets,
    spec_of,
    unpacked,
    views,
)

ODD = {  # fp32 / bf16 mix, odd sizes, one tensor larger than a bucket, an empty one
    "a": torch.randn(3, 5),
    "big": torch.randn(45, generator=torch.Generator().manual_seed(1)),
    "c": torch.randn(7),
    "empty": torch.zeros(0, 4),
    "d": torch.randn(1),
    "e": torch.randn(2, 9),
}
SENT_AS = {"a": torch.float32, "big": torch.bfloat16, "c": torch.bfloat16, "empty": torch.float32,
           "d": torch.float32, "e": torch.bfloat16}


def _odd_plan(bucket_bytes=64, align=16) -> BucketPlan:
    return plan_buckets([spec_of(k, v, SENT_AS[k]) for k, v in ODD.items()], bucket_bytes, align)


def _roundtrip(plan: BucketPlan, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pack into one reused buffer, 'send' a copy of each bucket, unpack on the other side."""
    buffer = torch.zeros(plan.max_bytes, dtype=torch.uint8)
    received = [(b, buf.clone()) for b, buf in packed(plan, tensors, [buffer])]
    return {k: v.clone() for k, v in unpacked(plan, received)}


def test_bucket_plan_covers_every_tensor_once_in_aligned_buckets():
    plan = _odd_plan()
    assert [s.name for s in plan.specs] == list(ODD)
    for b in plan.buckets:
        assert 0 < b.nbytes <= 64
        ends = [p.at + p.numel * plan.specs[p.tensor].itemsize for p in b.pieces]
        assert all(p.at % 16 == 0 for p in b.pieces) and ends[-1] == b.nbytes
        assert all(end <= nxt.at for end, nxt in zip(ends, b.pieces[1:]))  # no overlap
    for i, s in enumerate(plan.specs):
        ranges = [(p.first, p.stop) for _, p in plan.pieces_of[i]]
        assert ranges[0][0] == 0 and ranges[-1][1] == s.numel
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
        if s.nbytes <= 64:  # a tensor that fits a bucket is never split
            assert len(ranges) == 1, s
    assert len(plan.pieces_of[1]) == 2  # big: 90 bytes of bf16 over two buckets
    assert sum(s.nbytes for s in plan.specs) == 60 + 90 + 14 + 0 + 4 + 36
    assert BucketPlan.from_wire(plan.to_wire()) == plan


@pytest.mark.parametrize("bucket_bytes, align", [(64, 16), (48, 8), (1 << 20, 256)])
def test_pack_then_unpack_gives_the_cast_tensors_bit_for_bit(bucket_bytes, align):
    plan = _odd_plan(bucket_bytes, align)
    got = _roundtrip(plan, list(ODD.values()))
    assert list(got) == list(ODD)
    for k, v in ODD.items():
        want = v.to(SENT_AS[k])
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and torch.equal(got[k], want), k
    if bucket_bytes == 1 << 20:
        assert len(plan.buckets) == 1


def test_views_copy_into_flat_targets_and_a_source_in_the_wrong_shape_is_refused():
    plan = _odd_plan()
    buffer = torch.zeros(plan.max_bytes, dtype=torch.uint8)
    targets = [torch.full((s.numel,), -1.0, dtype=s.torch_dtype) for s in plan.specs]
    for b, buf in packed(plan, list(ODD.values()), [buffer]):
        for p, view in views(plan, b, buf):
            targets[p.tensor][p.first : p.stop].copy_(view)
    for (k, v), t in zip(ODD.items(), targets):
        assert torch.equal(t.view(v.shape), v.to(SENT_AS[k])), k
    bad = list(ODD.values())
    bad[2] = torch.randn(8)
    with pytest.raises(ValueError, match="c: shape"):
        list(packed(plan, bad, [buffer]))


@pytest.mark.parametrize("bucket_bytes, align", [(64, 16), (48, 8)])
def test_buckets_received_back_to_back_in_the_flat_layout_hold_every_tensor_in_one_run(bucket_bytes, align):
    """The hf receiver's layout: buckets land in their regions of one buffer and each tensor, split
    or not, is then one contiguous run of it (what its parameter is a view of)."""
    plan = _odd_plan(bucket_bytes, align)
    starts, offsets, total = flat_layout(plan)
    flat = torch.zeros(total, dtype=torch.uint8)
    buffer = torch.zeros(plan.max_bytes, dtype=torch.uint8)
    for b, buf in packed(plan, list(ODD.values()), [buffer]):
        flat[starts[b] : starts[b] + len(buf)].copy_(buf)
    assert all(o % align == 0 for o in offsets) and total <= sum(_ceil(b.nbytes, align) for b in plan.buckets)
    for s, at, (k, v) in zip(plan.specs, offsets, ODD.items()):
        assert torch.equal(flat[at : at + s.nbytes].view(s.torch_dtype).view(s.shape), v.to(SENT_AS[k])), k


def _ceil(n: int, align: int) -> int:
    return -(-n // align) * align


def test_a_real_models_weights_with_a_bucket_smaller_than_its_largest_tensor(tokenizer):
    from rayrejuv.distributed.weight_sync import WeightSource
    from rayrejuv.testbed.tiny import build_model, tiny_config

    model = build_model(tiny_config("llama", len(tokenizer), tie_word_embeddings=True), seed=0)
    source = WeightSource.of(model.state_dict())
    names = [k for k, _ in model.named_parameters()]
    assert list(source.shapes) == names and "lm_head.weight" not in source.shapes  # tied: sent once
    assert source.aliases == {"lm_head.weight": "model.embed_tokens.weight"}  # and named (vLLM loads both)
    largest = max(p.numel() for p in model.parameters()) * 2
    plan = plan_buckets(source.specs(torch.bfloat16), bucket_bytes=largest // 3)
    assert max(len(v) for v in plan.pieces_of.values()) >= 3
    got = _roundtrip(plan, [t for _, t in source.walk()])
    assert all(torch.equal(got[k], p.detach().to(torch.bfloat16)) for k, p in model.named_parameters())


def test_object_store_weights_pickle_a_tied_alias_as_a_name():
    import pickle

    from rayrejuv.distributed.rollout_group import SharedWeights

    emb = torch.randn(6, 4)
    buffers = []
    data = pickle.dumps(SharedWeights({"embed.weight": emb, "w": torch.randn(3), "lm_head.weight": emb}),
                        protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2
    out = pickle.loads(data, buffers=buffers)
    assert list(out) == ["embed.weight", "w", "lm_head.weight"] and torch.equal(out["lm_head.weight"], emb)
    assert out["lm_head.weight"].data_ptr() == out["embed.weight"].data_ptr()


def test_checksum_is_exact_for_equal_bytes_and_sees_changes():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 33, generator=g).to(torch.bfloat16)  # 4224 bytes: not a multiple of CHUNKS words
    raw = torch.zeros(t.numel() * 2 + 2, dtype=torch.uint8)
    raw[2:].copy_(t.view(-1).view(torch.uint8))
    at_odd_offset = raw[2:].view(torch.bfloat16).view(t.shape)  # storage offset 2 bytes
    assert checksum(t) == checksum(t.clone()) == checksum(at_odd_offset)
    assert checksum(t.t().contiguous().t()) == checksum(t)  # the same values, however strided
    flipped = t.clone()
    flipped.view(-1).view(torch.int16)[1000] ^= 1  # one bit
    assert checksum(flipped)[0] != checksum(t)[0]
    swapped = torch.cat([t[32:], t[:32]])  # the same words, two halves out of place
    assert checksum(swapped)[0] == checksum(t)[0] and checksum(swapped)[1] != checksum(t)[1]
    tail = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)  # 6 bytes: no whole word
    assert checksum(tail) != checksum(torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16))
    assert checksum(torch.zeros(0)) == (0, 0)


def _hf_worker(tokenizer, tmp_path, tie: bool, dtype: str):
    """An hf rollout worker in this process (its sync methods are the actor's)."""
    from rayrejuv.distributed.rollout import HFRolloutWorker
    from rayrejuv.testbed.tiny import build_model, save, tiny_config

    model = build_model(tiny_config("qwen3", len(tokenizer), tie_word_embeddings=tie), seed=0)
    save(model, tokenizer, tmp_path / "start")
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    worker = HFRolloutWorker(str(tmp_path / "start"), {"dtype": dtype}, threads=2)
    return worker, new


def _sync_in_threads(worker, source, dtype, bucket_bytes):
    """Rank 0 (this thread) sends `source` to `worker` (rank 1, another thread) over a gloo group."""
    from rayrejuv.distributed.weight_sync import TIMEOUT, Rendezvous, SyncGroup, send

    plan = plan_buckets(source.specs(dtype), bucket_bytes)
    store = torch.distributed.TCPStore("127.0.0.1", 0, None, True, TIMEOUT, wait_for_workers=False)
    rdv = Rendezvous("127.0.0.1", store.port, 2, 0, "gloo", plan.to_wire(), source.aliases)
    out = {}

    def member():
        worker.join_sync(rdv.to_wire(), 1)
        out["got"] = worker.receive_sync(version=1)

    thread = threading.Thread(target=member)
    thread.start()
    group = SyncGroup(rdv, 0, store)
    sent = send(group, plan, source.walk(), torch.device("cpu"))
    thread.join()
    return plan, sent, out["got"]


@pytest.mark.parametrize("tie, dtype", [(True, "bfloat16"), (False, "float32")])
def test_hf_receiver_copies_the_buckets_into_its_parameters(tokenizer, tmp_path, tie, dtype):
    from rayrejuv.distributed.weight_sync import WeightSource, check_checksums

    worker, new = _hf_worker(tokenizer, tmp_path, tie, dtype)
    source = WeightSource.of(new.state_dict())
    largest = max(p.numel() for p in new.parameters()) * getattr(torch, dtype).itemsize
    plan, sent, got = _sync_in_threads(worker, source, getattr(torch, dtype), largest // 2)
    assert any(len(v) > 1 for v in plan.pieces_of.values())  # some tensor came in pieces
    check_checksums(sent, got, ["the worker"])
    assert worker.version == 1
    flat = worker._layout[1]
    for k, p in worker.model.named_parameters():
        assert p.untyped_storage().data_ptr() == flat.data_ptr()  # the buckets landed in the parameters
        assert torch.equal(p.detach(), new.state_dict()[k].to(p.dtype)), k
    if tie:
        assert worker.model.lm_head.weight is worker.model.model.embed_tokens.weight


def test_a_corrupted_receive_is_a_checksum_error_naming_the_tensor(tokenizer, tmp_path, monkeypatch):
    from rayrejuv.distributed.weight_sync import Receiver, WeightSource, WeightSyncError, check_checksums

    worker, new = _hf_worker(tokenizer, tmp_path, False, "float32")
    clean = Receiver.buckets

    def corrupting(self, into=None):
        for b, buf in clean(self, into):
            for piece in self.plan.buckets[b].pieces:
                if self.plan.specs[piece.tensor].name == "model.layers.1.mlp.up_proj.weight":
                    buf[piece.at + 5] ^= 1  # one bit of one value flipped on the way in
            yield b, buf

    monkeypatch.setattr(Receiver, "buckets", corrupting)
    source = WeightSource.of(new.state_dict())
    _, sent, got = _sync_in_threads(worker, source, torch.float32, 1 << 20)
    with pytest.raises(WeightSyncError, match=r"rollout actor 0 .*1 tensor\(s\) differ, first "
                                              r"'model.layers.1.mlp.up_proj.weight'"):
        check_checksums(sent, got, ["rollout actor 0 (member 0 of 1)"])


def test_update_norm_on_the_device_equals_the_norm_of_the_weight_change(make_pair):
    """The learner keeps the previous values on its device (no CPU copy): policy/update_norm is
    ||new - old|| over the updated parameters, with several optimizer steps per update."""
    from test_rl_parts import _rollout
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner

    _, sft = make_pair("qwen3", tie_sft=True)
    batch = _rollout(8, 4, 6, 3)
    batch.advantages = torch.randn(8, generator=torch.Generator().manual_seed(1))
    learner = Learner(AutoModelForCausalLM.from_pretrained(sft), GRPOConfig(micro_batch_size=4, beta=0.0, lr=1e-2,
                      minibatches=2, updates_per_batch=2), LearnerConfig(), torch.device("cpu"))
    source = learner.weight_source(1 << 20)
    assert list(source.shapes) == [k for k, _ in learner.module.named_parameters()] and not source.collective
    assert source.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    for _ in range(2):
        before = learner.weights()
        norm = learner.update(batch)["policy/update_norm"]
        after = learner.weights()
        want = sum(float((after[k].double() - before[k].double()).pow(2).sum()) for k in before) ** 0.5
        assert want > 1e-3 and norm == pytest.approx(want, rel=1e-6)
        walked = dict(source.walk())
        assert all(torch.equal(walked[k], after[k]) for k in after)


# --- on Ray: the rollout group -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _actor_weights(actor) -> dict[str, torch.Tensor]:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda w: {k: p.detach().clone() for k, p in w.model.named_parameters()}))


def test_collective_and_object_store_give_bit_identical_weights_and_a_killed_actor_rejoins(
    ray_session, tokenizer, tmp_path
):
    """Two hf actors, the same fp32 weights sent in bf16 over the collective path and over the object
    store: the actors hold exactly the sender's cast either way. Then one actor is killed (Ray
    restarts it from the start checkpoint): the next generate notices (the call fails, or the
    restarted actor answers with policy version 0), the group is rebuilt with both actors, the
    current weights re-sent, and the redone rollout is the one it would have been."""
    import ray

    from rayrejuv.config.rl import RolloutConfig
    from rayrejuv.data.chat import encode_prompts
    from rayrejuv.distributed.rollout_group import ObjectStoreSync, RolloutGroup
    from rayrejuv.distributed.weight_sync import WeightSource
    from rayrejuv.models.rollout import Sampling
    from rayrejuv.testbed.tiny import build_model, perturb, save, tiny_config

    # 4.7 MB in bf16: several 1 MB buckets, each MLP weight (1.2 MB) split over two
    cfg = tiny_config("llama", len(tokenizer), hidden_size=256, intermediate_size=2304, tie_word_embeddings=True)
    model = build_model(cfg, seed=0, init_std=0.1)
    save(model, tokenizer, tmp_path / "start")
    new = perturb(copy.deepcopy(model), seed=7, scale=0.3)
    want = {k: p.detach().to(torch.bfloat16) for k, p in new.named_parameters()}
    start = {k: p.detach().to(torch.bfloat16) for k, p in model.named_parameters()}

    def all_hold(weights) -> bool:
        return all(all(torch.equal(h[k], weights[k]) for k in weights) and h.keys() == weights.keys()
                   for h in map(_actor_weights, group.actors))

    rollout = RolloutConfig(workers=2, dtype="bfloat16", cpus_per_worker=1, sync_bucket_mb=1)
    group = RolloutGroup(str(tmp_path / "start"), rollout, 0)  # rollout.sync: collective (the default)
    store = ObjectStoreSync(group.actors, group.info, rollout)  # the fallback, on the same actors
    try:
        m = group.sync(new.state_dict(), version=1)
        assert m["sync/checksum_ok"] == 1.0 and m["sync/buckets"] >= 5 and all_hold(want)
        assert store.sync(WeightSource.of(model.state_dict()), 2)["sync/checksum_ok"] == 1.0 and all_hold(start)
        assert store.sync(WeightSource.of(new.state_dict()), 3)["sync/checksum_ok"] == 1.0 and all_hold(want)
        assert group.sync(new.state_dict(), version=4)["sync/checksum_ok"] == 1.0 and all_hold(want)

        prompts = encode_prompts(tokenizer, ["1+2=", "33*4=", "7-5=", "(9+1)/2="], "auto")
        s = Sampling(n=2, temperature=1.0, max_new_tokens=8, seed=3)
        first = group.generate(prompts, s, pad_id=tokenizer.pad_token_id)
        assert group.restarts == 0 and first.version == 4
        ray.kill(group.actors[1], no_restart=False)
        again = group.generate(prompts, s, pad_id=tokenizer.pad_token_id)  # its share is redone
        assert group.restarts == 1 and group.versions() == [4, 4] and again.version == 4
        assert all_hold(want)  # the restarted actor got the current weights, not the start's
        assert torch.equal(again.completion_ids, first.completion_ids) and torch.equal(again.logprobs, first.logprobs)
        assert group.sync(model.state_dict(), version=5)["sync/checksum_ok"] == 1.0 and all_hold(start)  # rebuilt
    finally:
        group.shutdown()


def test_spec_dtype_names_round_trip():
    s = TensorSpec("w", (2, 3), "bfloat16")
    assert s.torch_dtype is torch.bfloat16 and s.nbytes == 12
    assert spec_of("w", torch.zeros(2, 3, dtype=torch.bfloat16)) == s


ZERO3 = """
import sys
import torch
sys.path.insert(0, {tests!r})
torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
import deepspeed
initialize = deepspeed.initialize
def partition_everything(**kw):  # ZeRO-3 keeps parameters under 1e5 elements whole by default
    kw["config"]["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return initialize(**kw)
deepspeed.initialize = partition_everything
from test_rl_memory import _batch, _learner
norms, walked = {{}}, {{}}
for engine in ("ddp", "deepspeed"):
    learner = _learner({model!r}, engine=engine, zero_stage=3)
    norms[engine] = [learner.update(_batch(6, 4, 7, 60, seed=s))["policy/update_norm"] for s in (0, 1)]
    source = learner.weight_source(8 << 10)  # 8 KB: gathered a few parameters at a time
    walked[engine] = {{k: v.clone() for k, v in source.walk()}}
    if engine == "deepspeed":
        assert learner.module.get_output_embeddings().weight.numel() == 0  # partitioned again after the walk
        assert source.transient and not source.collective and list(source.shapes) == list(walked["ddp"])
        assert all(tuple(v.shape) == source.shapes[k] for k, v in walked[engine].items())
print(max(abs(a - b) / a for a, b in zip(norms["ddp"], norms["deepspeed"])))
print(max(float((walked["ddp"][k] - walked["deepspeed"][k]).abs().max()) for k in walked["ddp"]))
"""


@pytest.mark.slow  # ~40 s: DeepSpeed in a process of its own
def test_zero3_walks_the_weights_gathered_bucket_by_bucket_and_its_update_norm_is_ddps(make_pair):
    """Under ZeRO-3 every parameter is partitioned: the sync's walk gathers a few at a time (and
    partitions them again), the update norm sums this rank's partitions; both equal DDP's."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    _, sft = make_pair("qwen3", tie_sft=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ZERO3.format(tests=str(Path(__file__).parent), port=port, model=str(sft))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    norm_rel, weight_diff = map(float, out.stdout.strip().splitlines()[-2:])
    assert norm_rel < 1e-4 and weight_diff < 2e-5, (norm_rel, weight_diff)


def test_vllm_extension_streams_the_buckets_into_reload_weights_with_tied_aliases(tokenizer):
    """The worker extension on a fake vLLM worker (no vLLM needed): the tensors reach reload_weights
    in plan order as they arrive, a tied alias right after the tensor it shares (vLLM's layerwise
    reload would give a layer that loads nothing its old values back), checksums of what arrived."""
    from rayrejuv.distributed.vllm_ext import WeightSync
    from rayrejuv.distributed.weight_sync import TIMEOUT, Rendezvous, SyncGroup, WeightSource, check_checksums, send
    from rayrejuv.testbed.tiny import build_model, tiny_config

    model = build_model(tiny_config("llama", len(tokenizer), tie_word_embeddings=True), seed=0)
    source = WeightSource.of(model.state_dict())
    plan = plan_buckets(source.specs(torch.bfloat16), 16 << 10)  # 16 KB: the embedding comes in pieces
    loaded = []

    class Worker(WeightSync):
        rank, device = 0, torch.device("cpu")

        def reload_weights(self, weights_iterator, is_checkpoint_format):
            loaded.extend((k, v.clone()) for k, v in weights_iterator)

    store = torch.distributed.TCPStore("127.0.0.1", 0, None, True, TIMEOUT, wait_for_workers=False)
    rdv = Rendezvous("127.0.0.1", store.port, 2, 0, "gloo", plan.to_wire(), source.aliases)
    worker, out = Worker(), {}

    def member():
        worker.rayrejuv_join(rdv.to_wire(), 1)
        out["sums"] = worker.rayrejuv_receive()

    thread = threading.Thread(target=member)
    thread.start()
    sent = send(SyncGroup(rdv, 0, store), plan, source.walk(), torch.device("cpu"))
    thread.join()
    check_checksums(sent, [out["sums"]], ["vLLM worker 0"])
    names = [k for k, _ in loaded]
    assert names[:2] == ["model.embed_tokens.weight", "lm_head.weight"] and names[2:] == list(source.shapes)[1:]
    state = model.state_dict()
    assert all(torch.equal(v, state[k].to(torch.bfloat16)) for k, v in loaded)


class _FakeLLM:
    """vllm.LLM's sleep / wake / RPC surface, recording the calls."""

    def __init__(self):
        self.calls = []

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def collective_rpc(self, method, args=()):
        self.calls.append(("rpc", method))
        return [{"w": [1, 2]}]  # vLLM's RPC turns tuples into lists

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache", None))


@pytest.mark.parametrize("level", [1, 2])
def test_vllm_sleep_level_and_a_sync_wakes_the_weights_before_loading_and_the_kv_cache_after(level):
    from rayrejuv.config.rl import RolloutConfig
    from rayrejuv.distributed.vllm_rollout import VLLMRolloutWorker

    worker = object.__new__(VLLMRolloutWorker)  # no engine: the calls it makes are what is tested
    worker.cfg = RolloutConfig(backend="vllm", device="cuda", vllm={"enable_sleep_mode": True, "sleep_level": level})
    worker.llm, worker.members, worker.version = _FakeLLM(), 1, 0
    worker.sleep()
    assert worker.receive_sync(version=5) == [{"w": (1, 2)}] and worker.policy_version() == 5
    assert worker.llm.calls == [("sleep", level), ("wake_up", ["weights"]), ("rpc", "rayrejuv_receive"),
                                ("wake_up", ["kv_cache"]), ("reset_prefix_cache", None)]
    worker.cfg = RolloutConfig(backend="vllm")  # sleep mode off: no sleep, no wake
    worker.llm = _FakeLLM()
    worker.sleep()
    worker.receive_sync(version=6)
    assert worker.llm.calls == [("rpc", "rayrejuv_receive"), ("reset_prefix_cache", None)]


def test_the_group_uses_nccl_only_when_every_rank_holds_a_gpu_of_its_own():
    from rayrejuv.distributed.weight_sync import group_backend

    assert group_backend("GPU-a", ["GPU-b", "GPU-c"]) == "nccl"  # separate placement on 3 GPUs
    # colocated: rollout engine 0 on the learner's GPU; NCCL would fail with "Duplicate GPU detected"
    assert group_backend("GPU-a", ["GPU-a", "GPU-b"]) == "gloo"
    assert group_backend("GPU-a", ["GPU-b", "GPU-b"]) == "gloo"  # two engines sharing one GPU
    assert group_backend(None, ["GPU-a"]) == "gloo"  # a CPU learner
    assert group_backend("GPU-a", [None]) == "gloo"  # an hf actor on CPU
    assert group_backend(None, [None, None]) == "gloo"
