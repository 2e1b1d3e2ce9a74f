"""Calibration pairs for the targeted reset: prompt + response, teacher-forced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rayrejuv.data.chat import ChatTemplate, encode_pair, rendered_text
from rayrejuv.data.jsonl import read_jsonl
from rayrejuv.errors import RejuvError


@dataclass
class CalibrationBatch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) True where position t predicts response token t+1


def tokenize_pairs(
    tokenizer, rows: list[dict], max_length: int, chat_template: ChatTemplate
) -> list[tuple[list[int], int]]:
    """(ids, prompt_len) per example (encode_pair's: the prompt as the model sees it, then the
    response ending with the template's end-of-turn, or EOS when not templated), truncated to max_length."""
    out = []
    for row in rows:
        ids, prompt_len = encode_pair(tokenizer, row["prompt"], row["response"], chat_template)
        out.append((ids[:max_length], prompt_len))
    return out


def load_calibration(
    path: str | Path, tokenizer, max_length: int, chat_template: ChatTemplate
) -> list[tuple[list[int], int]]:
    rows = read_jsonl(path, ("prompt", "response"), "calibration")
    examples = tokenize_pairs(tokenizer, rows, max_length, chat_template)
    if not any(len(ids) > p for ids, p in examples):
        raise RejuvError(
            f"calibration file {path}: no example has a response token within max_length={max_length} "
            "(prompts too long or responses empty); shorten the prompts or raise max_length"
        )
    return [(ids, p) for ids, p in examples if len(ids) > p]


def first_rendered(path: str | Path, tokenizer, chat_template: ChatTemplate) -> str:
    """What the model sees for the calibration file's first row: its prompt and response, rendered."""
    return rendered_text(tokenizer, read_jsonl(path, ("prompt", "response"), "calibration")[0], chat_template)


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> CalibrationBatch:
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (ids, prompt_len) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
        # position t predicts token t+1; response tokens are ids[prompt_len:]
        response_mask[b, max(prompt_len - 1, 0) : len(ids) - 1] = True
    return CalibrationBatch(input_ids, attention_mask, response_mask)


def batches(examples: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> list[CalibrationBatch]:
    return [collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
