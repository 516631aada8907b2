"""The jsonl files of resumable stages: one JSON record a line, appended and fsynced as results
arrive, read back up to the first line a kill cut short.

A kill can land inside an append, so the last line may be torn; nothing after it was ever
acknowledged. `read` stops there (or at the first record of the wrong shape), and a stage
`rewrite`s the file with what was read back before appending again, so that a torn line never
ends up in the middle of the file where it would stop every later read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from r1v3 import jsonio
from r1v3.artifacts import write_atomic
from r1v3.errors import UserError


def read(path: Path, valid: Callable[[object], bool], strict: str | None = None) -> list:
    """The records of `path` (none if it does not exist) before the first line that is not
    bounded JSON (`jsonio.loads`) or that `valid` refuses. With `strict`, what a record holds (a
    published file is whole, so a bad line there is damage), that line is a UserError naming
    the file and line instead."""
    out: list = []
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            where = f"{path} line {n}"
            try:
                rec = jsonio.loads(line, where)
                if not valid(rec):
                    raise UserError(f"{where}: not {strict}")
            except UserError:
                if strict:
                    raise
                break
            out.append(rec)
    return out


def lines(records: Iterable) -> str:
    """The file's text: each record's JSON on a line of its own."""
    return "".join(json.dumps(r) + "\n" for r in records)


def append(f, records: Iterable) -> None:
    """Add `records` to the open file `f` in one write, then flush and fsync: once this returns they
    outlive a kill or a power cut. The caller opens the file (`open(path, "a")`)."""
    f.write(lines(records))
    f.flush()
    os.fsync(f.fileno())


def rewrite(path: Path, records: Iterable) -> None:
    """Replace `path` atomically with exactly `records` (what `read` kept), dropping a torn tail."""
    write_atomic(path, lines(records))
