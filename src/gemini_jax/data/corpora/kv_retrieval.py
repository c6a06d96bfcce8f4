"""Synthetic key-value retrieval, the Gemini report's long-context probe (section 5.1.5): key-value
pairs at the start of the context, long filler text, then a query key; the answer is its value.

    source = FillerSource.standard_library("test", tokenizer)     # held-out files only
    example = make_example(source, np.random.default_rng(0), length=1024, position=0.5)
    example.prompt   # "4721: 8153\\n0397: 2210\\n...filler...\\nQ 0397:"
    example.answer   # " 2210"
    rows = TrainingRows(FillerSource.standard_library("train", tokenizer), seq_len=1024, batch_size=16)

Keys and values are digit strings: the project's tokenizers split digits (SentencePiece's
split_digits), so a digit is one token and a pair costs the same few tokens whatever pieces the
tokenizer learned. The filler is real text, whole lines of the Python standard library's source,
so the model cannot find the pairs by spotting digits or the pattern "dddd: dddd" alone.

Position is the queried pair's place in the list as a fraction (0 the first pair, 1 the last);
length counts the tokens of the whole example, <bos> to the answer's last token: the prompt plus
the answer the model is asked to write. Filler comes in whole lines, so an example can fall short
of its length by less than a line (`RetrievalExample.tokens` is exact).

Train and test are kept apart by construction: a key belongs to the test set when a stable hash
of it says so (10% of keys), so no test key ever occurs in training; and test filler comes from
the standard-library files the demo holds out (`corpora/held_out.py`'s split), training filler from the
others.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemini_jax.data.corpora.held_out import READ_SPLITS, is_test, is_validation
from gemini_jax.data.corpora.stdlib_text import stdlib_sources
from gemini_jax.data.tokenizer import Tokenizer

STDLIB_BYTES = 4_000_000  # the demo's text corpus cap: the same files, the same split
QUERY = "\nQ {key}:"  # the query line; the pair line is "{key}: {value}\n"
POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalSpec:
    num_pairs: int = 8
    key_digits: int = 4
    value_digits: int = 4

    def __post_init__(self):
        if self.num_pairs < 1 or self.key_digits < 1 or self.value_digits < 1:
            raise ValueError(f"RetrievalSpec needs num_pairs, key_digits and value_digits >= 1, got {self}")


def is_test_key(key: str) -> bool:
    return is_test(f"kv-key:{key}")


def _split_of(key: str) -> str:
    """train, validation (carved from train) or test, by the demo's hash rules."""
    if is_test(key):
        return "test"
    return "validation" if is_validation(key) else "train"


def _check_split(split: str) -> None:
    if split not in READ_SPLITS:
        raise ValueError(f"split must be one of {', '.join(READ_SPLITS)}, got {split!r}")


@functools.cache
def split_keys(split: str, digits: int) -> tuple[str, ...]:
    """Every key of `digits` digits that belongs to `split` (train, validation or test)."""
    _check_split(split)
    keys = (f"{k:0{digits}d}" for k in range(10**digits))
    return tuple(k for k in keys if _split_of(f"kv-key:{k}") == split)


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
    """`pairs` in context order; `queried` the indices of the pairs asked about, in order (one
    in the test set; training asks several, each answer scored); `tokens` the exact length."""

    pairs: tuple[tuple[str, str], ...]
    filler: str
    queried: tuple[int, ...]
    length: int
    position: float
    tokens: int

    def context(self) -> str:
        return "".join(f"{k}: {v}\n" for k, v in self.pairs) + self.filler

    @property
    def prompt(self) -> str:
        """The context and the first query: what the model reads before its answer."""
        return self.context() + QUERY.format(key=self.pairs[self.queried[0]][0])

    @property
    def answer(self) -> str:
        return f" {self.pairs[self.queried[0]][1]}"

    def pieces(self) -> list[tuple[str, bool]]:
        """The whole text as (piece, scored) pairs: the prompt, then each answer (scored) and
        the next query, and a final scored newline that ends the last answer.

        Every cut falls before a space or after a digit, where a piece boundary always is
        (whitespace starts a piece, digits are pieces of their own), so encoding the pieces one
        by one gives the ids of the whole text.
        """
        out = [(self.prompt, False)]
        for n, index in enumerate(self.queried):
            key, value = self.pairs[index]
            if n:
                out.append((QUERY.format(key=key), False))
            out.append((f" {value}", True))
        out.append(("\n", True))
        return out


def standard_library_files(split: str) -> list[str]:
    """The texts of the standard-library files of the demo's `split` (train, validation or test)."""
    _check_split(split)
    return [text for path, text in stdlib_sources(max_bytes=STDLIB_BYTES) if _split_of(f"stdlib:{path}") == split]


