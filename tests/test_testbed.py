"""The tiny world: task generator, tokenizer, cached + resumable build."""

import json
import re

import pytest
import torch

from rayrejuv.commands.testbed.config import TinyWorldConfig
from rayrejuv.commands.testbed.driver import WorldLayout, build_testbed
from rayrejuv.errors import RejuvError
from rayrejuv.testbed import task

SMALL = {
    "model": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_layers": 2,
        "num_heads": 2,
        "num_kv_heads": 1,
        "head_dim": 32,
    },
    "data": {
        "sft_examples": 48,
        "calibration_examples": 8,
        "rl_train_examples": 16,
        "eval_examples": 12,
        "pretrain_texts": 128,
    },
    "train": {"pretrain_epochs": 1, "sft_epochs": [0.5, 1, 2], "sft_batch_size": 16},
    "tracking": {"enabled": False},
}


def small_config(out, **kw):
    return TinyWorldConfig(out=out, **{**SMALL, **kw})


def _check_solution(row):
    steps = re.findall(r"(\d+)([+-])(\d+)=(\d+)\.", row["response"])
    assert steps, row
    prev = None
    for a, op, b, c in steps:
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b) and c >= 0
        if prev is not None:
            assert a == prev  # each step continues from the last result
        prev = c
    assert row["response"].endswith(f"#### {prev}") and row["answer"] == str(prev)
    return len(steps)


def test_generator_is_deterministic_and_every_solution_verifies():
    splits = task.default_splits()
    a, b = task.generate(splits["id"], 300, seed=5), task.generate(splits["id"], 300, seed=5)
    assert a == b and a != task.generate(splits["id"], 300, seed=6)
    assert {_check_solution(r) for r in a} == {2}
    ood = task.generate(splits["ood"], 300, seed=5)
    assert {_check_solution(r) for r in ood} == {3}
    assert all(int(x) <= 20 for r in a for x in re.findall(r"\d+", r["prompt"]))
    assert any(int(x) > 20 for r in ood for x in re.findall(r"\d+", r["prompt"]))
    assert not set(task.OOD_TEMPLATES) & set(task.ID_TEMPLATES)


def test_wide_split_extends_the_id_distribution():
    wide = task.generate(task.default_splits()["wide"], 300, seed=5)
    assert {_check_solution(r) for r in wide} == {2, 3}
    assert any(int(x) > 20 for r in wide for x in re.findall(r"\d+", r["prompt"]))
    assert set(task.ID_TEMPLATES) < set(task.WIDE_TEMPLATES)


# The words that tell the ID operations apart: the base must never see them.
ID_VERBS = ("more", "gives", "found", "lost", "taken", "put", "holds")


def test_pretraining_shows_the_format_but_never_the_id_phrasing():
    rows = task.pretraining_text(2000, 20, seed=0, qa_fraction=0.5, qa_max_steps=3)
    qa = [r["response"] for r in rows if r["response"].startswith("Q: ")]
    assert 0.4 < len(qa) / len(rows) < 0.6
    steps = set()
    for text in qa:
        prompt, response = text.split(" A:")
        assert not set(prompt.replace(".", " ").split()) & set(ID_VERBS), prompt
        n = re.search(r"#### (\d+)$", response).group(1)
        steps.add(_check_solution({"response": response, "answer": n}))
    assert steps == {1, 2, 3}
    plain = task.pretraining_text(500, 20, seed=0, qa_fraction=0.0, qa_max_steps=3)
    assert all("####" not in r["response"] and "Q:" not in r["response"] for r in plain)


def test_general_split_is_held_out_base_distribution():
    rows = task.general_problems(300, 20, 3, 0, exclude=set())
    steps = set()
    for r in rows:
        words = set(r["prompt"].replace(".", " ").split())
        assert not words & set(ID_VERBS), r["prompt"]
        n_steps = _check_solution(r)
        steps.add(n_steps)
        numbers = [int(x) for x in r["prompt"].replace(".", " ").split() if x.isdigit()]
        assert len(numbers) == n_steps + 1 and max(numbers) <= 20
    assert steps == {1, 2, 3}  # the base's whole Q/A distribution, one-step problems included
    assert rows == task.general_problems(300, 20, 3, 0, exclude=set())  # deterministic
    # excluded texts (the base's pre-training problems) are skipped, and only those
    seen = {r["prompt"] + r["response"] for r in rows[:10]}
    again = task.general_problems(290, 20, 3, 0, exclude=seen)
    assert again == rows[10:300]


def test_hard_split_is_the_id_task_with_larger_numbers():
    rows = task.generate(task.default_splits(20, 30)["hard"], 300, seed=0)
    slot = r"\\\{\w+\\\}"  # an escaped {n}, {x}, {v0} ...
    id_prompts = [re.compile("Q: " + re.sub(slot, r"\\w+", re.escape(t)) + " A:") for t, _ in task.ID_TEMPLATES]
    for r in rows:
        assert _check_solution(r) == 2
        assert any(p.fullmatch(r["prompt"]) for p in id_prompts), r["prompt"]
    numbers = [int(x) for r in rows for x in re.findall(r"\d+", r["prompt"])]
    assert max(numbers) == 30  # beyond the SFT range (id_max 20), within the base's (ood_max 30)


