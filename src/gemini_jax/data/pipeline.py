"""The grain input pipeline: examples -> encoded rows -> fixed-shape batches, mixed across tasks.

    source = encoded_source(examples, tokenizer=tok, config=cfg, max_len=256)
    train = batched(source, batch_size=32, seq_len=256, seed=0, config=cfg, max_images=1)
    text = packed_text(documents, tokenizer=tok, seq_len=256, batch_size=32, seed=0)
    stream = iter(mixture([train, text], weights=[3, 1]))
    staged_stream = iter(staged([(warmup, 500), (mixture(...), None)]))  # a staged mixture

Every stream is deterministic for its seed, and `it.get_state()` / `it.set_state(s)`
resume it exactly. Shapes are fixed per task (text padded to seq_len, media to the
slots the task declares), so a jitted step compiles once per task.

Bad records (a missing file, an example longer than max_len) are counted by the source
and never reach the model (in `batched` each leaves an all-padding row, so batches keep
their size); past `error_budget` distinct bad records the pipeline raises a DataError
with the count and the first errors.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from gemini_jax import batch as B
from gemini_jax.config import ModelConfig
from gemini_jax.data import media
from gemini_jax.data.encode import (
    EncodeError,
    MediaCache,
    check_compatible,
    encode_document,
    encode_example,
)
from gemini_jax.data.examples import Example, ExampleError
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
    """Records encoded on first access; a bad record reads as None (a padding row in `batched`)."""

    def __init__(self, records: Sequence[Any], *, encode: Callable[[Any], Row], error_budget: int,
                 cache_rows: bool):
        super().__init__()
        self._records = records
        self._encode = encode
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
) -> EncodedSource:
    """A MapDataset of `encode_example` rows, encoded lazily.

    Media files are cached after preprocessing (by path, within media_cache_bytes);
    `cache_rows=True` also keeps every encoded row, which pays off for a small task
    shown for many epochs (rows hold float32 patches: about 4 bytes x pixels each).
    `.errors` reports the bad records met so far.
    """
    check_compatible(tokenizer, config)
    cache = MediaCache(max_bytes=media_cache_bytes) if media_cache_bytes > 0 else None

    def encode(example: Example) -> Row:
        return encode_example(example, tokenizer=tokenizer, config=config, max_len=max_len, media_cache=cache)

    return EncodedSource(examples, encode=encode, error_budget=error_budget, cache_rows=cache_rows)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Shapes:
    """The fixed shapes of one task's rows."""

    seq_len: int
    images: int = 0
    image_patches: int = 0
    frames: int = 0
    frame_patches: int = 0
    patch_dim: int = 0
    clips: int = 0
    mel_frames: int = 0
    num_mels: int = 0


def _media_shapes(*, seq_len: int, config: ModelConfig | None, max_images: int, max_frames: int,
                  max_audio_clips: int, max_mel_frames: int | None) -> _Shapes:
    if (max_images or max_frames) and (config is None or config.vision is None):
        raise DataError("max_images/max_frames need a config with a vision encoder")
    if max_audio_clips and (config is None or config.audio is None):
        raise DataError("max_audio_clips needs a config with an audio encoder")
    vision, audio = (config.vision, config.audio) if config is not None else (None, None)
    if max_audio_clips and max_mel_frames is None:
        max_mel_frames = audio.num_mel_frames(audio.max_samples)
    return _Shapes(
        seq_len=seq_len,
        images=max_images,
        image_patches=vision.max_patches if vision else 0,
        frames=max_frames,
        frame_patches=vision.frame_max_patches if vision else 0,
        patch_dim=vision.patch_dim if vision else 0,
        clips=max_audio_clips,
        mel_frames=max_mel_frames or 0,
        num_mels=audio.num_mels if audio else 0,
    )