class FillerSource:
    """Lines of text with their token counts, from which fillers of a token budget are cut."""

    def __init__(self, text: str, tokenizer: Tokenizer, *, split: str):
        _check_split(split)
        self.split = split
        self.tokenizer = tokenizer
        self.lines = [line for line in text.splitlines(keepends=True) if line.strip()]
        if not self.lines:
            raise ValueError("a filler source needs some non-blank lines of text")
        counts = np.array([len(tokenizer.encode(line)) for line in self.lines], np.int64)
        self.ends = np.cumsum(counts)  # tokens of lines[:i + 1], each line encoded alone

    @classmethod
    def standard_library(cls, split: str, tokenizer: Tokenizer) -> FillerSource:
        """The standard-library files of the demo's `split` (train, validation or test), concatenated."""
        return cls("".join(standard_library_files(split)), tokenizer, split=split)

    def filler(self, rng: np.random.Generator, budget: int) -> list[str]:
        """Consecutive lines from a random place, as many as fit in about `budget` tokens."""
        if budget <= 0:
            return []
        total = int(self.ends[-1])
        if total <= budget:
            raise ValueError(f"the {self.split} filler text holds {total} tokens; a filler of {budget} needs more")
        start_token = int(rng.integers(0, total - budget))
        first = int(np.searchsorted(self.ends, start_token, side="right"))
        before = int(self.ends[first - 1]) if first else 0
        last = int(np.searchsorted(self.ends, before + budget, side="right"))
        return self.lines[first:last]


def _pairs(rng: np.random.Generator, keys: Sequence[str], spec: RetrievalSpec) -> tuple[tuple[str, str], ...]:
    chosen = rng.choice(len(keys), size=spec.num_pairs, replace=False)
    values = rng.integers(0, 10**spec.value_digits, size=spec.num_pairs)
    return tuple((keys[int(i)], f"{int(v):0{spec.value_digits}d}") for i, v in zip(chosen, values))


def _length(example: RetrievalExample, tokenizer: Tokenizer) -> int:
    return 1 + sum(len(tokenizer.encode(piece)) for piece, _ in example.pieces())  # 1: <bos>


def pair_index(position: float, num_pairs: int) -> int:
    """The pair a position asks for: 0 the first, 1 the last, fractions rounded half up."""
    return int(position * (num_pairs - 1) + 0.5)


def _bare(rng: np.random.Generator, *, keys: Sequence[str], length: int, position: float, spec: RetrievalSpec,
          queries: int) -> RetrievalExample:
    """Pairs and queries without filler."""
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    if not 1 <= queries <= spec.num_pairs:
        raise ValueError(f"queries must be in [1, {spec.num_pairs}] (the pairs), got {queries}")
    pairs = _pairs(rng, keys, spec)
    first = pair_index(position, spec.num_pairs)
    others = [i for i in rng.permutation(spec.num_pairs).tolist() if i != first]
    queried = (first, *others[: queries - 1])
    return RetrievalExample(pairs=pairs, filler="", queried=queried, length=length, position=position, tokens=0)


def fixed_tokens(tokenizer: Tokenizer, *, spec: RetrievalSpec = RetrievalSpec(), queries: int = 1) -> int:
    """Tokens of an example without filler: the shortest length that can be asked for."""
    bare = _bare(np.random.default_rng(0), keys=split_keys("train", spec.key_digits), length=0, position=0.0,
                 spec=spec, queries=queries)
    return _length(bare, tokenizer)


def make_example(source: FillerSource, rng: np.random.Generator, *, length: int, position: float,
                 spec: RetrievalSpec = RetrievalSpec(), queries: int = 1, keys: Sequence[str] | None = None,
                 ) -> RetrievalExample:
    """An example of at most `length` tokens whose first query asks for the pair at `position`
    (0 first, 1 last); further queries (training) ask for other pairs, drawn at random. `keys`
    (default: the source's split's) are the keys pairs are drawn from."""
    keys = split_keys(source.split, spec.key_digits) if keys is None else keys
    bare = _bare(rng, keys=keys, length=length, position=position, spec=spec, queries=queries)
    fixed = _length(bare, source.tokenizer)
    if fixed > length:
        raise ValueError(f"{spec.num_pairs} pairs and {queries} queries take {fixed} tokens, more than the "
                         f"length {length}")
    lines = source.filler(rng, length - fixed)
    while True:  # lines counted alone can merge into fewer tokens, rarely more: drop lines till it fits
        example = dataclasses.replace(bare, filler="".join(lines))
        tokens = _length(example, source.tokenizer)
        if tokens <= length:
            return dataclasses.replace(example, tokens=tokens)
        lines = lines[:-1]


