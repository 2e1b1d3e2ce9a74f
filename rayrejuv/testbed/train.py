"""A plain causal-LM trainer for the tiny world: no warmup, no weight decay; a constant LR, or a
cosine decay to a tenth of it (a pure function of the step, so a resumed run continues it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from tqdm.auto import tqdm

from rayrejuv.data.calibration import CalibrationBatch, collate, tokenize_pairs


def steps_for(epochs: float, num_examples: int, batch_size: int) -> int:
    return max(1, round(epochs * num_examples / batch_size))


def lr_at(lr: float, step: int, num_steps: int, schedule: Literal["constant", "cosine"]) -> float:
    """The learning rate of 0-based `step` of `num_steps`: constant, or cosine from lr to lr / 10."""
    if schedule == "constant":
        return lr
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, num_steps - 1))))


def response_loss(model, batch, num_tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of the response tokens (all tokens of a pre-training row) of `batch`: their
    mean, or their sum over `num_tokens` (a micro-batch's share of its step's mean)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
    targets = batch.input_ids[:, 1:].masked_fill(~batch.response_mask[:, :-1], -100)  # (B, T-1)
    flat = (logits[:, :-1].flatten(0, 1), targets.flatten())
    if num_tokens is None:
        return torch.nn.functional.cross_entropy(*flat, ignore_index=-100)
    return torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="sum") / num_tokens


def micro_batches(examples: list[tuple[list[int], int]], count: int, pad_id: int) -> list[CalibrationBatch]:
    """One step's examples as `count` micro-batches: sorted by length and cut in consecutive runs,
    each padded to its own longest row (a batch pads to its longest: on the world's pre-training
    texts, 69% of the positions of one batch are real, 92% of four). count 1: the batch as drawn."""
    if count == 1:
        return [collate(examples, pad_id)]
    ranked = sorted(examples, key=lambda e: len(e[0]))
    size = math.ceil(len(ranked) / count)
    return [collate(ranked[i : i + size], pad_id) for i in range(0, len(ranked), size)]


def batch_order(num_examples: int, num_steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The example indices of every step: a function of the seed alone, so runs of different
    lengths (and a resumed run) see the same sequence."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < num_steps * batch_size:
        order += torch.randperm(num_examples, generator=g).tolist()
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(num_steps)]


def train_step(model, opt: torch.optim.Optimizer, micros: list[CalibrationBatch]) -> float:
    """One optimizer step on one step's micro-batches; returns the step's mean response loss."""
    num_tokens = None if len(micros) == 1 else sum(int(m.response_mask.sum()) for m in micros)
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for micro in micros:
        part = response_loss(model, micro, num_tokens)
        part.backward()
        loss += part.item()
    opt.step()
    return loss


def train_pairs(
    model,
    tokenizer,
    rows: list[dict[str, str]],
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_step: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
    lr_schedule: Literal["constant", "cosine"] = "constant",
    micro_batch_count: int = 1,
) -> list[float]:
    """Teacher-forced training on prompt/response pairs, loss on response tokens only.

    A row with an empty prompt trains on its whole text (pre-training). `on_step(step, loss,
    optimizer)` runs after every step (1-based), e.g. to save ladder checkpoints; `start_step` and
    `optimizer_state` resume a run. `micro_batch_count` > 1 accumulates each step's gradient over
    that many length-sorted micro-batches (micro_batches): the same step, less padding. Returns the
    loss of every step run.
    """
    examples = tokenize_pairs(tokenizer, rows, 1 << 16, "auto")  # conversational rows templated, plain ones as they are
    n_steps = steps_for(epochs, len(examples), batch_size)
    order = batch_order(len(examples), n_steps, batch_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    model.train()
    losses = []
    bar = tqdm(
        range(start_step, n_steps), desc=desc, unit="step", disable=not progress, initial=start_step, total=n_steps
    )
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(lr, step, n_steps, lr_schedule)
        micros = micro_batches([examples[i] for i in order[step]], micro_batch_count, tokenizer.pad_token_id)
        losses.append(train_step(model, opt, micros))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            model.eval()
            on_step(step + 1, losses[-1], opt)
            model.train()
    model.eval()
    return losses
