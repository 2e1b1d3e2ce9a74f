"""Chat templates on the real model's tokenizer (SmolLM2-135M-Instruct: BPE, 49152 tokens, ChatML)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default


@pytest.fixture(scope="module")
def real_tok(real_fixture):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_fixture.root / "base")


@pytest.fixture(scope="module")
def calib_rows(real_fixture):
    path = real_fixture.root / "data" / "calibration.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _chatml(question: str) -> str:
    """SmolLM2's template rendered by hand: default system turn, the user turn, the generation prompt."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_rendered_prompts_are_the_templates_tokens_and_always_equals_a_conversational_row(real_tok, calib_rows):
    from rayrejuv.data.chat import encode_prompt

    for row in calib_rows:
        question = row["prompt"][0]["content"]
        expected = real_tok(_chatml(question), add_special_tokens=False)["input_ids"]
        assert encode_prompt(real_tok, row["prompt"], "auto") == expected
        assert encode_prompt(real_tok, question, "always") == expected  # a plain prompt as one user turn
        assert expected.count(real_tok.convert_tokens_to_ids("<|im_start|>")) == 3  # nothing added twice
        hand_rendered = encode_prompt(real_tok, _chatml(question), "auto")  # plain under auto: untouched
        assert hand_rendered == real_tok(_chatml(question))["input_ids"]


def test_a_calibration_pair_ends_with_the_end_of_turn_and_its_mask_covers_the_assistant_tokens(real_tok, real_fixture,
                                                                                                calib_rows):
    from rayrejuv.data.calibration import collate, load_calibration
    from rayrejuv.data.chat import encode_pair, encode_prompt

    for row in calib_rows:
        ids, prompt_len = encode_pair(real_tok, row["prompt"], row["response"], "auto")
        assert ids[:prompt_len] == encode_prompt(real_tok, row["prompt"], "auto")
        assert real_tok.decode(ids[prompt_len:]) == row["response"] + "<|im_end|>\n"
    examples = load_calibration(real_fixture.root / "data" / "calibration.jsonl", real_tok, 256, "auto")
    batch = collate(examples, real_tok.pad_token_id)
    for b, (ids, prompt_len) in enumerate(examples):
        predicted = batch.input_ids[b, 1:][batch.response_mask[b, :-1]].tolist()  # the tokens the mask scores
        assert predicted == ids[prompt_len:]