def test_set(source: FillerSource, *, lengths: Sequence[int], positions: Sequence[float] = POSITIONS,
             per_cell: int, seed: int = 0, spec: RetrievalSpec = RetrievalSpec()) -> list[RetrievalExample]:
    """`per_cell` single-query examples for every (length, position), each cell from its own seed,
    so a cell's examples do not change when other lengths or positions are asked for. Filler and
    keys come from the source's held-out split: test, or validation while a recipe trains."""
    if source.split == "train":
        raise ValueError("a held-out set takes its filler from held-out text: give a 'validation' or 'test' "
                         "FillerSource")
    keys = split_keys(source.split, spec.key_digits)
    if spec.num_pairs > len(keys):
        raise ValueError(f"{spec.num_pairs} pairs need more distinct {source.split} keys than {len(keys)} of "
                         f"{spec.key_digits} digits")
    examples = []
    for length in lengths:
        for position in positions:
            rng = np.random.default_rng([1, seed, length, round(position * 1000)])
            examples += [make_example(source, rng, length=length, position=position, spec=spec, keys=keys)
                         for _ in range(per_cell)]
    return examples


def encode_row(example: RetrievalExample, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """tokens/targets/loss_mask of `<bos> text`, the loss on the answers (and the final newline)."""
    ids, scored = [tokenizer.bos_id], [False]
    for piece, is_scored in example.pieces():
        piece_ids = tokenizer.encode(piece)
        ids += piece_ids
        scored += [is_scored] * len(piece_ids)
    ids_array = np.asarray(ids, np.int32)
    return {"tokens": ids_array[:-1], "targets": ids_array[1:], "loss_mask": np.asarray(scored[1:], np.float32)}


class TrainingRows:
    """Batches of packed training examples (batch.py's keys), step n drawn from seed n alone, so
    the state is one counter and a resumed run sees the same batches.

    Each row of `seq_len` tokens holds examples of lengths drawn uniformly from `min_length` up
    to what is left of the row, so short and long distances between the pairs and their query
    are both seen, and no row is padding beyond a few tokens. Packed examples never attend to
    each other (segment ids).

    The first `short_steps` batches hold twice as many rows of half the length (the same tokens
    a step): the retrieval mechanism forms sooner where examples are short and many, and a
    short row costs less attention."""

    def __init__(self, source: FillerSource, *, seq_len: int, batch_size: int, seed: int = 0,
                 spec: RetrievalSpec = RetrievalSpec(), queries: int = 4, min_length: int | None = None,
                 short_steps: int = 0):
        if source.split != "train":
            raise ValueError("training takes its filler from the training text: give a 'train' FillerSource")
        self.source, self.spec, self.queries = source, spec, queries
        self.seq_len, self.batch_size, self.seed, self.short_steps = seq_len, batch_size, seed, short_steps
        self.keys = split_keys("train", spec.key_digits)
        self.min_length = min_length or fixed_tokens(source.tokenizer, spec=spec, queries=queries) + 16  # + filler
        shortest = seq_len // 2 if short_steps else seq_len
        if self.min_length > shortest + 1:
            raise ValueError(f"rows of {shortest} tokens are too short for one example ({self.min_length} tokens)")
        self.step = 0

    def __iter__(self) -> TrainingRows:
        return self

    def _row(self, rng: np.random.Generator, seq_len: int) -> dict[str, np.ndarray]:
        tokens, targets, mask, segments, positions = [], [], [], [], []
        room = seq_len + 1  # an example of n tokens fills n - 1 slots (inputs and targets)
        while room >= self.min_length:
            length = min(int(rng.integers(self.min_length, seq_len + 2)), room)
            if room - length < self.min_length:
                length = room
            # Fewer pairs than the test's in some examples: with one pair, copying its value needs
            # no key to be matched, which teaches the copying before the matching.
            spec = dataclasses.replace(self.spec, num_pairs=int(rng.integers(1, self.spec.num_pairs + 1)))
            position = int(rng.integers(spec.num_pairs)) / max(spec.num_pairs - 1, 1)
            example = make_example(self.source, rng, length=length, position=position, spec=spec,
                                   queries=min(self.queries, spec.num_pairs), keys=self.keys)
            row = encode_row(example, self.source.tokenizer)
            n = row["tokens"].shape[0]
            tokens.append(row["tokens"])
            targets.append(row["targets"])
            mask.append(row["loss_mask"])
            segments.append(np.full(n, len(segments) + 1, np.int32))
            positions.append(np.arange(n, dtype=np.int32))
            room -= n
        pad = seq_len - sum(t.shape[0] for t in tokens)
        pieces = {"tokens": tokens, "targets": targets, "loss_mask": mask, "segment_ids": segments,
                  "positions": positions}
        row = {k: np.concatenate([*v, np.zeros(pad, v[0].dtype)]) for k, v in pieces.items()}
        row["media_spans"] = np.zeros(seq_len, np.int32)
        return row

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([0, self.seed, self.step])
        short = self.step < self.short_steps
        self.step += 1
        seq_len, batch_size = (self.seq_len // 2, 2 * self.batch_size) if short else (self.seq_len, self.batch_size)
        rows = [self._row(rng, seq_len) for _ in range(batch_size)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