def _fit(array: np.ndarray, shape: tuple[int, ...], *, what: str, hint: str) -> np.ndarray:
    """`array` zero-padded at the end of each axis to `shape`."""
    if any(a > s for a, s in zip(array.shape, shape)):
        raise DataError(f"a row has {what} of shape {array.shape}, more than this task's batches hold {shape} ({hint})")
    out = np.zeros(shape, array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def _pad_row(row: Row, shapes: _Shapes) -> Row:
    t = shapes.seq_len
    hint = "raise seq_len or give encoded_source max_len <= seq_len"
    out = {k: _fit(row[k], (t,), what=k, hint=hint) for k in B.TEXT_KEYS}
    families = (
        ("image", B.IMAGE_KEYS, (shapes.images, shapes.image_patches), shapes.patch_dim, "max_images"),
        ("frame", B.FRAME_KEYS, (shapes.frames, shapes.frame_patches), shapes.patch_dim, "max_frames"),
    )
    for prefix, keys, lead, patch_dim, arg in families:
        if lead[0]:
            empty = {keys[0]: np.zeros((0, lead[1], patch_dim), np.float32),
                     keys[1]: np.zeros((0, lead[1], 2), np.int32), keys[2]: np.zeros((0, lead[1]), bool)}
            src = row if keys[0] in row else empty
            out[keys[0]] = _fit(src[keys[0]], (*lead, patch_dim), what=f"{prefix}s", hint=f"raise {arg}")
            out[keys[1]] = _fit(src[keys[1]], (*lead, 2), what=f"{prefix}s", hint=f"raise {arg}")
            out[keys[2]] = _fit(src[keys[2]], lead, what=f"{prefix}s", hint=f"raise {arg}")
        elif keys[0] in row:
            raise DataError(f"a row has {prefix}s but this task's batches hold none (set {arg})")
    if shapes.clips:
        lead = (shapes.clips, shapes.mel_frames)
        mels = row.get("audio_mels", np.zeros((0, 0, shapes.num_mels), np.float32))
        mask = row.get("audio_mel_mask", np.zeros((0, 0), bool))
        hint = "raise max_audio_clips/max_mel_frames"
        out["audio_mels"] = _fit(mels, (*lead, shapes.num_mels), what="audio", hint=hint)
        out["audio_mel_mask"] = _fit(mask, lead, what="audio", hint=hint)
    elif "audio_mels" in row:
        raise DataError("a row has audio but this task's batches hold none (set max_audio_clips)")
    return out


def _stack_rows(batch_size: int, *, template: Row | None = None) -> Callable[[Sequence[Row | None]], Row]:
    """Stacks rows into exactly `batch_size`, filling the rest with all-padding rows (segment 0,
    no loss): one shape. A skipped record (None) leaves a padding row in its place; a batch of
    nothing but skipped records needs `template` (any padded row) for its shapes."""

    def stack(rows: Sequence[Row | None]) -> Row:
        rows = [r for r in rows if r is not None]
        first = rows[0] if rows else template
        out = {k: np.zeros((batch_size, *v.shape), v.dtype) for k, v in first.items()}
        for i, row in enumerate(rows):
            for k, v in row.items():
                out[k][i] = v
        return out

    return stack


def _shard(ds: grain.MapDataset, shard: tuple[int, int]) -> grain.MapDataset:
    """Records index, index + count, ...: each process of a multi-host run reads its own."""
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise DataError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    if count > len(ds):
        raise DataError(f"{len(ds)} records cannot be split among {count} processes")
    return ds if count == 1 else ds[index::count]


def _epochs(ds: grain.MapDataset, *, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
    if shuffle:
        ds = ds.shuffle(seed=seed)  # reshuffled every epoch by repeat
    return ds.repeat(num_epochs) if num_epochs != 1 else ds


def _prefetch(batches: grain.IterDataset, size: int) -> grain.IterDataset:
    """Batches built in a background thread while the (GIL-free) jitted step runs."""
    if size == 0:
        return batches
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=size)


def _read_options(num_threads: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(8, 4 * num_threads))


def batched(
    ds: grain.MapDataset,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    config: ModelConfig | None = None,
    max_images: int = 0,
    max_frames: int = 0,
    max_audio_clips: int = 0,
    max_mel_frames: int | None = None,
    num_threads: int = 2,
    prefetch_batches: int = 2,
    augment: Callable[[Row, np.random.Generator], Row] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Batches of encoded rows, each key at one fixed shape.

    Text is padded to seq_len; media to the slots given here (a row with fewer
    images gets empty slots, a task without audio gets no audio keys). `max_mel_frames`
    defaults to the frames of the longest clip the config accepts. num_epochs=None
    repeats forever; drop_remainder=False keeps the last short batch, filled with padding
    rows. A row that exceeds the declared shapes is a DataError. `augment(row, rng)`
    changes rows after shuffling, with a generator seeded per row and epoch from `seed`.
    `shard=(i, n)` reads only records i, i + n, i + 2n, ...: process i of n in a multi-host
    run, whose batch_size is then its share of the global batch.
    """
    ds = _shard(ds, shard)
    shapes = _media_shapes(seq_len=seq_len, config=config, max_images=max_images, max_frames=max_frames,
                           max_audio_clips=max_audio_clips, max_mel_frames=max_mel_frames)
    empty = {k: np.zeros(0, np.float32 if k == "loss_mask" else np.int32) for k in B.TEXT_KEYS}
    template = _pad_row(empty, shapes)  # an all-padding row, for a batch whose records were all bad
    # Padding runs in grain's read threads, next to encoding (a skipped record stays None).
    rows = _epochs(ds.map(lambda row: None if row is None else _pad_row(row, shapes)),
                   seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    if augment is not None:
        rows = rows.random_map(lambda row, rng: None if row is None else augment(row, rng), seed=seed)
    # Whole batches are the unit of grain's reading and prefetching: per-row bookkeeping in
    # Python threads would cost more than the training step of a small model.
    batches = rows.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_stack_rows(batch_size, template=template))
    batches = batches.to_iter_dataset(read_options=_read_options(num_threads))
    return _prefetch(batches, prefetch_batches)


def _packed_row(row: Row) -> Row:
    """The packer's outputs under batch.py's keys.

    Grain 0.2.18's ConcatThenSplit numbers segments from 1 in every row and restarts
    positions at 0 where a split document continues in the next row (seen, and tested).
    """
    segments = row["tokens_segment_ids"]  # [T]
    return {
        "tokens": row["tokens"].astype(np.int32),
        "targets": row["targets"].astype(np.int32),
        "loss_mask": row["loss_mask"].astype(np.float32),
        "segment_ids": segments.astype(np.int32),
        "positions": row["tokens_positions"].astype(np.int32),
        "media_spans": np.zeros_like(segments, dtype=np.int32),
    }


def packed_text(
    documents: Sequence[str | Example],
    *,
    tokenizer: Tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    error_budget: int = 10,
    num_threads: int = 2,
    prefetch_batches: int = 2,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Plain documents (`<bos> text <eos>`) packed into rows of exactly seq_len tokens.

    Concatenate-then-split (grain's ConcatThenSplitIterDataset): no padding and no
    truncation; a document longer than the room left continues in the next row as a
    new segment. Targets are computed per document before packing and attention stays
    inside a segment, so documents never see each other. `shard` as in `batched`.
    """
    source = EncodedSource(documents, encode=lambda d: encode_document(d, tokenizer=tokenizer),
                           error_budget=error_budget, cache_rows=False)
    docs = _epochs(_shard(source, shard), seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    docs = docs.to_iter_dataset(read_options=_read_options(num_threads))
    packed = grain.experimental.ConcatThenSplitIterDataset(
        docs, length_struct={"tokens": seq_len, "targets": seq_len, "loss_mask": seq_len})
    rows = packed.map(_packed_row)
    batches = rows.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_stack_rows(batch_size))
    return _prefetch(batches, prefetch_batches)


def mixture(
    datasets: Sequence[grain.IterDataset] | Mapping[str, grain.IterDataset],
    *,
    weights: Sequence[float] | Mapping[str, float],
) -> grain.IterDataset:
    """Whole batches drawn from each task in proportion to `weights` (tasks keep their own shapes).

    Grain interleaves deterministically: after any prefix of the stream, each task has
    given its share up to rounding, so there is no seed and no streak of one task.
    """
    names = list(datasets) if isinstance(datasets, Mapping) else None
    if names is not None and (not isinstance(weights, Mapping) or set(weights) != set(names)):
        raise DataError(f"weights must name the same tasks as datasets: {sorted(names)}")
    values = [weights[n] for n in names] if names is not None else list(weights)
    if len(values) != len(datasets) or any(not w > 0 for w in values):
        raise DataError(f"need one positive weight per dataset, got {values} for {len(datasets)} datasets")
    parents = [datasets[n] for n in names] if names is not None else list(datasets)
    return grain.IterDataset.mix(parents, values)


class _StagedIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], counts: list[int]):
        super().__init__(parents)
        self._iterators = parents
        self._counts = counts  # elements per stage but the last, which never ends
        self._stage = 0
        self._taken = 0

    def __next__(self) -> Row:
        while self._stage < len(self._counts) and self._taken >= self._counts[self._stage]:
            self._stage, self._taken = self._stage + 1, 0
        self._taken += 1
        return next(self._iterators[self._stage])

    def get_state(self) -> dict[str, Any]:
        return {"stage": self._stage, "taken": self._taken, "stages": [it.get_state() for it in self._iterators]}

    def set_state(self, state: dict[str, Any]) -> None:
        for iterator, inner in zip(self._iterators, state["stages"], strict=True):
            iterator.set_state(inner)
        self._stage, self._taken = state["stage"], state["taken"]


