"""What the model sees: prompts, and (prompt, response) pairs, as token ids (TRL's convention).

A row's prompt is plain (a string, tokenized as it is, with the tokenizer's special tokens) or
conversational (a list of {role, content} messages, rendered by the tokenizer's chat template).
The mode decides what is rendered:

    auto    conversational prompts through the template, plain strings as they are (so a prompt
            rendered by hand is never templated twice)
    always  a plain prompt too, as one user turn
    never   nothing (a conversational prompt is an error)

Templated ids are exactly `apply_chat_template(messages, add_generation_prompt=True)`'s tokens:
the template writes its own BOS, so none is added twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rayrejuv.config.prompts import ChatTemplate
from rayrejuv.errors import RejuvError

__all__ = ["ChatTemplate", "encode_pair", "encode_prompt", "encode_prompts", "print_rendered", "rendered_text"]

Prompt = str | list[dict[str, str]]
_WARNED: set[str] = set()  # tokenizers already warned about (once per process)


def _auto(prompt: Prompt) -> list[dict[str, str]] | None:
    return prompt if isinstance(prompt, list) else None


def _always(prompt: Prompt) -> list[dict[str, str]] | None:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def _never(prompt: Prompt) -> list[dict[str, str]] | None:
    if isinstance(prompt, list):
        raise RejuvError(
            "a conversational prompt (a list of {role, content} messages) with chat_template: never; "
            "use chat_template: auto to render it with the tokenizer's template, or give the prompt as a string"
        )
    return None


# mode -> the messages to render (None: the prompt stays plain text)
MESSAGES: dict[str, Callable[[Prompt], list[dict[str, str]] | None]] = {
    "auto": _auto, "always": _always, "never": _never,
}


def _name(tokenizer) -> str:
    return str(tokenizer.name_or_path or type(tokenizer).__name__)


def _templated(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """The template's tokens (its own special tokens only: apply_chat_template adds none)."""
    if not tokenizer.chat_template:
        raise RejuvError(
            f"the tokenizer of {_name(tokenizer)} has no chat template, so conversational prompts (or "
            "chat_template: always) cannot be rendered; give plain-string prompts with chat_template: auto or "
            "never, or add a chat_template to the checkpoint's tokenizer_config.json"
        )
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(enc["input_ids"])


def _warn_plain(tokenizer, mode: ChatTemplate) -> None:
    """Once per tokenizer and process: a template exists, yet auto leaves these plain prompts untemplated."""
    if mode != "auto" or not tokenizer.chat_template or _name(tokenizer) in _WARNED:
        return
    _WARNED.add(_name(tokenizer))
    print(
        f"WARNING: the tokenizer of {_name(tokenizer)} has a chat template, but the prompts are plain strings: "
        "the model sees them WITHOUT the template (chat_template: auto renders conversational rows only). "
        'To render them, write conversational rows ({"prompt": [{"role": "user", "content": "..."}]}) or set '
        "chat_template: always (--chat-template always); chat_template: never silences this.",
        file=sys.stderr,
        flush=True,
    )


def encode_prompt(tokenizer, prompt: Prompt, mode: ChatTemplate) -> list[int]:
    """The ids the model continues from: the template with its generation prompt, or the plain
    string with the tokenizer's special tokens (what `tokenizer(prompt)` gives)."""
    messages = MESSAGES[mode](prompt)
    if messages is None:
        _warn_plain(tokenizer, mode)
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return _templated(tokenizer, messages, add_generation_prompt=True)


def encode_prompts(tokenizer, prompts: list[Prompt], mode: ChatTemplate) -> list[list[int]]:
    return [encode_prompt(tokenizer, p, mode) for p in prompts]


def encode_pair(tokenizer, prompt: Prompt, response: str, mode: ChatTemplate) -> tuple[list[int], int]:
    """(ids, prompt_len): ids[:prompt_len] is encode_prompt's, ids[prompt_len:] the response.

    Templated: the conversation with the response as the assistant turn, as the template renders
    it (ending with its end-of-turn). Plain: the response's tokens, then EOS (the SFT model
    learned to end with it)."""
    messages = MESSAGES[mode](prompt)
    if messages is None:
        ids = encode_prompt(tokenizer, prompt, mode)
        response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        return ids + response_ids + eos, len(ids)
    ids = _templated(tokenizer, messages, add_generation_prompt=True)
    full = _templated(tokenizer, [*messages, {"role": "assistant", "content": response}], add_generation_prompt=False)
    if full[: len(ids)] != ids:
        raise RejuvError(
            f"the chat template of {_name(tokenizer)} renders the prompt differently once the response follows, "
            "so the response tokens cannot be told apart; render the prompts by hand and use chat_template: never"
        )
    return full, len(ids)


def rendered_text(tokenizer, row: dict, mode: ChatTemplate) -> str:
    """What the model sees for a row, decoded with its special tokens: the prompt, then the
    response when the row has one (calibration, teacher-forced evaluation)."""
    if "response" in row:
        ids, _ = encode_pair(tokenizer, row["prompt"], row["response"], mode)
    else:
        ids = encode_prompt(tokenizer, row["prompt"], mode)
    return tokenizer.decode(ids, skip_special_tokens=False)


def print_rendered(text: str, mode: ChatTemplate, what: str) -> None:
    """Print what the model sees for a command's first `what` row (rendered_text's), once per
    command, on stderr beside the progress bars."""
    body = "\n".join(f"  | {line}" for line in text.split("\n"))
    print(f"what the model sees (first {what} row, chat_template: {mode}):\n{body}", file=sys.stderr, flush=True)
