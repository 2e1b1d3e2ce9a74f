"""Evaluation of a causal LM on prompt/response and prompt/answer data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rayrejuv.data.calibration import batches, tokenize_pairs
from rayrejuv.data.chat import ChatTemplate, encode_prompts
from rayrejuv.method.entropy import token_entropy
from rayrejuv.method.metrics import pass_at_k
from rayrejuv.method.rewards import is_correct
from rayrejuv.models.loading import pad_id
from rayrejuv.models.rollout import left_pad


@torch.no_grad()
def teacher_forced_stats(
    model, tokenizer, rows: list[dict], chat_template: ChatTemplate, batch_size: int = 32, max_length: int = 512
) -> dict[str, float]:
    """SFT cross-entropy and mean predictive entropy over response tokens (teacher-forced)."""
    device = next(model.parameters()).device
    total_loss, total_entropy, n = 0.0, 0.0, 0
    examples = tokenize_pairs(tokenizer, rows, max_length, chat_template)
    for b in batches(examples, batch_size, tokenizer.pad_token_id):
        logits = model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device)).logits.float()
        mask = b.response_mask[:, :-1].to(device)  # (B, T-1): position t predicts a response token
        logits = logits[:, :-1][mask]  # (N, V)
        targets = b.input_ids[:, 1:].to(device)[mask]  # (N,)
        total_loss += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        total_entropy += float(token_entropy(logits).sum())
        n += int(mask.sum())
    return {"sft_loss": total_loss / n, "entropy": total_entropy / n, "tokens": n}


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    num_samples: int,
    do_sample: bool,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
    share_prompts: bool = True,
) -> list[list[str]]:
    """Completions (decoded, special tokens removed) for every prompt (token ids, encode_prompt's):
    num_samples each, in the prompts' order. Batches are cut from the prompts sorted by length, so a
    batch pads to prompts of its own length and stops with answers of similar length (measured on the
    demo's 1000-prompt splits: see benchmarks/bench_eval.py). With num_samples > 1 and share_prompts,
    each prompt's prefill runs once for its samples (models.logprobs.prefilled; the same samples)."""
    from rayrejuv.models.logprobs import generate_inputs

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    texts_of: dict[int, list[str]] = {}
    for i in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = order[i : i + batch_size]
        ids, attn = left_pad([prompt_ids[j] for j in batch], pad_id(tokenizer))  # (B, P): continue at the right
        gen = model.generate(
            **generate_inputs(model, ids.to(device), attn.to(device), num_samples, share_prompts),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=1.0 if do_sample else None,
            top_k=0 if do_sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        texts_of |= {j: texts[k * num_samples : (k + 1) * num_samples] for k, j in enumerate(batch)}
    return [texts_of[j] for j in range(len(prompt_ids))]


@dataclass
class PassAtK:
    pass_at_1: float  # greedy
    pass_at_k: float  # unbiased estimate from n samples
    sample_accuracy: float  # mean correctness of the samples
    k: int
    n: int

    @property
    def gap(self) -> float:
        return self.pass_at_k - self.pass_at_1


def evaluate_pass_at_k(
    model,
    tokenizer,
    rows: list[dict],
    *,
    chat_template: ChatTemplate,
    k: int = 8,
    n: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> PassAtK:
    n = n or k
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in rows], chat_template)
    greedy = generate(
        model,
        tokenizer,
        prompts,
        num_samples=1,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc="greedy",
    )
    samples = generate(
        model,
        tokenizer,
        prompts,
        num_samples=n,
        do_sample=True,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=max(1, batch_size // n),
        seed=seed,
        progress=progress,
        desc=f"sample x{n}",
    )
    return score_pass_at_k(greedy, samples, rows, k)


def score_pass_at_k(greedy: list[list[str]], samples: list[list[str]], rows: list[dict], k: int) -> PassAtK:
    """Greedy pass@1 and unbiased pass@k from completion texts (one greedy, n samples per row)."""
    n = len(samples[0])
    g = [is_correct(c[0], r["answer"]) for c, r in zip(greedy, rows)]
    correct = [sum(is_correct(s, r["answer"]) for s in c) for c, r in zip(samples, rows)]
    return PassAtK(
        pass_at_1=sum(g) / len(rows),
        pass_at_k=sum(pass_at_k(n, c, k) for c in correct) / len(rows),
        sample_accuracy=sum(correct) / (n * len(rows)),
        k=k,
        n=n,
    )


def greedy_pass_at_1(
    model, tokenizer, rows: list[dict], max_new_tokens: int, chat_template: ChatTemplate, batch_size: int = 64
) -> float:
    """Fraction of prompts whose greedy completion has the right final answer."""
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in rows], chat_template)
    texts = generate(model, tokenizer, prompts, num_samples=1, do_sample=False, max_new_tokens=max_new_tokens,
                     batch_size=batch_size)
    return sum(is_correct(t[0], r["answer"]) for t, r in zip(texts, rows)) / len(rows)


def score_checkpoint(
    model_dir, splits: dict[str, list[dict]], entropy_rows: list[dict], max_new_tokens: int,
    chat_template: ChatTemplate, role: str = "evaluated", batch_size: int = 256,
) -> dict[str, float]:  # fmt: skip
    """Greedy pass@1 on each named split, and the mean teacher-forced token entropy on
    `entropy_rows` (prompt/response): the numbers of the demo's table, for one checkpoint.
    `batch_size` prompts per generate (the demo's 200-prompt splits in one: measured on one core,
    4.1 s for both splits vs 5.5 s in batches of 64, the same scores)."""
    from rayrejuv.io.checkpoint import Checkpoint
    from rayrejuv.models.loading import load_model, load_tokenizer

    ckpt = Checkpoint(model_dir, role=role)
    model, tok = load_model(ckpt, torch.float32, torch.device("cpu")), load_tokenizer(ckpt)
    scores = {name: greedy_pass_at_1(model, tok, rows, max_new_tokens, chat_template, batch_size)
              for name, rows in splits.items()}
    scores["entropy"] = teacher_forced_stats(model, tok, entropy_rows, chat_template)["entropy"]
    return scores
