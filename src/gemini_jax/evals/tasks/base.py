"""What a benchmark task is, and the checked readers its loaders share.

A `Task` is a loader (local files in the benchmark's published layout -> `Item`s, plus the
items k-shot prompts take their shots from), a prompt format, an answer extractor, its
metrics (metrics.py) and a default protocol (protocols.py): multiple choice by
log-likelihood, generation (greedy, or maj@k with --samples), corpus-level generation
(BLEU, WER) or code (pass@k in the sandbox).

Every reader checks what it reads: a missing file, a malformed JSON line or CSV row, a
missing or wrong-typed field is a `TaskDataError` that names the file, the line (or the
record's index) and the field, and says what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gemini_jax.data.examples import Example

Prompt = str | Example


class TaskDataError(ValueError):
    """A benchmark file that is missing or does not follow the benchmark's published layout."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One question. `prompt` is what the model reads after the shots; `golds` the accepted
    answers (for multiple choice: the gold choice, `label` its index into `choices`)."""

    id: str
    prompt: Prompt
    golds: tuple[str, ...]
    choices: tuple[str, ...] = ()
    label: int | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskData:
    items: list[Item]
    shots: list[Item] = dataclasses.field(default_factory=list)  # the pool k-shot prompts draw from


class Asking(enum.Enum):
    """How a task's questions are asked (runner.py)."""

    CHOICE = "choice"  # multiple choice by log-likelihood
    GENERATE = "generate"  # greedy, or maj@k with --samples
    CORPUS = "corpus"  # greedy, scored over the whole corpus (BLEU, WER)
    CODE = "code"  # pass@k in the sandbox


def zero_shot(item: Item, pool: Sequence[Item], k: int) -> Prompt:
    """The prompt of a task asked 0-shot by design: the question alone, whatever --shots says."""
    return item.prompt


@dataclasses.dataclass(frozen=True)
class Task:
    """`load(dir)` reads `data_dir / folder`; `prompt(item, shot_pool, k)` builds the whole k-shot prompt;
    `extract(output)` reads the answer out of a generation (None: no answer found)."""

    name: str
    description: str
    load: Callable[[Path], TaskData]
    protocol: Asking
    metrics: tuple[str, ...]
    prompt: Callable[[Item, Sequence[Item], int], Prompt] = zero_shot
    extract: Callable[[str], str | None] = str.strip
    default_shots: int = 0
    max_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    per_char: bool = False  # multiple choice: compare log-likelihoods per character of the choice
    lettered: bool = False  # multiple choice whose prompt names each choice by a letter: a generation can pick one
    cot_cue: str = ""  # appended to the prompt to ask for a chain of thought ending "The answer is X"; "": none
    folder: str = ""  # under --data-dir; "" for tasks whose data ships in a package

    def __post_init__(self):
        if not isinstance(self.protocol, Asking):
            raise ValueError(f"task {self.name}: protocol must be an Asking, got {self.protocol!r}")

    @property
    def takes_shots(self) -> bool:
        """Whether its prompts hold k shots (--shots), or it is asked 0-shot by design."""
        return self.prompt is not zero_shot


# --- checked readers ---------------------------------------------------------------------------


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TaskDataError(f"{path}: no such file or directory (expected {what})")
    return path


def read_json(path: Path, what: str) -> Any:
    require(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: line {e.lineno}: malformed JSON ({e.msg}); expected {what}") from None


def read_jsonl(path: Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for each non-blank line; `where` is "path:line" for error messages."""
    require(path, what)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{where}: malformed JSON line ({e.msg}); expected one {what} object") from None
            if not isinstance(record, dict):
                raise TaskDataError(f"{where}: a line holds a {type(record).__name__}, expected a JSON object")
            yield where, record


def read_csv(path: Path, *, columns: int, what: str) -> Iterator[tuple[str, list[str]]]:
    require(path, what)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != columns:
                raise TaskDataError(f"{where}: {len(row)} columns, expected {columns} ({what})")
            yield where, row


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}


def field(record: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[name], checked to be of `kind` (bool never passes for int)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
    if not isinstance(record, Mapping):
        raise TaskDataError(f"{where}: expected an object with field {name!r}, got {type(record).__name__}")
    if name not in record:
        raise TaskDataError(f"{where}: missing field {name!r} (expected {expected})")
    value = record[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TaskDataError(f"{where}: field {name!r} is {type(value).__name__} {value!r:.40}, expected {expected}")
    return value


def strings(record: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    """A non-empty list of strings (or one string, read as a list of one)."""
    value = field(record, name, (str, list), where)
    values = [value] if isinstance(value, str) else value
    if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise TaskDataError(f"{where}: field {name!r} must be a non-empty list of strings, got {value!r:.60}")
    return tuple(str(v) for v in values)


def media_file(base: Path, relative: str, where: str, name: str) -> str:
    path = base / relative
    if not path.is_file():
        raise TaskDataError(f"{where}: field {name!r} names {relative!r}, but {path} does not exist")
    return str(path)


def take(pool: Sequence[Item], k: int, where: str) -> Sequence[Item]:
    """The first k shots of a pool (the first, not a random k: runs stay comparable)."""
    if k > len(pool):
        raise TaskDataError(f"{k}-shot prompts need {k} shots, but {where} has {len(pool)}")
    return pool[:k]


def letter(text: str) -> str | None:
    """The first standalone capital letter of a generation ("B", "(B)", "B. ..."): a choice."""
    match = re.search(r"\b([A-Z])\b", text)
    return match.group(1) if match else None


def files(folder: Path, pattern: str, what: str) -> list[Path]:
    found = sorted(require(folder, what).glob(pattern))
    if not found:
        raise TaskDataError(f"{folder}: no files matching {pattern!r} (expected {what})")
    return found
