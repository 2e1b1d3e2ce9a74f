"""Chat templates the way TRL users know them (rayrejuv.data.chat): conversational rows through the
tokenizer's template, plain strings as they are; `always` and `never`; the calibration of a
conversational file; the jsonl validation of conversational prompts.

The tokenizers are built here (nothing is downloaded): one token per character plus the
template's special tokens, so every expected id list is written out by hand.
"""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from rayrejuv.data import chat
from rayrejuv.data.calibration import collate, load_calibration
from rayrejuv.data.chat import ChatTemplate, encode_pair, encode_prompt, encode_prompts, print_rendered, rendered_text
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.errors import RejuvError
from rayrejuv.models.rollout import left_pad

# SmolLM2-Instruct's template, with a shorter default system prompt
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nbe brief<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# a Llama-style template that writes the BOS itself
BOS_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '[' + message['role'] + ']' + message['content'] + '<eot>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[assistant]' }}{% endif %}"
)
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-=?.:[]\n"
QUESTION = "what is 2+3?"
MESSAGES = [{"role": "user", "content": QUESTION}]


def char_tokenizer(specials: list[str], template: str | None, bos: str | None, eos: str, pad: str):
    """One token per character of CHARS, then `specials`; a BOS prepended to plain text when `bos`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials[0], eos_token=eos, pad_token=pad,
                                  bos_token=bos, additional_special_tokens=specials[1:])
    out.chat_template = template
    return out


@pytest.fixture
def smol():
    """Like SmolLM2's tokenizer: no BOS on plain text, <|im_end|> is EOS and pad."""
    return char_tokenizer(["<unk>", "<|im_start|>", "<|im_end|>"], SMOL_TEMPLATE, None, "<|im_end|>", "<|im_end|>")


@pytest.fixture
def llama_like():
    """A BOS on plain text (post-processor) and in the template."""
    return char_tokenizer(["<unk>", "<s>", "</s>", "<eot>"], BOS_TEMPLATE, "<s>", "</s>", "</s>")


@pytest.fixture
def plain():
    """The testbed's kind of tokenizer: BOS on plain text, no chat template."""
    return char_tokenizer(["<unk>", "<bos>", "<eos>", "<pad>"], None, "<bos>", "<eos>", "<pad>")


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch):
    monkeypatch.setattr(chat, "_WARNED", set())


def tokens(tok, ids: list[int]) -> list[str]:
    return tok.convert_ids_to_tokens(ids)


def template_ids(tok, messages, **kw) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])


# SMOL_TEMPLATE's rendering of MESSAGES with the generation prompt, token by token
SMOL_PROMPT = ["<|im_start|>", *"system\nbe brief", "<|im_end|>", "\n",
               "<|im_start|>", *"user\nwhat is 2+3?", "<|im_end|>", "\n", "<|im_start|>", *"assistant\n"]


def test_modes_are_the_config_literal():
    assert set(chat.MESSAGES) == set(get_args(ChatTemplate)) == {"auto", "always", "never"}


def test_conversational_prompt_is_the_template_tokens(smol):
    ids = encode_prompt(smol, MESSAGES, "auto")
    assert tokens(smol, ids) == SMOL_PROMPT
    assert ids == template_ids(smol, MESSAGES, add_generation_prompt=True)
    assert encode_prompt(smol, MESSAGES, "always") == ids  # a conversational row is rendered either way


def test_a_template_that_writes_the_bos_gets_one_bos(llama_like):
    ids = encode_prompt(llama_like, MESSAGES, "auto")
    assert tokens(llama_like, ids) == ["<s>", *"[user]what is 2+3?", "<eot>", *"[assistant]"]
    assert ids == template_ids(llama_like, MESSAGES, add_generation_prompt=True)
    assert ids.count(llama_like.bos_token_id) == 1