class _Staged(grain.IterDataset):
    def __init__(self, parents: list[grain.IterDataset], counts: list[int]):
        super().__init__(parents)
        self._stages = parents
        self._counts = counts

    def __iter__(self) -> _StagedIterator:
        return _StagedIterator([iter(p) for p in self._stages], self._counts)


def staged(stages: Sequence[tuple[grain.IterDataset, int | None]]) -> grain.IterDataset:
    """Stages in turn: `count` batches from each (a training curriculum), the last one without
    end (its count is None). The state holds the stage, the batches taken from it and every
    stage's own state, so a resumed run continues exactly where it stopped."""
    if not stages:
        raise DataError("staged() needs at least one stage")
    *bounded, (_, last) = stages
    counts = [count for _, count in bounded]
    if last is not None or any(not isinstance(c, int) or c < 0 for c in counts):
        raise DataError(f"every stage but the last needs a count >= 0 and the last None; got "
                        f"{[c for _, c in stages]}")
    return _Staged([ds for ds, _ in stages], counts)


def collate(rows: Sequence[Row], *, seq_len: int, config: ModelConfig, batch_size: int | None = None,
            mel_frames_multiple: int = 1) -> Row:
    """Pads and stacks already-encoded rows (e.g. generation prompts) into one batch.

    Media slots are sized to the most any row has, mel frames rounded up to a multiple of
    `mel_frames_multiple`; `batch_size` (default len(rows)) adds all-padding rows. Both let
    callers keep a few fixed batch shapes.
    """
    def most(key: str) -> int:
        return max((r[key].shape[0] for r in rows if key in r), default=0)

    mel_frames = max((r["audio_mels"].shape[1] for r in rows if "audio_mels" in r), default=None)
    if mel_frames is not None:
        mel_frames = mel_frames_multiple * math.ceil(mel_frames / mel_frames_multiple)
    shapes = _media_shapes(
        seq_len=seq_len, config=config, max_images=most("image_patches"), max_frames=most("frame_patches"),
        max_audio_clips=most("audio_mels"), max_mel_frames=mel_frames,
    )
    # Generation prompts have no targets: give them empty ones so every batch has one layout.
    rows = [{"targets": np.zeros_like(r["tokens"]), "loss_mask": np.zeros(r["tokens"].shape, np.float32), **r}
            for r in rows]
    return _stack_rows(batch_size or len(rows))([_pad_row(r, shapes) for r in rows])
