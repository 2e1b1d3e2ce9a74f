"""Every bad input is refused with one line naming the problem and the fix; nothing is written."""

import errno
import json

import pytest
import torch
from conftest import rejuv_config
from safetensors.torch import load_file, save_file

from rayrejuv.commands.rejuvenate.driver import rejuvenate
from rayrejuv.errors import RejuvError


def _run(base, sft, out, **kw):
    rejuvenate(rejuv_config(base, sft, out, **kw), progress=False)


def _refused(match, base, sft, out, **kw):
    with pytest.raises(RejuvError, match=match) as e:
        _run(base, sft, out, **kw)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return str(e.value)


def _edit_tensors(directory, edit):
    f = directory / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_different_architectures(tmp_path, make_pair, tokenizer):
    from conftest import _build

    base = _build(tokenizer, tmp_path / "q3", "qwen3", 0, False, torch.float32, None, None)
    _, sft = make_pair("llama")
    _refused("base is Qwen3ForCausalLM but SFT is LlamaForCausalLM", base, sft, tmp_path / "out", fusion_only=True)


def test_different_vocabulary_size(tmp_path, make_pair, tokenizer):
    from conftest import _build

    _, sft = make_pair("llama")
    base = _build(tokenizer, tmp_path / "big", "llama", 0, False, torch.float32, None, None)
    cfg = json.loads((base / "config.json").read_text())
    cfg["vocab_size"] += 8
    (base / "config.json").write_text(json.dumps(cfg))
    _refused("differ in vocab_size", base, sft, tmp_path / "out", fusion_only=True)


def test_different_shape_same_config(tmp_path, make_pair):
    base, sft = make_pair("llama")
    _edit_tensors(sft, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    _refused("shape", base, sft, tmp_path / "out", fusion_only=True)


def test_tensor_missing_from_one_side(tmp_path, make_pair):
    base, sft = make_pair("llama")
    _edit_tensors(sft, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    msg = _refused("lacks 1 tensors", base, sft, tmp_path / "out", fusion_only=True)
    assert "model.layers.1.mlp.up_proj.weight" in msg


def test_extra_tensor_on_one_side(tmp_path, make_pair):
    base, sft = make_pair("qwen2")
    _edit_tensors(base, lambda t: t.update({"model.extra.weight": torch.ones(3)}))
    _refused("model.extra.weight is missing from the SFT", base, sft, tmp_path / "out", fusion_only=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_an_input(tmp_path, make_pair, bad):
    base, sft = make_pair("llama")

    def poison(t):
        t["model.layers.0.self_attn.k_proj.weight"][2, 3] = bad

    _edit_tensors(base, poison)
    _refused(
        "base checkpoint .* model.layers.0.self_attn.k_proj.weight holds 1 NaN/Inf",
        base,
        sft,
        tmp_path / "out",
        fusion_only=True,
    )


def test_overflow_in_the_result(tmp_path, make_pair):
    base, sft = make_pair("llama")
    _edit_tensors(base, lambda t: t["model.norm.weight"].fill_(1e6))
    _edit_tensors(sft, lambda t: t["model.norm.weight"].fill_(1e6))
    _refused(
        "model.norm.weight overflows torch.float16", base, sft, tmp_path / "out", fusion_only=True, dtype="float16"
    )


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("alpha", 1.5, r"alpha: Input should be less than or equal to 1 \(got 1.5\)"),
        ("alpha", -0.1, r"alpha: Input should be greater than or equal to 0"),
        ("reset_ratio", 0.0, r"reset_ratio: Input should be greater than 0"),
        ("reset_ratio", 1.0, r"reset_ratio: Input should be less than 1"),
        ("omega", 1.01, r"omega: Input should be less than or equal to 1"),
        ("selection", "top", r"selection: Input should be 'aggregate' or 'union'"),
    ],
)
def test_out_of_range_hyperparameters(tmp_path, field, value, match):
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.config.base import validate_config

    values = {"base": "b", "sft": "s", "out": str(tmp_path / "o"), "fusion_only": True, field: value}
    with pytest.raises(RejuvError, match=match) as e:
        validate_config(RejuvenateConfig, values)
    assert "[" + field in str(e.value)  # names what the option is


def test_reset_without_calibration_is_refused():
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.config.base import validate_config

    with pytest.raises(RejuvError, match="pass --calibration FILE .* or --fusion-only"):
        validate_config(RejuvenateConfig, {"base": "b", "sft": "s", "out": "o"})


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "is empty"),
        ('{"prompt": "Q:1+1?A:", "response": "2"}\nnot json\n', r":2: not valid JSON"),
        ('{"prompt": "Q:1+1?A:"}\n', r":1: field 'response' must be a non-empty string"),
        ('["a", "b"]\n', r":1: expected a JSON object"),
    ],
)
def test_malformed_calibration(tmp_path, make_pair, content, match):
    base, sft = make_pair("llama")
    cal = tmp_path / "cal.jsonl"
    cal.write_text(content)
    _refused(match, base, sft, tmp_path / "out", calibration=cal)