def test_always_renders_a_plain_prompt_as_one_user_turn(smol, llama_like):
    assert encode_prompt(smol, QUESTION, "always") == encode_prompt(smol, MESSAGES, "auto")
    assert tokens(llama_like, encode_prompt(llama_like, QUESTION, "always"))[:2] == ["<s>", "["]


def test_plain_prompts_keep_todays_tokens(plain, llama_like, capsys):
    """auto and never leave a string as `tokenizer(prompt)` tokenizes it (special tokens included)."""
    for tok in (plain, llama_like):
        for mode in ("auto", "never"):
            ids = encode_prompt(tok, QUESTION, mode)
            assert ids == tok(QUESTION)["input_ids"]
            assert tokens(tok, ids) == [tok.bos_token, *QUESTION]
    assert "WARNING" in capsys.readouterr().err  # llama_like has a template: auto said so


def test_a_prompt_rendered_by_hand_is_not_templated_twice(smol):
    by_hand = smol.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    for mode in ("auto", "never"):
        assert tokens(smol, encode_prompt(smol, by_hand, mode)) == SMOL_PROMPT  # 3 turns' markers, not 6


def test_plain_prompts_with_a_template_warn_once_naming_the_two_ways_on(smol, plain, capsys):
    encode_prompts(smol, [QUESTION, "what is 1+1?"], "auto")
    encode_prompt(smol, QUESTION, "auto")
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    assert "has a chat template, but the prompts are plain strings" in err
    assert '{"prompt": [{"role": "user", "content": "..."}]}' in err and "chat_template: always" in err
    encode_prompt(smol, QUESTION, "never")  # asked for: no warning
    encode_prompt(plain, QUESTION, "auto")  # no template: nothing to warn about
    encode_prompt(smol, MESSAGES, "auto")  # templated: nothing to warn about
    assert capsys.readouterr().err == ""


def test_conversational_with_never_is_an_error(smol):
    with pytest.raises(RejuvError, match=r"conversational prompt .* chat_template: never; use chat_template: auto"):
        encode_prompt(smol, MESSAGES, "never")
    with pytest.raises(RejuvError, match="chat_template: never"):
        encode_pair(smol, MESSAGES, "5", "never")


@pytest.mark.parametrize("prompt,mode", [(MESSAGES, "auto"), (QUESTION, "always")])
def test_no_template_is_an_error_naming_the_fix(plain, prompt, mode):
    with pytest.raises(RejuvError, match=r"has no chat template.* plain-string prompts .* tokenizer_config\.json"):
        encode_prompt(plain, prompt, mode)


def test_templated_pair_ends_with_the_end_of_turn(smol):
    ids, p = encode_pair(smol, MESSAGES, "5", "auto")
    assert ids[:p] == encode_prompt(smol, MESSAGES, "auto") and p == len(SMOL_PROMPT)
    assert tokens(smol, ids[p:]) == ["5", "<|im_end|>", "\n"]
    assert ids == template_ids(smol, [*MESSAGES, {"role": "assistant", "content": "5"}])
    assert encode_pair(smol, QUESTION, "5", "always") == (ids, p)


def test_plain_pair_is_todays_prompt_response_eos(plain):
    ids, p = encode_pair(plain, "q:1+1?a:", "2", "auto")
    assert tokens(plain, ids) == ["<bos>", *"q:1+1?a:", "2", "<eos>"] and p == 9


def test_a_pair_the_template_renders_differently_is_refused(smol):
    """A generation prompt the rendered assistant turn does not start with: no common prefix."""
    smol.chat_template = SMOL_TEMPLATE.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>bot\n' }}")
    with pytest.raises(RejuvError, match="renders the prompt differently .* chat_template: never"):
        encode_pair(smol, MESSAGES, "5", "auto")


