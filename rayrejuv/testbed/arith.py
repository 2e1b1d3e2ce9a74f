"""A minimal synthetic arithmetic world (the full testbed task lives in a later issue)."""

from __future__ import annotations

import random


def equation_text(rng: random.Random, max_n: int) -> str:
    a, b, c = rng.randint(0, max_n), rng.randint(0, max_n), rng.randint(0, max_n)
    s = a + b
    return f"{a}+{b}={s};{s}-{c}={s - c}"


def problem(rng: random.Random, max_n: int) -> dict[str, str]:
    """A two-step problem with a worked answer ending in '#### r'."""
    a, b, c = rng.randint(0, max_n), rng.randint(0, max_n), rng.randint(0, max_n)
    s, r = a + b, a + b - c
    return {"prompt": f"Q:{a}+{b}-{c}?A:", "response": f"{a}+{b}={s};{s}-{c}={r}#### {r}", "answer": str(r)}


def pretraining_rows(n: int, max_n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": "", "response": equation_text(rng, max_n)} for _ in range(n)]


def problems(n: int, max_n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [problem(rng, max_n) for _ in range(n)]
