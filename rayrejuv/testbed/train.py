"""A plain causal-LM trainer for the tiny world: constant LR, no warmup, no decay, no weight decay."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rayrejuv.data.calibration import collate, tokenize_pairs


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
) -> list[float]:
    """Teacher-forced training on prompt/response pairs, loss on response tokens only.

    A row with an empty prompt trains on its whole text (pre-training). The data order is a
    function of `seed` alone, so runs of different lengths see the same sequence.
    Returns the loss of every step.
    """
    examples = tokenize_pairs(tokenizer, rows, max_length=1 << 16)
    pad = tokenizer.pad_token_id
    g = torch.Generator().manual_seed(seed)
    n_steps = max(1, round(epochs * len(examples) / batch_size))
    order: list[int] = []
    while len(order) < n_steps * batch_size:
        order += torch.randperm(len(examples), generator=g).tolist()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in tqdm(range(n_steps), desc=desc, unit="step", disable=not progress):
        batch = collate([examples[i] for i in order[step * batch_size : (step + 1) * batch_size]], pad)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
        targets = batch.input_ids[:, 1:].masked_fill(~batch.response_mask[:, :-1], -100)  # (B, T-1)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