def test_calibration_of_a_conversational_file(tmp_path, smol):
    rows = [
        {"prompt": MESSAGES, "response": "5"},
        {"prompt": [{"role": "system", "content": "add"}, {"role": "user", "content": "1+1?"}], "response": "2."},
    ]
    path = tmp_path / "cal.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_calibration(path, smol, 512, "auto")
    second = ["<|im_start|>", *"system\nadd", "<|im_end|>", "\n", "<|im_start|>", *"user\n1+1?", "<|im_end|>", "\n",
              "<|im_start|>", *"assistant\n"]
    assert [(tokens(smol, ids), p) for ids, p in examples] == [
        (SMOL_PROMPT + ["5", "<|im_end|>", "\n"], len(SMOL_PROMPT)),
        (second + ["2", ".", "<|im_end|>", "\n"], len(second)),
    ]
    b = collate(examples, smol.pad_token_id)
    for i, (ids, p) in enumerate(examples):
        # position t predicts token t+1: exactly the assistant's tokens are predicted
        assert b.response_mask[i].nonzero().flatten().tolist() == list(range(p - 1, len(ids) - 1))
        predicted = b.input_ids[i, 1:][b.response_mask[i, :-1]].tolist()
        assert tokens(smol, predicted) == tokens(smol, ids[p:])
    assert b.input_ids.shape[1] == len(examples[0][0]) and int(b.attention_mask[1].sum()) == len(examples[1][0])


def test_calibration_truncation_keeps_the_prompt_length(tmp_path, smol):
    path = tmp_path / "cal.jsonl"
    path.write_text(json.dumps({"prompt": MESSAGES, "response": "5"}) + "\n")
    ((ids, p),) = load_calibration(path, smol, len(SMOL_PROMPT) + 1, "auto")
    assert tokens(smol, ids[p:]) == ["5"] and p == len(SMOL_PROMPT)


def test_plain_prompts_pad_as_the_tokenizer_did(plain):
    """Generation's prompts: encode_prompt + left_pad equals the tokenizer's own left padding."""
    prompts = ["q:1+1?a:", "q:12+34-5?a:", "7-5="]
    want = plain(prompts, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = left_pad(encode_prompts(plain, prompts, "auto"), plain.pad_token_id)
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    assert ids.dtype == want["input_ids"].dtype == torch.long and mask.dtype == want["attention_mask"].dtype


def test_rendered_text_shows_the_template(smol, capsys):
    text = rendered_text(smol, {"prompt": MESSAGES, "response": "5"}, "auto")
    assert text == "".join(SMOL_PROMPT) + "5<|im_end|>\n"
    assert rendered_text(smol, {"prompt": MESSAGES}, "auto") == "".join(SMOL_PROMPT)
    print_rendered(text, "auto", "calibration")
    err = capsys.readouterr().err
    assert err.startswith("what the model sees (first calibration row, chat_template: auto):\n  | <|im_start|>system\n")


# ------------------------------------------------------------------------------------- jsonl


def _read(tmp_path, line: str, fields=("prompt", "response")):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q:1+1?a:", "response": "2"}) + "\n" + line + "\n")
    return read_jsonl(path, fields, "calibration")


def test_jsonl_keeps_a_conversational_prompt(tmp_path):
    rows = _read(tmp_path, json.dumps({"prompt": MESSAGES, "response": "5", "extra": 1}))
    assert rows == [{"prompt": "q:1+1?a:", "response": "2"}, {"prompt": MESSAGES, "response": "5"}]


@pytest.mark.parametrize(
    "row,match",
    [
        ({"prompt": [], "response": "5"}, r"d\.jsonl:2: field 'prompt' is an empty list of messages"),
        ({"prompt": [{"role": "user"}], "response": "5"}, r":2: field 'prompt' message 0 must be an object"),
        ({"prompt": [{"role": "user", "content": "a", "name": "x"}], "response": "5"}, r"with exactly those keys"),
        ({"prompt": ["hi"], "response": "5"}, r":2: field 'prompt' message 0 must be an object"),
        ({"prompt": [*MESSAGES, {"role": "usr", "content": "a"}], "response": "5"},
         r":2: field 'prompt' message 1 has role 'usr'; roles are \['system', 'user', 'assistant'\]"),
        ({"prompt": [{"role": "user", "content": 3}], "response": "5"}, r"message 0 content must be a string"),
        ({"prompt": 5, "response": "5"},
         r":2: field 'prompt' must be a non-empty string or a non-empty list of \{role, content\} messages"),
        ({"prompt": MESSAGES, "response": [{"role": "assistant", "content": "5"}]},
         r":2: field 'response' must be a non-empty string; fields"),
    ],
)
def test_jsonl_refuses_a_malformed_conversational_row(tmp_path, row, match):
    with pytest.raises(RejuvError, match=match):
        _read(tmp_path, json.dumps(row))


def test_answer_stays_a_string(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps({"prompt": MESSAGES, "answer": a}) + "\n" for a in ("5", 5)))
    with pytest.raises(RejuvError, match=r"rl\.jsonl:2: field 'answer' must be a non-empty string; fields"):
        read_jsonl(path, ("prompt", "answer"), "RL training data")


