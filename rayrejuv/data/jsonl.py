"""Validated jsonl readers: every line an object with the required fields.

Fields are non-empty strings, except `prompt`, which may also be conversational (TRL's
convention): a non-empty list of {"role": "system"|"user"|"assistant", "content": str} messages,
rendered by the tokenizer's chat template (rayrejuv.data.chat).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayrejuv.errors import RejuvError

CONVERSATIONAL = ("prompt",)  # fields that may hold a list of messages instead of a string
ROLES = ("system", "user", "assistant")


def message_problem(messages: list) -> str | None:
    """What is wrong with a conversational field (None: nothing)."""
    if not messages:
        return "is an empty list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f'message {i} must be an object {{"role": ..., "content": ...}} with exactly those keys'
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}; roles are {list(ROLES)}"
        if not isinstance(m["content"], str):
            return f"message {i} content must be a string"
    return None


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with a required field's value (None: nothing)."""
    if name in CONVERSATIONAL and isinstance(value, list):
        problem = message_problem(value)
        return None if problem is None else f"field {name!r} {problem}"
    if isinstance(value, str) and value:
        return None
    chat = " or a non-empty list of {role, content} messages" if name in CONVERSATIONAL else ""
    return f"field {name!r} must be a non-empty string{chat}"


def _row(path: Path, lineno: int, line: str, fields: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise RejuvError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise RejuvError(f"{path}:{lineno}: expected a JSON object with fields {list(fields)}")
    for k in fields:
        problem = field_problem(k, row.get(k))
        if problem is not None:
            raise RejuvError(f"{path}:{lineno}: {problem}; fields: {list(fields)}")
    return {k: row[k] for k in (*fields, *optional) if k in fields or isinstance(row.get(k), str)}


def read_jsonl(
    path: str | Path, fields: tuple[str, ...], what: str, optional: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Rows with the required `fields`; an `optional` (string) field is kept only if every row has it."""
    path = Path(path)
    if not path.is_file():
        raise RejuvError(f"{what} file {path} does not exist; pass a jsonl file with fields {list(fields)}")
    with open(path, encoding="utf-8") as f:
        rows = [_row(path, n, line, fields, optional) for n, line in enumerate(f, 1) if line.strip()]
    if not rows:
        raise RejuvError(f"{what} file {path} is empty; it needs jsonl lines with fields {list(fields)}")
    for k in optional:
        if not all(k in r for r in rows):
            for r in rows:
                r.pop(k, None)
    return rows
