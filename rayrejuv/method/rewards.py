"""Final-answer extraction and checking for verifiable math (`#### n` or `\\boxed{n}`)."""

from __future__ import annotations

import re
import threading

from rayrejuv.errors import RejuvError

_HASH = re.compile(r"####\s*([^\s#]+)")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
MATH_VERIFY_TIMEOUT_S = 5  # per parse and per verify call: Math-Verify's own default


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


def _math_verify():
    """math_verify's (parse, verify), imported when a non-numeric answer first needs it. A failed
    import is the environment's fault, not the completion's: without it every such answer would
    silently score as wrong."""
    try:
        from math_verify import parse, verify
    except Exception as e:  # ImportError, or a broken dependency raising anything at import
        raise RejuvError(
            f"math_verify cannot be imported ({type(e).__name__}: {e}), so non-numeric answers cannot be checked; "
            "install it: pip install math-verify"
        ) from e
    return parse, verify


def is_correct(completion: str, reference: str) -> bool:
    """Numbers compare exactly; anything else goes through Math-Verify. Malformed -> False."""
    answer = extract_answer(completion)
    if answer is None:
        return False
    if _NUMBER.match(answer) and _NUMBER.match(reference.strip()):
        return float(answer) == float(reference)
    parse, verify = _math_verify()
    # Math-Verify bounds each call with signal.alarm, which only the main thread may set; elsewhere (Ray
    # Train runs the GRPO loop in a thread) it would raise for every answer, so there it runs unbounded
    seconds = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold, got = parse(f"${reference}$", parsing_timeout=seconds), parse(f"${answer}$", parsing_timeout=seconds)
        return bool(verify(gold, got, timeout_seconds=seconds))
    except Exception:  # math_verify raises on unparsable input: a wrong answer, not a crash
        return False
