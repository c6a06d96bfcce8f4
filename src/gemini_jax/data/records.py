"""Encoded records: examples encoded on first access, bad records counted instead of raised.

    source = encoded_source(examples, tokenizer=tok, config=cfg, max_len=256)
    row = source[0]          # batch.py's keys, or None for a bad record
    source.errors            # ErrorReport(count, first messages)

A bad record (a missing file, an example longer than max_len) never reaches the model; past
`error_budget` distinct bad records the source raises a DataError with the count and the
first errors.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from gemini_jax.config import ModelConfig
from gemini_jax.data import media
from gemini_jax.data.encode import EncodeError, ImageCodes, check_compatible, encode_example
from gemini_jax.data.examples import Example, ExampleError
from gemini_jax.data.media_cache import MediaCache
from gemini_jax.data.tokenizer import Tokenizer

Row = dict[str, np.ndarray]
# Errors that condemn one record, not the run; anything else is a bug and propagates.
RECORD_ERRORS = (media.MediaError, EncodeError, ExampleError)


class DataError(RuntimeError):
    """Too many bad records, or a row that does not fit the batch shape the task declared."""


@dataclasses.dataclass(frozen=True)
class ErrorReport:
    count: int  # distinct bad records seen so far
    first: tuple[str, ...]  # the first few messages


class _ErrorLog:
    def __init__(self, *, budget: int, keep: int = 5):
        self.budget = budget
        self.keep = keep
        self._bad: dict[int, str] = {}
        self._lock = threading.Lock()

    def record(self, index: int, error: Exception) -> None:
        with self._lock:
            self._bad.setdefault(index, f"record {index}: {error}")
            count, first = len(self._bad), list(self._bad.values())[: self.keep]
        if count > self.budget:
            raise DataError(
                f"{count} bad records exceed error_budget={self.budget}; first errors: " + " | ".join(first))

    def report(self) -> ErrorReport:
        with self._lock:
            return ErrorReport(count=len(self._bad), first=tuple(list(self._bad.values())[: self.keep]))


class EncodedSource(grain.MapDataset):
    """Records encoded on first access; a bad record reads as None (a padding row in `batched`).
    `transform(row, rng)` follows encoding, with a generator seeded by (seed, index)."""

    def __init__(self, records: Sequence[Any], *, encode: Callable[[Any], Row], error_budget: int,
                 cache_rows: bool, transform: Callable[[Row, np.random.Generator], Row] | None = None,
                 seed: int = 0):
        super().__init__()
        self._records = records
        self._encode = encode
        self._transform = transform
        self._seed = seed
        self._errors = _ErrorLog(budget=error_budget)
        self._bad: set[int] = set()
        self._rows: dict[int, Row] | None = {} if cache_rows else None

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Row | None:
        index = index % len(self._records)
        if index in self._bad:
            return None
        if self._rows is not None and index in self._rows:
            return self._rows[index]
        try:
            row = self._encode(self._records[index])
            if self._transform is not None:
                row = self._transform(row, np.random.default_rng([self._seed, index]))
        except RECORD_ERRORS as e:
            self._bad.add(index)
            self._errors.record(index, e)
            return None
        if self._rows is not None:
            self._rows[index] = row
        return row

    @property
    def errors(self) -> ErrorReport:
        return self._errors.report()

    def __str__(self) -> str:
        return f"EncodedSource({len(self)} records)"


def encoded_source(
    examples: Sequence[Example],
    *,
    tokenizer: Tokenizer,
    config: ModelConfig,
    max_len: int | None = None,
    error_budget: int = 10,
    cache_rows: bool = False,
    media_cache_bytes: int = 512 << 20,
    transform: Callable[[Row, np.random.Generator], Row] | None = None,
    seed: int = 0,
    image_codes: ImageCodes | None = None,
) -> EncodedSource:
    """A MapDataset of `encode_example` rows, encoded lazily.

    Media files are cached after preprocessing (by path, within media_cache_bytes);
    `cache_rows=True` also keeps every encoded row, which pays off for a small task
    shown for many epochs (rows hold float32 patches: about 4 bytes x pixels each).
    `.errors` reports the bad records met so far. `transform(row, rng)` changes each row as it
    is encoded, with a generator seeded by `seed` and the record's index: once per record, the
    same on every read (an augmentation paid for once, kept with a cached row). `image_codes`
    writes the images of model turns as codes, for a run that writes images (data/image_codes.py).
    """
    check_compatible(tokenizer, config)
    cache = MediaCache(max_bytes=media_cache_bytes) if media_cache_bytes > 0 else None

    def encode(example: Example) -> Row:
        if not example.raw_text and example.train_on != "all" and example.contents[-1].role != "model":
            raise EncodeError(f"a conversation ends on a {example.contents[-1].role} turn: training scores the "
                              "model's turns, so it must end on the model's reply (a prompt with no reply belongs "
                              "in an evaluation set)")
        return encode_example(example, tokenizer=tokenizer, config=config, max_len=max_len, media_cache=cache,
                              image_codes=image_codes)

    return EncodedSource(examples, encode=encode, error_budget=error_budget, cache_rows=cache_rows,
                         transform=transform, seed=seed)
