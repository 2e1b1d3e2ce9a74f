"""A synthetic, verifiable multi-step arithmetic world.

Each problem is a short word problem with a worked solution ending in `#### n`. Splits:
  - id:  the SFT distribution: 2 steps, numbers 0..id_max, templates 0..2
  - ood: harder: 3 steps, numbers up to ood_max, and templates the SFT set never shows
The generator is a pure function of (split, seed, index): reproducible anywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ITEMS = ("apples", "pens", "cards", "coins", "eggs", "books", "stamps", "shells")
NAMES = ("tom", "ana", "li", "sam", "eva", "max", "zoe", "raj")

# A template: prompt text with {n}{x}{v0}.. slots, and the operation of each step ("+" or "-").
# The first value is a start amount; every later value is added or subtracted.
ID_TEMPLATES = (
    ("{n} has {v0} {x}. gets {v1} more. gives away {v2}. how many {x}?", "+-"),
    ("{n} had {v0} {x}, found {v1}, then lost {v2}. {x} now?", "+-"),
    ("a box holds {v0} {x}. {v1} are taken out. {v2} are put in. how many?", "-+"),
)
OOD_TEMPLATES = (
    ("{n} starts with {v0} {x}; buys {v1}; sells {v2}; buys {v3}. total?", "+-+"),
    ("there are {v0} {x}. {v1} leave, {v2} arrive, {v3} leave. count?", "-+-"),
)


@dataclass(frozen=True)
class Split:
    name: str
    templates: tuple[tuple[str, str], ...]
    max_number: int
    steps: int  # number of operations


def default_splits(id_max: int = 20, ood_max: int = 40) -> dict[str, Split]:
    return {
        "id": Split("id", ID_TEMPLATES, id_max, 2),
        "ood": Split("ood", OOD_TEMPLATES, ood_max, 3),
    }


def make_problem(split: Split, rng: random.Random) -> dict[str, str]:
    """One problem; values are drawn so every intermediate result stays in 0..2*max."""
    template, ops = rng.choice(split.templates)
    assert len(ops) == split.steps
    values = [rng.randint(0, split.max_number)]
    total = values[0]
    lines = []
    for op in ops:
        if op == "+":
            v = rng.randint(0, split.max_number)
            new = total + v
        else:
            v = rng.randint(0, min(total, split.max_number))  # never negative
            new = total - v
        lines.append(f"{total}{op}{v}={new}.")
        values.append(v)
        total = new
    prompt = template.format(n=rng.choice(NAMES), x=rng.choice(ITEMS), **{f"v{i}": x for i, x in enumerate(values)})
    response = " ".join(lines) + f" #### {total}"
    return {"prompt": f"Q: {prompt} A:", "response": " " + response, "answer": str(total)}


def generate(split: Split, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"{split.name}:{seed}")
    return [make_problem(split, rng) for _ in range(n)]


def pretraining_text(n: int, max_number: int, seed: int) -> list[dict[str, str]]:
    """Generic domain text: equation chains and plain sentences about quantities, never the
    Q:/A: format or the '####' answer marker, so the base knows arithmetic but not the task."""
    rng = random.Random(f"pretrain:{seed}")
    rows = []
    for _ in range(n):
        if rng.random() < 0.6:
            total = rng.randint(0, 2 * max_number)
            parts = []
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:
                    v = rng.randint(0, max_number)
                    parts.append(f"{total}+{v}={total + v}.")
                    total += v
                else:
                    v = rng.randint(0, total)
                    parts.append(f"{total}-{v}={total - v}.")
                    total -= v
            text = " ".join(parts)
        else:
            text = f"{rng.choice(NAMES)} has {rng.randint(0, 2 * max_number)} {rng.choice(ITEMS)}."
        rows.append({"prompt": "", "response": text})
    return rows