def test_three_step_id_task_and_larger_hard_numbers():
    splits = task.default_splits(20, 30, id_steps=3, hard_max=50)
    slot = r"\\\{\w+\\\}"
    id3 = [re.compile("Q: " + re.sub(slot, r"\\w+", re.escape(t)) + " A:") for t, _ in task.ID3_TEMPLATES]
    for name, top in (("id", 20), ("hard", 50)):
        rows = task.generate(splits[name], 300, seed=0)
        assert {_check_solution(r) for r in rows} == {3}
        assert all(any(p.fullmatch(r["prompt"]) for p in id3) for r in rows)
        assert max(int(x) for r in rows for x in re.findall(r"\d+", r["prompt"])) == top
    assert splits["ood"].max_number == 30 and splits["wide"].max_number == 50  # ood keeps the base's range
    # the defaults are the 2-step world: hard_max unset means ood_max
    assert task.default_splits(20, 30) == task.default_splits(20, 30, id_steps=2, hard_max=30)
    assert task.default_splits(20, 30)["hard"].templates == task.ID_TEMPLATES


def test_more_eval_prompts_extend_the_eval_sets_and_change_no_training_data(tmp_path):
    """The demo scores 1000 prompts per split: a world with more eval_examples must train on the same
    data (so the same weights) and hold the smaller world's eval sets as its first rows."""
    from rayrejuv.commands.testbed.driver import write_data

    small = write_data(WorldLayout(tmp_path / "a"), small_config(tmp_path / "a"))
    wider = small_config(tmp_path / "b", data={**SMALL["data"], "eval_examples": 40})
    more = write_data(WorldLayout(tmp_path / "b"), wider)
    assert set(small) == set(more)
    for name in ("sft", "calibration", "rl_train"):
        assert more[name] == small[name], name
    for name in (n for n in small if n.startswith("eval_")):
        assert len(small[name]) == 12 and len(more[name]) == 40, name
        assert more[name][:12] == small[name], name
    assert (tmp_path / "b/data/eval_hard.jsonl").read_text().count("\n") == 40


def test_tokenizer_round_trip(tokenizer):
    for r in task.generate(task.default_splits()["ood"], 50, seed=1):
        text = r["prompt"] + r["response"]
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_build_layout_loads_and_is_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = small_config(tmp_path / "tb")
    m = build_testbed(cfg, progress=False)
    layout = WorldLayout(tmp_path / "tb")
    assert m.complete and set(m.sft_losses) == {"0.5", "1", "2"}
    assert json.loads((tmp_path / "tb" / "testbed.json").read_text()) == m.to_json()
    for name in ("sft", "calibration", "rl_train", "eval_id", "eval_ood", "eval_hard", "eval_wide", "eval_general"):
        rows = [json.loads(x) for x in layout.data(name).read_text().splitlines()]
        assert len(rows) == {"sft": 48, "calibration": 8, "rl_train": 16}.get(name, 12)
        assert set(rows[0]) == (
            {"prompt", "response"} if name in ("sft", "calibration") else {"prompt", "answer", "response"}
        )
    for d in [layout.base] + [layout.sft(e) for e in (0.5, 1, 2)]:
        model = AutoModelForCausalLM.from_pretrained(d)
        assert model.config.architectures == ["Qwen3ForCausalLM"]
        AutoTokenizer.from_pretrained(d)
    assert (layout.root / "sft" / "epoch-0.5").is_dir()
    mtimes = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*.safetensors")}
    again = build_testbed(cfg, progress=False)  # cached: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in layout.root.rglob("*.safetensors")} == mtimes
    assert again.complete and again.sft_losses == m.sft_losses  # kept: nothing was trained again
    assert again.pretrain_final_loss == m.pretrain_final_loss and set(again.timings_s) == set(m.timings_s)
    with pytest.raises(RejuvError, match="different settings .*pass --force"):
        build_testbed(small_config(tmp_path / "tb", seed=1), progress=False)


def test_interrupted_ladder_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from rayrejuv.commands.testbed import driver as tb

    clean = small_config(tmp_path / "clean")
    build_testbed(clean, progress=False)

    real = tb.save_checkpoint
    calls = {"n": 0}

    def crash_after_first_ladder_save(model, tok, target, **kw):
        real(model, tok, target, **kw)
        if "sft" in str(target):
            calls["n"] += 1
            if calls["n"] == 2:  # epoch-1 saved, then the machine dies
                raise KeyboardInterrupt

    monkeypatch.setattr(tb, "save_checkpoint", crash_after_first_ladder_save)
    cfg = small_config(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        build_testbed(cfg, progress=False)
    layout = WorldLayout(tmp_path / "resumed")
    assert layout.sft(1).is_dir() and not layout.sft(2).is_dir()
    monkeypatch.setattr(tb, "save_checkpoint", real)
    build_testbed(cfg, progress=False)
    a = load_file(WorldLayout(tmp_path / "clean").sft(2) / "model.safetensors")
    b = load_file(layout.sft(2) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_force_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RejuvError, match="not a testbed directory"):
        build_testbed(small_config(tmp_path / "mine", force=True), progress=False)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_manifest_adds_timings_and_keeps_losses_of_what_was_not_retrained():
    from rayrejuv.commands.testbed.driver import BuildManifest

    first = BuildManifest(config={"seed": 0}, complete=False).finished(
        {"data": 1.234, "pretrain": 5.0}, [2.0, 1.5], {"1": 0.5}
    )
    assert first.to_json() == {"config": {"seed": 0}, "complete": True, "timings_s": {"data": 1.23, "pretrain": 5.0},
                               "pretrain_final_loss": 1.5, "sft_losses": {"1": 0.5},
                               "kernels": "AVX2/mkl:AVX2"}  # the kernels it ran on (conftest pins them)
    again = first.finished({"data": 0.111, "sft_ladder": 2.0}, [], {})
    assert again.timings_s == {"data": 0.11, "pretrain": 5.0, "sft_ladder": 2.0}
    assert (again.pretrain_final_loss, again.sft_losses) == (1.5, {"1": 0.5})
    assert BuildManifest(config={}, complete=False).to_json() == {"config": {}, "complete": False, "timings_s": {}}
