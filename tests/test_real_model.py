"""The real-model suite (-m real): SmolLM2-135M-Instruct from its PyPI GGUF, an SFT of its layers 20-29,
rejuvenated by the CLI on Ray and in process, then two GRPO steps.

The fixture is `rayrejuv testbed real`'s (conftest.real_fixture: built once, then cached). Sizes are
kept for 2 CPU cores: 8 calibration examples, 16-token completions, 2 RL steps.
"""

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import load_tensors, same_bits

pytestmark = pytest.mark.real

QUESTION = [{"role": "user", "content": "tom has 3 apples. gets 4 more. gives away 2. how many apples?"}]
LAYERS, FIRST_TRAINED = 30, 20
MEASURED: dict[str, float] = {}  # CLI wall seconds and the rejuvenation's numbers, printed by the last test (-s)


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rayrejuv", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    MEASURED[args[0] + (" --ray" if "--ray" in args else "")] = round(time.perf_counter() - t0, 1)
    return done


def _greedy(path, max_new_tokens: int = 16) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def _tied_checkpoint(path) -> None:
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True
    names = load_tensors(path)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


@pytest.fixture(scope="module")
def real(real_fixture):
    root = real_fixture.root
    return {"base": root / "base", "sft": root / "sft", "data": root / "data", "manifest": real_fixture.manifest}


def test_base_is_the_pretrained_instruct_model_and_generates(real):
    config = json.loads((real["base"] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == LAYERS
    assert (config["hidden_size"], config["vocab_size"], config["dtype"]) == (576, 49152, "bfloat16")
    assert "quantization_config" not in config
    assert (real["base"] / "chat_template.jinja").is_file()
    text = _greedy(real["base"])
    assert len(text.strip()) > 0


def test_fixture_checkpoints_keep_tied_embeddings(real):
    _tied_checkpoint(real["base"])
    _tied_checkpoint(real["sft"])


def test_sft_differs_from_base_only_in_the_trained_layers(real):
    base, sft = load_tensors(real["base"]), load_tensors(real["sft"])
    assert set(base) == set(sft)
    trained = tuple(f"model.layers.{i}." for i in range(FIRST_TRAINED, LAYERS))
    for name in base:
        if not name.startswith(trained):
            assert same_bits(base[name], sft[name]), name  # layers 0-19, embeddings, final norm: bit for bit
    for i in range(FIRST_TRAINED, LAYERS):
        changed = [n for n in base if n.startswith(f"model.layers.{i}.") and not torch.equal(base[n], sft[n])]
        assert changed, f"layer {i} was not trained"
    m = real["manifest"]
    assert m.trained_layers == list(range(FIRST_TRAINED, LAYERS))
    assert m.sft_saved_loss < 0.05 < 1.0 < m.base_loss  # over-trained: the SFT set's loss driven low


def test_rejuvenate_on_ray_is_bit_identical_to_no_ray(real, real_rejuvenated, tmp_path):
    out = tmp_path / "ray"
    _cli("rejuvenate", "--base", str(real["base"]), "--sft", str(real["sft"]), "--out", str(out),
         "--calibration", str(real["data"] / "calibration.jsonl"), "--ray", "--workers", "2", "--no-track")
    ray_report = json.loads((out / "rejuvenation_report.json").read_text())
    ref_report = json.loads((real_rejuvenated / "rejuvenation_report.json").read_text())
    assert ray_report["execution"]["mode"] == "ray" and ref_report["execution"]["mode"] != "ray"
    assert ray_report["neurons"] == ref_report["neurons"]
    got, want = load_tensors(out), load_tensors(real_rejuvenated)
    assert set(got) == set(want) and all(same_bits(got[n], want[n]) for n in want)


def test_rejuvenated_real_model_reconstructs_loads_generates_and_stays_tied(real_rejuvenated):
    report = json.loads((real_rejuvenated / "rejuvenation_report.json").read_text())
    att = report["attribution"]
    assert att["reconstruction_error_max"] < 1e-4 * att["logit_abs_mean"]
    assert report["reset_count"] > 0
    MEASURED.update({"reconstruction_error_max": att["reconstruction_error_max"],
                     "logit_abs_mean": att["logit_abs_mean"], "reset_count": report["reset_count"]})
    # layers 0-19 (6144 neurons each) were frozen by the SFT: not candidates, none reset (issue 14 item 4)
    assert report["excluded_untouched"] == FIRST_TRAINED * 6144 and min(n["layer"] for n in report["neurons"]) >= 20
    _tied_checkpoint(real_rejuvenated)
    assert json.loads((real_rejuvenated / "config.json").read_text())["dtype"] == "bfloat16"
    assert len(_greedy(real_rejuvenated).strip()) > 0


def test_two_rl_steps_on_the_rejuvenated_real_model(real, real_rejuvenated, tmp_path):
    config = tmp_path / "rl.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "grpo": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16, "micro_batch_size": 4},
        "eval_every": 0, "checkpoint_every": 2,
    }))
    out = tmp_path / "rl"
    _cli("rl", "--config", str(config), "--model", str(real_rejuvenated), "--train-data",
         str(real["data"] / "rl_train.jsonl"), "--out", str(out), "--steps", "2", "--no-track", "--quiet")
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]
    assert len(steps) == 2 and all(r["policy/update_norm"] > 0 for r in steps)
    _tied_checkpoint(out / "final")
    final = load_tensors(out / "final")  # saved in the start checkpoint's dtype (bf16), not float32
    assert {t.dtype for t in final.values()} == {t.dtype for t in load_tensors(real_rejuvenated).values()} == {
        torch.bfloat16}
    assert len(_greedy(out / "final").strip()) > 0
    print(f"\nreal fixture build timings {real['manifest'].timings_s}; CLI runs and numbers {MEASURED}")
