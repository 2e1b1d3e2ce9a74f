"""The real-model world: the testbed's arithmetic task in chat form, and an SFT of the top layers.

A pretrained instruct model is fine-tuned on CPU in minutes by training only its last layers.
The layers below them are frozen, so their output for each SFT example is computed once
(`prefix_states`) and every step runs only the trained layers (`top_loss`), with the LM head
applied at the response positions alone (the 49152-word head is a third of the model's FLOPs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from rayrejuv.data.calibration import CalibrationBatch, collate
from rayrejuv.data.chat import encode_pair
from rayrejuv.testbed import task
from rayrejuv.testbed.train import batch_order, steps_for

Example = tuple[list[int], int]  # (ids, prompt_len), encode_pair's
# Which fields each chat-form data file keeps (eval keeps the worked response: diagnose measures SFT loss on it).
DATA_FIELDS = {
    "sft": ("prompt", "response"),
    "calibration": ("prompt", "response"),
    "rl_train": ("prompt", "answer"),
    "eval": ("prompt", "answer", "response"),
}


def chat_row(problem: dict[str, str]) -> dict[str, Any]:
    """A task problem as a conversational row: the question as the user turn (without the tiny model's
    'Q: ... A:' frame, which the chat template replaces), the worked solution as the assistant turn."""
    question = problem["prompt"].removeprefix("Q: ").removesuffix(" A:")
    return {
        "prompt": [{"role": "user", "content": question}],
        "response": problem["response"].strip(),
        "answer": problem["answer"],
    }


def chat_splits(sizes: dict[str, int], id_max: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Disjoint slices of one seeded pool of ID problems, one per data file (sizes keyed as DATA_FIELDS)."""
    pool = task.generate(task.default_splits(id_max)["id"], sum(sizes[name] for name in DATA_FIELDS), seed)
    rows, start = {}, 0
    for name in DATA_FIELDS:
        rows[name] = [{k: r[k] for k in DATA_FIELDS[name]} for r in map(chat_row, pool[start : start + sizes[name]])]
        start += sizes[name]
    return rows


def encode_rows(tokenizer, rows: list[dict[str, Any]]) -> list[Example]:
    return [encode_pair(tokenizer, r["prompt"], r["response"], "auto") for r in rows]


@contextmanager
def only_layers(model, start: int) -> Iterator[None]:
    """The decoder holds layers[start:] for the block: its forward then runs those alone (inputs_embeds
    in, final norm out)."""
    inner = model.model
    every = inner.layers
    inner.layers = torch.nn.ModuleList(every[start:])
    try:
        yield
    finally:
        inner.layers = every


def freeze_below(model, first_trained: int) -> list[torch.nn.Parameter]:
    """Only layers[first_trained:] learn; embeddings (and so a tied head), lower layers, final norm stay."""
    model.requires_grad_(False)
    for layer in model.model.layers[first_trained:]:
        layer.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def prefix_states(model, examples: list[Example], first_trained: int, batch_size: int, pad_id: int):
    """Per example, the hidden states entering layer `first_trained`: a (T_i, H) tensor.
    hidden_states[k] is the input of layer k (hidden_states[0] the embeddings); right padding
    never reaches a real position (causal attention)."""
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk, pad_id)
        h = model.model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        out += [s[: len(ids)].clone() for s, (ids, _) in zip(h.hidden_states[first_trained], chunk)]
    return out


def top_loss(model, states: list[torch.Tensor], batch: CalibrationBatch, first_trained: int) -> torch.Tensor:
    """Mean cross-entropy of the response tokens, running only layers[first_trained:] from `states`:
    equal to the full model's loss while the layers below are unchanged."""
    T = batch.input_ids.shape[1]
    h = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, T - len(s))) for s in states])  # (B, T, H)
    with only_layers(model, first_trained):
        h = model.model(inputs_embeds=h, attention_mask=batch.attention_mask).last_hidden_state
    mask = batch.response_mask[:, :-1]  # position t predicts token t+1
    logits = model.get_output_embeddings()(h[:, :-1][mask])  # (N response tokens, V)
    return torch.nn.functional.cross_entropy(logits.float(), batch.input_ids[:, 1:][mask])


@torch.no_grad()
def response_loss(model, examples, states, first_trained: int, batch_size: int, pad_id: int) -> float:
    """Mean response-token loss over all examples (token-weighted), through the top layers."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id)
        n = int(batch.response_mask[:, :-1].sum())
        total += top_loss(model, states[i : i + batch_size], batch, first_trained).item() * n
        count += n
    return total / count


def train_top_layers(model, examples, states, *, first_trained: int, epochs: float, lr: float, batch_size: int,
                     seed: int, pad_id: int, progress: bool) -> list[float]:
    """AdamW (constant LR, no weight decay) on layers[first_trained:]; the step losses."""
    params = freeze_below(model, first_trained)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = batch_order(len(examples), steps_for(epochs, len(examples), batch_size), batch_size, seed)
    losses: list[float] = []
    bar = tqdm(order, desc=f"SFT layers {first_trained}+", unit="step", disable=not progress)
    for idx in bar:
        loss = top_loss(model, [states[i] for i in idx], collate([examples[i] for i in idx], pad_id), first_trained)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.requires_grad_(False)
    return losses
