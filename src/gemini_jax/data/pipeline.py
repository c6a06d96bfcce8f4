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

from collections.abc import Callable, Sequence

import grain
import numpy as np

from gemini_jax.config import ModelConfig
from gemini_jax.data.encode import encode_document
from gemini_jax.data.examples import Example
from gemini_jax.data.mixing import mixture, resumable, staged
from gemini_jax.data.records import RECORD_ERRORS, DataError, EncodedSource, ErrorReport, Row, encoded_source
from gemini_jax.data.row_shapes import collate, media_shapes, padded_batches, stack_rows
from gemini_jax.data.tokenizer import Tokenizer

# The pipeline's whole interface, wherever each piece lives.
__all__ = ["RECORD_ERRORS", "DataError", "EncodedSource", "ErrorReport", "Row", "batched", "collate",
           "encoded_source", "mixture", "packed_text", "resumable", "staged"]


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
    shapes = media_shapes(seq_len=seq_len, config=config, max_images=max_images, max_frames=max_frames,
                           max_audio_clips=max_audio_clips, max_mel_frames=max_mel_frames)
    rows = _epochs(ds, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    if augment is not None:
        rows = rows.random_map(lambda row, rng: None if row is None else augment(row, rng), seed=seed)
    # Whole batches are the unit of grain's reading and prefetching: per-row bookkeeping in
    # Python threads would cost more than the training step of a small model. Rows are padded
    # straight into the batch, a skipped record (None) leaving a padding row.
    batches = rows.batch(batch_size, drop_remainder=drop_remainder, batch_fn=padded_batches(batch_size, shapes))
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
    batches = rows.batch(batch_size, drop_remainder=drop_remainder, batch_fn=stack_rows(batch_size))
    return _prefetch(batches, prefetch_batches)
