"""Validated jsonl readers: every line an object with the required non-empty string fields."""

from __future__ import annotations

import json
from pathlib import Path

from rayrejuv.errors import RejuvError


def read_jsonl(
    path: str | Path, fields: tuple[str, ...], what: str, optional: tuple[str, ...] = ()
) -> list[dict[str, str]]:
    """Rows with the required `fields`; an `optional` field is kept only if every row has it."""
    path = Path(path)
    if not path.is_file():
        raise RejuvError(f"{what} file {path} does not exist; pass a jsonl file with fields {list(fields)}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RejuvError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise RejuvError(f"{path}:{lineno}: expected a JSON object with fields {list(fields)}")
            for k in fields:
                if not isinstance(row.get(k), str) or not row[k]:
                    raise RejuvError(f"{path}:{lineno}: field {k!r} must be a non-empty string; fields: {list(fields)}")
            rows.append({k: row[k] for k in (*fields, *optional) if isinstance(row.get(k), str)})
    if not rows:
        raise RejuvError(f"{what} file {path} is empty; it needs jsonl lines with fields {list(fields)}")
    for k in optional:
        if not all(k in r for r in rows):
            for r in rows:
                r.pop(k, None)
    return rows
