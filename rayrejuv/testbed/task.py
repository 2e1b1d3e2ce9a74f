"""A synthetic, verifiable multi-step arithmetic world.

Each problem is a short word problem with a worked solution ending in `#### n`. Four
distributions, all built by one solver so their worked solutions share one format:
  - base: what the base model is pre-trained on, beside generic equation text: Q/A word problems
    of 1..3 steps composed from a phrase bank whose verbs the ID templates never use. The base
    knows the format, the `####` marker and multi-step chaining, but not the ID phrasing.
  - id:   the SFT distribution: 2 steps (or 3: `id_steps`), numbers 0..id_max, templates 0..2
          (own verbs)
  - ood:  3 steps, numbers up to ood_max, templates the SFT set never shows but whose verbs the
          base knows: reachable from the base, so SFT can forget it and fusion can bring it back
  - general: held-out problems of the base's own Q/A distribution (1..3 steps, numbers
          0..id_max): what SFT on the ID phrasing makes the model forget (the paper's out-of-domain
          abilities; measured: SFT makes every answer two steps, so the base's one-step problems
          fall from 0.43 to 0.06), and what fusion with the base can keep
  - hard: the ID templates (their steps) with numbers up to hard_max (default ood_max): the SFT
          task made harder, where
          every SFT rung is half right and RL has room to improve (the demo's RL distribution,
          as the paper's RL prompts are harder math than its SFT data)
  - wide: the ID templates and their 3-step variants with numbers up to ood_max, a superset of
          the SFT distribution (measured: out of every SFT rung's reach, each writes 2 steps)
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
# 3-step variants of the ID templates (same phrases, one more step): the `wide` split's second
# half, and the ID task itself with `id_steps: 3`.
ID3_TEMPLATES = (
    ("{n} has {v0} {x}. gets {v1} more. gives away {v2}. gets {v3} more. how many {x}?", "+-+"),
    ("{n} had {v0} {x}, found {v1}, then lost {v2}, then found {v3}. {x} now?", "+-+"),
    ("a box holds {v0} {x}. {v1} are taken out. {v2} are put in. {v3} are taken out. how many?", "-+-"),
)
ID_TEMPLATES_BY_STEPS = {2: ID_TEMPLATES, 3: ID3_TEMPLATES}
WIDE_TEMPLATES = ID_TEMPLATES + ID3_TEMPLATES

# The base's phrase bank. Its verbs are disjoint from the ID templates' (more, gives, found,
# lost, taken, put), so the ID phrasing is the one thing SFT has to teach; it shares the OOD
# templates' verbs (buys, sells, arrive, leave) in other sentence frames.
BASE_STARTS = ("{n} owns {v} {x}.", "a bag has {v} {x}.", "{n} starts with {v} {x}.", "there are {v} {x}.")
BASE_STEPS = {
    "+": ("{n} buys {v}.", "{n} wins {v}.", "{v} arrive.", "adds {v}."),
    "-": ("{n} sells {v}.", "{n} drops {v}.", "{v} leave.", "uses {v}."),
}
BASE_QUESTIONS = ("how many now?", "what is left?", "count?", "total?")
# Generic pre-training rows are packed to at least this many characters (a Q/A problem is 60-110).
GENERIC_ROW_CHARS = 64


@dataclass(frozen=True)
class Split:
    name: str
    templates: tuple[tuple[str, str], ...]
    max_number: int


def default_splits(
    id_max: int = 20, ood_max: int = 40, id_steps: int = 2, hard_max: int | None = None
) -> dict[str, Split]:
    """The named splits; `id_steps` picks the ID templates (2 or 3 steps, for id and hard),
    `hard_max` the largest number of hard and wide (None: ood_max)."""
    id_templates, hard_max = ID_TEMPLATES_BY_STEPS[id_steps], ood_max if hard_max is None else hard_max
    return {
        "id": Split("id", id_templates, id_max),
        "ood": Split("ood", OOD_TEMPLATES, ood_max),
        "hard": Split("hard", id_templates, hard_max),
        "wide": Split("wide", WIDE_TEMPLATES, hard_max),
    }


def _solve(ops: str, max_number: int, rng: random.Random) -> tuple[list[int], str, int]:
    """Values for the operations, drawn so every result stays non-negative, the worked
    solution `a+b=c. c-d=e. #### e`, and the answer."""
    values = [rng.randint(0, max_number)]
    total = values[0]
    lines = []
    for op in ops:
        if op == "+":
            v = rng.randint(0, max_number)
            new = total + v
        else:
            v = rng.randint(0, min(total, max_number))  # never negative
            new = total - v
        lines.append(f"{total}{op}{v}={new}.")
        values.append(v)
        total = new
    return values, " ".join(lines) + f" #### {total}", total


def _row(prompt: str, response: str, total: int) -> dict[str, str]:
    return {"prompt": f"Q: {prompt} A:", "response": " " + response, "answer": str(total)}


def make_problem(split: Split, rng: random.Random) -> dict[str, str]:
    template, ops = rng.choice(split.templates)
    values, response, total = _solve(ops, split.max_number, rng)
    prompt = template.format(n=rng.choice(NAMES), x=rng.choice(ITEMS), **{f"v{i}": x for i, x in enumerate(values)})
    return _row(prompt, response, total)


def base_problem(rng: random.Random, max_number: int, max_steps: int, ops: str | None = None) -> dict[str, str]:
    """A Q/A problem of 1..max_steps steps (or exactly `ops`) composed from the base's phrase bank."""
    ops = ops or "".join(rng.choice("+-") for _ in range(rng.randint(1, max_steps)))
    values, response, total = _solve(ops, max_number, rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    parts = [rng.choice(BASE_STARTS).format(n=name, x=item, v=values[0])]
    parts += [rng.choice(BASE_STEPS[op]).format(n=name, v=v) for op, v in zip(ops, values[1:])]
    parts.append(rng.choice(BASE_QUESTIONS))
    return _row(" ".join(parts), response, total)


def general_problems(n: int, max_number: int, max_steps: int, seed: int, exclude: set[str]) -> list[dict[str, str]]:
    """Held-out problems of the base's own Q/A distribution (its phrase bank, 1..max_steps steps,
    numbers 0..max_number); texts in `exclude` (the base's pre-training texts) are skipped, so
    none was seen in pre-training."""
    rng = random.Random(f"general:{seed}")
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        p = base_problem(rng, max_number, max_steps)
        if p["prompt"] + p["response"] not in exclude:
            rows.append(p)
    return rows


def generate(split: Split, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"{split.name}:{seed}")
    return [make_problem(split, rng) for _ in range(n)]


def _equation_chain(rng: random.Random, max_number: int) -> str:
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
    return " ".join(parts)


def _generic_piece(rng: random.Random, max_number: int) -> str:
    if rng.random() < 0.6:
        return _equation_chain(rng, max_number)
    return f"{rng.choice(NAMES)} has {rng.randint(0, 2 * max_number)} {rng.choice(ITEMS)}."


def pretraining_text(n: int, max_number: int, seed: int, qa_fraction: float, qa_max_steps: int) -> list[dict[str, str]]:
    """The base's corpus, as whole texts (empty prompt): a `qa_fraction` of Q/A problems from the
    phrase bank (format, marker and chaining, never the ID phrasing), the rest generic text:
    equation chains and plain sentences about quantities, packed to about a Q/A problem's length
    (a batch pads to its longest row: short rows would cost as much and teach less)."""
    rng = random.Random(f"pretrain:{seed}")
    rows = []
    for _ in range(n):
        if rng.random() < qa_fraction:
            p = base_problem(rng, max_number, qa_max_steps)
            text = p["prompt"] + p["response"]
        else:
            pieces = [_generic_piece(rng, max_number)]
            while sum(len(x) + 1 for x in pieces) < GENERIC_ROW_CHARS:
                pieces.append(_generic_piece(rng, max_number))
            text = " ".join(pieces)
        rows.append({"prompt": "", "response": text})
    return rows
