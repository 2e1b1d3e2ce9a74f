"""Final-answer extraction and checking for verifiable math (`#### n` or `\\boxed{n}`)."""

from __future__ import annotations

import re

_HASH = re.compile(r"####\s*([^\s#]+)")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: malformed


def extract_answer(text: str) -> str | None:
    """The last `\\boxed{...}` or the token after the last `####`; None when there is none."""
    boxed = _boxed(text)
    if boxed:
        return boxed
    found = _HASH.findall(text)
    return found[-1].rstrip(".") if found else None


def is_correct(completion: str, reference: str) -> bool:
    """Numbers compare exactly; anything else goes through Math-Verify. Malformed -> False."""
    answer = extract_answer(completion)
    if answer is None:
        return False
    if _NUMBER.match(answer) and _NUMBER.match(reference.strip()):
        return float(answer) == float(reference)
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${reference}$"), parse(f"${answer}$")))
    except Exception:  # math_verify raises on unparsable input: a wrong answer, not a crash
        return False