def test_calibration_without_response_tokens(tmp_path, make_pair):
    base, sft = make_pair("llama")
    cal = tmp_path / "cal.jsonl"
    cal.write_text(json.dumps({"prompt": "Q:12+34-5?A:", "response": "46"}) + "\n")
    _refused(
        "no example has a response token within max_length=4",
        base,
        sft,
        tmp_path / "out",
        calibration=cal,
        max_length=4,
    )


def test_existing_output_directory(tmp_path, make_pair):
    base, sft = make_pair("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RejuvError, match="already exists; pass --overwrite"):
        _run(base, sft, out, fusion_only=True)
    assert (out / "keep.txt").read_text() == "mine"
    _run(base, sft, out, fusion_only=True, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_output_equal_to_an_input_is_refused(make_pair):
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.config.base import validate_config

    base, sft = make_pair("llama")
    with pytest.raises(RejuvError, match="--out is the sft checkpoint itself"):
        validate_config(RejuvenateConfig, {"base": base, "sft": sft, "out": sft, "fusion_only": True})


def test_pickle_checkpoint_refused_unless_allowed(tmp_path, make_pair):
    base, sft = make_pair("llama")
    tensors = load_file(sft / "model.safetensors")
    (sft / "model.safetensors").unlink()
    torch.save(tensors, sft / "pytorch_model.bin")
    _refused("pickle weights .* pass --allow-pickle", base, sft, tmp_path / "out", fusion_only=True)
    _run(base, sft, tmp_path / "out", fusion_only=True, allow_pickle=True, alpha=1.0)
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(got[n], tensors[n]) for n in tensors)


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path, make_pair):
    base, sft = make_pair("llama")
    (sft / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Evil()}, sft / "pytorch_model.bin")
    _refused("weights_only=True", base, sft, tmp_path / "out", fusion_only=True, allow_pickle=True)


def test_unsupported_architecture(tmp_path, make_pair):
    base, sft = make_pair("llama")
    cfg = json.loads((sft / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg["model_type"] = "gpt2"
    (sft / "config.json").write_text(json.dumps(cfg))
    msg = _refused("unsupported architecture 'GPT2LMHeadModel'", base, sft, tmp_path / "out", fusion_only=True)
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert name in msg


def test_disk_full_leaves_the_target_untouched(tmp_path, make_pair, monkeypatch):
    from rayrejuv.io import writer

    base, sft = make_pair("llama")
    out = tmp_path / "out"
    _run(base, sft, out, fusion_only=True, alpha=1.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real_write = writer.ShardWriter.write

    def failing_write(self, name, tensor):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, name, tensor)

    monkeypatch.setattr(writer.ShardWriter, "write", failing_write)
    with pytest.raises(RejuvError, match="disk full while writing .* free space or choose --out"):
        _run(base, sft, out, fusion_only=True, alpha=0.0, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.*"))


def test_not_enough_free_space_is_refused_up_front(tmp_path, make_pair, monkeypatch):
    import shutil
    from collections import namedtuple

    base, sft = make_pair("llama")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    _refused("not enough disk space for the output", base, sft, tmp_path / "out", fusion_only=True)
