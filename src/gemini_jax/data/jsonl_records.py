"""Small JSONL files read whole (preference pairs, RL prompts): one record a line, a malformed
line skipped and counted within a budget, every error naming its file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gemini_jax.data.examples import ExampleError
from gemini_jax.data.records import DataError

T = TypeVar("T")


def read_jsonl(path: str | os.PathLike, parse: Callable[[object, Path, str], T], *, what: str,
               max_bad_records: int = 0) -> list[T]:
    """`parse(record, base_dir, where)` of every line of `path`. A line that is not JSON, or that
    `parse` refuses with an ExampleError, is skipped; past `max_bad_records` skips a DataError
    names the first bad lines. `what` names the records in errors ("preference pairs")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file of {what} (JSONL, one a line)")
    records, bad = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                records.append(parse(json.loads(line), path.parent, where))
            except json.JSONDecodeError as e:
                bad.append(f"{where}: not JSON ({e.msg} at column {e.colno})")
            except ExampleError as e:
                bad.append(str(e))
    if len(bad) > max_bad_records:
        shown = "\n  ".join(bad[:5])
        raise DataError(f"{path}: {len(bad)} bad records of {what} (at most {max_bad_records} may be skipped: "
                        f"--max-bad-records):\n  {shown}")
    if not records:
        raise DataError(f"{path}: no {what}")
    return records
