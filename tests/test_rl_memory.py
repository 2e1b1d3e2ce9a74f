"""RL memory that scales with the model (issue 14 item 7): sampling log-probs recorded step by step,
checkpoints in the start's dtype, rollout and reference actors in the checkpoint's dtype."""

import json

import pytest
import torch
from conftest import load_tensors


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_recorded_per_step_equal_generates_stacked_scores(make_pair, temperature):
    """sample() no longer keeps generate's T x (N, V) scores: the same tokens (same seed) and the
    same log-probs as log_softmax over the stacked scores, the pre-issue-14 computation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrejuv.data.chat import encode_prompts
    from rayrejuv.models.logprobs import sample
    from rayrejuv.models.rollout import left_pad

    _, sft = make_pair("qwen3")
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(sft)
    ids = encode_prompts(tok, ["Q: 3+4? A:", "Q: a box holds 12 eggs. how many? A:"], "auto")
    r = sample(model, tok, ids, n=3, temperature=temperature, max_new_tokens=12, seed=0)

    prompt, attn = left_pad(ids, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=attn, do_sample=True, temperature=temperature,
                             top_p=1.0, top_k=0, num_return_sequences=3, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, output_scores=True,
                             return_dict_in_generate=True)
    completion = out.sequences[:, prompt.shape[1]:]
    logits = torch.stack(out.scores, dim=1).float()  # (N, T, V)
    want = torch.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1) * r.completion_mask
    assert torch.equal(r.completion_ids, completion)
    torch.testing.assert_close(r.logprobs, want, rtol=0, atol=1e-7)


def _batch(n: int, P: int, T: int, vocab: int, seed: int):
    from rayrejuv.models.rollout import Rollout

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[0, T - 2 :] = 0
    return Rollout(
        prompt_ids=torch.randint(4, vocab, (n, P), generator=g),
        prompt_mask=torch.ones(n, P, dtype=torch.long),
        completion_ids=torch.randint(4, vocab, (n, T), generator=g),
        completion_mask=mask,
        logprobs=-torch.rand(n, T, generator=g) * mask,
        advantages=torch.randn(n, generator=g),
        ref_logprobs=-torch.rand(n, T, generator=g) * mask,
    )


def _learner(model_dir, **learner):
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    grpo = GRPOConfig(micro_batch_size=3, lr=1e-2, beta=0.05, logprob_chunk_size=5)
    return Learner(model, grpo, LearnerConfig(**learner), torch.device("cpu"))


def test_gradient_checkpointing_takes_the_same_step(make_pair):
    """The default learner (activations recomputed in the backward) moves the weights as one that
    keeps them, within float noise."""
    _, sft = make_pair("qwen3", tie_sft=True)
    batch = _batch(6, 4, 7, 60, seed=0)
    steps = {}
    for on in (False, True):
        learner = _learner(sft, gradient_checkpointing=on)
        stats = learner.update(batch)
        steps[on] = (stats, {k: v.clone() for k, v in learner.weights().items()})
    assert steps[True][0]["policy/update_norm"] > 1e-3
    for k, w in steps[False][1].items():
        torch.testing.assert_close(steps[True][1][k], w, rtol=0, atol=1e-6)


def test_bf16_start_saves_bf16_checkpoints_and_resumes_at_full_precision(make_pair, tokenizer, tmp_path):
    """learner.save_dtype bfloat16 (what `auto` resolves to for a bf16 start): model/ in bf16 (config
    too), loadable, equal to the learner's float32 weights cast; the float32 parameters beside it,
    so Learner.load continues from exactly the weights it saved."""
    from transformers import AutoModelForCausalLM

    _, sft = make_pair("llama", tie_sft=True, dtype=torch.bfloat16)
    learner = _learner(sft, save_dtype="bfloat16")
    learner.update(_batch(6, 4, 7, 60, seed=1))
    learner.save(tmp_path, tokenizer)
    weights = learner.weights()
    saved = load_tensors(tmp_path / "model")
    assert {str(v.dtype) for v in saved.values()} == {"torch.bfloat16"}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    for k, w in weights.items():
        assert w.dtype == torch.float32 and torch.equal(saved[k], w.to(torch.bfloat16)), k
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # the config's dtype
    assert loaded.dtype == torch.bfloat16 and loaded.config.tie_word_embeddings
    master = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(torch.equal(master[k], w) for k, w in weights.items())

    resumed = _learner(sft, save_dtype="bfloat16")
    resumed.load(tmp_path)
    assert all(torch.equal(resumed.weights()[k], w) for k, w in weights.items())
    assert all(torch.equal(p.detach(), weights[k]) for k, p in resumed.module.named_parameters())


def test_same_dtype_checkpoint_has_no_second_copy(make_pair, tokenizer, tmp_path):
    _, sft = make_pair("qwen3")
    learner = _learner(sft, save_dtype="float32")
    learner.save(tmp_path, tokenizer)
    assert not (tmp_path / "weights.pt").exists()
    saved = load_tensors(tmp_path / "model")
    assert all(torch.equal(saved[k], w) for k, w in learner.weights().items())


def test_auto_dtypes_resolve_to_the_start_checkpoint(make_pair, tmp_path):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import start_dtype
    from rayrejuv.io.checkpoint import Checkpoint

    _, bf16 = make_pair("qwen3", tie_sft=True, dtype=torch.bfloat16)
    base = {"model": bf16, "train_data": tmp_path / "t.jsonl", "out": tmp_path / "o"}
    with Checkpoint(bf16) as ckpt:
        start = start_dtype(ckpt)
    assert start == "bfloat16"
    cfg = RLConfig(**base).with_start_dtype(start)
    assert (cfg.rollout.dtype, cfg.learner.save_dtype, cfg.learner.dtype) == ("bfloat16", "bfloat16", "float32")
    chosen = RLConfig(**base, rollout={"dtype": "float32"}, learner={"save_dtype": "float16"}).with_start_dtype(start)
    assert (chosen.rollout.dtype, chosen.learner.save_dtype) == ("float32", "float16")


def test_weights_travel_through_the_store_without_a_pickled_copy():
    """SharedWeights pickles each tensor as an out-of-band buffer (Ray writes those straight into
    the object store and maps them on get) and unpickles as the same tensors."""
    import pickle

    from rayrejuv.distributed.rollout_group import SharedWeights

    state = {"w": torch.randn(64, 32).to(torch.bfloat16), "b": torch.randn(7), "t": torch.randn(4, 6)[:, :3]}
    buffers = []
    data = pickle.dumps(SharedWeights(state), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 3 and len(data) < 1000  # the bytes are in the buffers, not the pickle
    out = pickle.loads(data, buffers=buffers)
    assert type(out) is dict and out.keys() == state.keys()
    for k, v in state.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)


@pytest.mark.slow  # a whole rl run (~70 s on 2 busy cores); the real suite runs rl from a bf16 start too
def test_rl_from_a_bf16_start_keeps_bf16_and_the_actors_in_it(tmp_path):
    """A 2-step `rl` run from a bf16 checkpoint: rollout and reference actors in bf16 (rollout.dtype
    auto), the intermediate and final checkpoints in bf16 and equal to the learner's float32
    parameters cast (saved beside them), the sampling log-probs close to the learner's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import run_rl
    from rayrejuv.testbed.adder import build_adder

    torch.set_num_threads(1)
    try:
        adder = build_adder(tmp_path / "adder", sft_epochs=1, max_n=3)
    finally:
        torch.set_num_threads(2)
    start = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(adder["model"], dtype=torch.bfloat16).save_pretrained(start)
    AutoTokenizer.from_pretrained(adder["model"]).save_pretrained(start)
    out = tmp_path / "run"
    cfg = RLConfig(model=start, train_data=adder["train"], out=out, steps=2, eval_every=0, checkpoint_every=1,
                   grpo={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4, "lr": 1e-3, "beta": 0.01},
                   tracking={"enabled": False})
    run_rl(cfg, progress=False)
    resolved = json.loads((out / "run.json").read_text())["fingerprint"]
    assert resolved["rollout"]["dtype"] == "bfloat16" and resolved["learner"]["save_dtype"] == "bfloat16"
    final = load_tensors(out / "final")
    assert {str(v.dtype) for v in final.values()} == {"torch.bfloat16"}
    checkpoints = sorted(p for p in (out / "ray" / "grpo").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2
    for ckpt in checkpoints:
        model, master = load_tensors(ckpt / "model"), torch.load(ckpt / "weights.pt", weights_only=True)
        assert {str(v.dtype) for v in model.values()} == {"torch.bfloat16"}
        assert all(master[k].dtype == torch.float32 and torch.equal(model[k], master[k].to(torch.bfloat16))
                   for k in master)
    assert all(torch.equal(final[k], v) for k, v in load_tensors(checkpoints[-1] / "model").items())
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["rollout/logprob_abs_diff"] for r in steps) < 0.05  # bf16 sampling vs the float32 learner


ZERO3 = """
import os, sys
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
weights = {{}}
for engine in ("ddp", "deepspeed"):
    learner = _learner({model!r}, engine=engine, zero_stage=3)
    if engine == "deepspeed":
        assert learner.module.get_output_embeddings().weight.numel() == 0  # partitioned: gathered per call
    learner.update(_batch(6, 4, 7, 60, seed=0))
    weights[engine] = {{k: v.clone() for k, v in learner.weights().items()}}
print(max(float((weights["ddp"][k] - weights["deepspeed"][k]).abs().max()) for k in weights["ddp"]))
"""


@pytest.mark.slow  # ~40 s: imports DeepSpeed in a process of its own
@pytest.mark.parametrize("tie", [False, True])
def test_chunked_head_under_zero3_with_partitioned_weights_matches_ddp(make_pair, tie):
    """The LM head is called per chunk (not its weight read), so ZeRO-3 gathers the partitioned
    weight around each call: the same step as DDP."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    _, sft = make_pair("qwen3", tie_sft=tie)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ZERO3.format(tests=str(Path(__file__).parent), port=port, model=str(sft))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-5