# ------------------------------------------------------------------------------------ config


def test_one_chat_template_field_everywhere_prompts_are_read():
    from rayrejuv.commands.demo.config import DemoConfig
    from rayrejuv.commands.diagnose.config import DiagnoseConfig
    from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.config.base import validate_config
    from rayrejuv.config.prompts import PromptFormat

    for cls in (RejuvenateConfig, DiagnoseConfig, RLConfig):
        assert issubclass(cls, PromptFormat) and cls.model_fields["chat_template"].default == "auto"
    assert DiagnoseConfig(base="b", sft=["s"], chat_template="always").chat_template == "always"
    with pytest.raises(RejuvError, match=r"chat_template: Input should be 'auto', 'always' or 'never'"):
        validate_config(DiagnoseConfig, {"base": "b", "sft": ["s"], "chat_template": "sometimes"})
    tune = TuneConfig(base="b", sft="s", calibration="c", train_data="t", eval_data="e",
                      fixed={"chat_template": "never"}, probe={"rl": {"chat_template": "always"}})
    assert tune.rejuvenate_config({}, tune.out).chat_template == "never"
    assert tune.probe.rl_config(tune.sft, tune.train_data, tune.out, 0).chat_template == "always"
    assert DemoConfig(rejuvenation={"chat_template": "never"}).rejuvenation.chat_template == "never"


# ------------------------------------------------------------------ through the commands


@pytest.fixture
def templated_pair(make_pair, smol):
    """A tiny llama pair whose saved tokenizer is `smol` (the weights' vocabulary covers its ids)."""
    base, sft = make_pair("llama")
    for d in (base, sft):
        smol.save_pretrained(d)
    return base, sft


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rejuvenate_calibrates_on_conversational_rows(tmp_path, templated_pair, smol, capsys):
    from conftest import rejuv_config

    from rayrejuv.commands.rejuvenate.driver import rejuvenate
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.rejuvenation.reset_search import calibration_batches

    base, sft = templated_pair
    cal = _jsonl(tmp_path / "cal.jsonl", [{"prompt": MESSAGES, "response": "5"},
                                          {"prompt": [{"role": "user", "content": "1+1?"}], "response": "2"}])
    cfg = rejuv_config(base, sft, tmp_path / "out", calibration=cal, reset_ratio=0.05)
    (batch,) = calibration_batches(cfg, Checkpoint(sft))
    assert tokens(smol, batch.input_ids[0].tolist()) == SMOL_PROMPT + ["5", "<|im_end|>", "\n"]
    assert int(batch.response_mask.sum()) == 3 + 3  # "5" / "2", <|im_end|>, "\n" of each row
    report = rejuvenate(cfg, progress=True)
    assert report["calibration_example"] == "".join(SMOL_PROMPT) + "5<|im_end|>\n"
    assert report["attribution"]["examples"] == 2 and report["reset_count"] > 0
    err = capsys.readouterr().err
    assert "what the model sees (first calibration row, chat_template: auto):\n  | <|im_start|>system" in err
    assert "WARNING" not in err


