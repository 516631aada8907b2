"""Reading JSON that a user or another program wrote: bounded, and one-line errors.

Python's json module raises RecursionError on deeply nested input and ValueError on an
integer of more than 4300 digits (CPython's int/str limit), and reads NaN/Infinity, which are
not JSON. Every reader of untrusted JSON (manifests, jsonl rows, responses files, resume
state, server answers) goes through `loads`, so these become one `UserError` naming where.
"""

from __future__ import annotations

import json
from pathlib import Path

from r1v3.errors import UserError

MAX_DEPTH = 64  # far deeper than any file we read; a hostile one is 100,000 deep
MAX_INT_DIGITS = 100  # a row id or a size, never a 5,000-digit number


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings, counted without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(text: str | bytes, where: str):
    """Parse `text`; any problem is a UserError that starts with `where` (file, row)."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as e:
            raise UserError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if _depth(text) > MAX_DEPTH:
        raise UserError(f"{where}: JSON nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{where}: unreadable JSON: {str(e)[:120]}") from None


def read(path: str | Path, where: str | None = None):
    """`loads` of a file's text; OS errors become the same one-line UserError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{where or p}: cannot read: {e.strerror or e}") from None
    return loads(raw, where or str(p))