def test_rejuvenate_refuses_conversational_rows_without_a_template(tmp_path, make_pair):
    from conftest import rejuv_config

    from rayrejuv.commands.rejuvenate.driver import rejuvenate

    base, sft = make_pair("llama")  # the testbed's character tokenizer: no template
    cal = _jsonl(tmp_path / "cal.jsonl", [{"prompt": MESSAGES, "response": "5"}])
    with pytest.raises(RejuvError, match="has no chat template"):
        rejuvenate(rejuv_config(base, sft, tmp_path / "out", calibration=cal), progress=False)
    assert not (tmp_path / "out").exists()


def test_diagnose_renders_conversational_rows(tmp_path, templated_pair, capsys):
    from rayrejuv.commands.diagnose.config import DiagnoseConfig
    from rayrejuv.commands.diagnose.driver import diagnose

    base, sft = templated_pair
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": MESSAGES, "response": "5", "answer": "5"},
                                         {"prompt": QUESTION, "response": "5", "answer": "5"}])
    cfg = DiagnoseConfig(base=base, sft=[sft], data=data, out=tmp_path / "diag", k=2, max_new_tokens=3,
                         include_base=False, heatmaps=0, chat_template="always", tracking={"enabled": False})
    (row,) = diagnose(cfg, progress=True).rows
    assert row.sft_loss is not None and row.pass_at_1 is not None
    err = capsys.readouterr().err
    assert "what the model sees (first diagnose row, chat_template: always):\n  | <|im_start|>system" in err
    assert "WARNING" not in err  # always: the plain row is rendered too


def test_rl_renders_every_prompt_once_before_ray(tmp_path, templated_pair, smol, capsys):
    from rayrejuv.commands.rl.config import RLConfig
    from rayrejuv.commands.rl.driver import _render_prompts

    _, sft = templated_pair
    rows = [{"prompt": MESSAGES, "answer": "5"}, {"prompt": QUESTION, "answer": "5"}]
    cfg = RLConfig(model=sft, train_data=tmp_path / "t.jsonl", out=tmp_path / "rl")
    got, evals, example = _render_prompts(cfg, rows, rows[1:], show=True)
    assert [tokens(smol, r["prompt_ids"]) for r in got] == [SMOL_PROMPT, list(QUESTION)]
    assert evals[0]["prompt_ids"] == got[1]["prompt_ids"] and example == "".join(SMOL_PROMPT)
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "first RL training row, chat_template: auto" in err


def test_tune_shows_both_renderings_before_ray(tmp_path, templated_pair, capsys):
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.commands.tune.driver import rendered_examples

    base, sft = templated_pair
    cal = _jsonl(tmp_path / "cal.jsonl", [{"prompt": QUESTION, "response": "5"}])
    train = _jsonl(tmp_path / "rl.jsonl", [{"prompt": MESSAGES, "answer": "5"}])
    cfg = TuneConfig(base=base, sft=sft, calibration=cal, train_data=train, eval_data=train, out=tmp_path / "t",
                     fixed={"chat_template": "always"})
    assert rendered_examples(cfg, show=True) == {"rendered_calibration": "".join(SMOL_PROMPT) + "5<|im_end|>\n",
                                                 "rendered_prompt": "".join(SMOL_PROMPT)}
    err = capsys.readouterr().err
    assert "first calibration row, chat_template: always" in err and "first RL training row, chat_template: auto" in err
    bare = TuneConfig(base=base, sft=sft, calibration=cal, train_data=train, eval_data=train, out=tmp_path / "t")
    assert rendered_examples(bare, show=False)["rendered_calibration"] == QUESTION + "5<|im_end|>"  # plain + EOS
    assert capsys.readouterr().err.count("WARNING") == 1  # auto on a plain calibration row
