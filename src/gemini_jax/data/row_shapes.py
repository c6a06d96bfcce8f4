"""Fixed row shapes: encoded rows padded to one task's text length and media slots, in one batch.

    shapes = media_shapes(seq_len=256, config=cfg, max_images=1, max_frames=0, max_audio_clips=0,
                          max_mel_frames=None)
    batch = padded_batches(32, shapes)(rows)          # each row written once, into its slot
    batch = collate(prompts, seq_len=64, config=cfg)   # the same for already-encoded prompts

One shape per task, so a jitted step compiles once per task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from gemini_jax import batch as B
from gemini_jax.config import ModelConfig
from gemini_jax.data.records import DataError, Row


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowShapes:
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


def media_shapes(*, seq_len: int, config: ModelConfig | None, max_images: int, max_frames: int,
                  max_audio_clips: int, max_mel_frames: int | None) -> RowShapes:
    if (max_images or max_frames) and (config is None or config.vision is None):
        raise DataError("max_images/max_frames need a config with a vision encoder")
    if max_audio_clips and (config is None or config.audio is None):
        raise DataError("max_audio_clips needs a config with an audio encoder")
    vision, audio = (config.vision, config.audio) if config is not None else (None, None)
    if max_audio_clips and max_mel_frames is None:
        max_mel_frames = audio.num_mel_frames(audio.max_samples)
    return RowShapes(
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


def _layout(shapes: RowShapes) -> dict[str, tuple[tuple[int, ...], type]]:
    """{key: (shape of one row, dtype)} of every key a batch of these shapes holds."""
    t = shapes.seq_len
    out = {k: ((t,), np.float32 if k == "loss_mask" else np.int32) for k in B.TEXT_KEYS}
    for keys, lead in ((B.IMAGE_KEYS, (shapes.images, shapes.image_patches)),
                       (B.FRAME_KEYS, (shapes.frames, shapes.frame_patches))):
        if lead[0]:
            out[keys[0]] = ((*lead, shapes.patch_dim), np.float32)
            out[keys[1]] = ((*lead, 2), np.int32)
            out[keys[2]] = (lead, bool)
    if shapes.clips:
        out["audio_mels"] = ((shapes.clips, shapes.mel_frames, shapes.num_mels), np.float32)
        out["audio_mel_mask"] = ((shapes.clips, shapes.mel_frames), bool)
    return out


_UNHELD = (("image", B.IMAGE_KEYS[0], "max_images"), ("frame", B.FRAME_KEYS[0], "max_frames"),
           ("audio", "audio_mels", "max_audio_clips"))


def _hint(key: str) -> str:
    if key in B.TEXT_KEYS:
        return "raise seq_len or give encoded_source max_len <= seq_len"
    if key in B.AUDIO_KEYS:
        return "raise max_audio_clips/max_mel_frames"
    return "raise max_images" if key in B.IMAGE_KEYS else "raise max_frames"


def put_row(batch: Row, i: int, row: Row) -> None:
    """Writes `row` into slot `i` of `batch` (from `empty_batch`), each array at the start of
    each axis: the rest of the slot stays zero (padding). A row that holds more than the
    batch's shapes, or media the batch has no slots for, is a DataError."""
    for kind, key, arg in _UNHELD:
        if key in row and key not in batch:
            raise DataError(f"a row has {kind}s but this task's batches hold none (set {arg})")
    for key, out in batch.items():
        array = row.get(key)
        if array is None:
            if key in B.TEXT_KEYS:
                raise DataError(f"a row has no {key!r}")
            continue  # a row without this task's media: its slots stay empty
        shape = out.shape[1:]
        if array.ndim != len(shape) or any(a > s for a, s in zip(array.shape, shape)):
            what = key if key in B.TEXT_KEYS else key.split("_")[0] + "s"
            raise DataError(f"a row has {what} of shape {array.shape}, more than this task's batches hold "
                            f"{shape} ({_hint(key)})")
        out[(i, *(slice(0, n) for n in array.shape))] = array


def empty_batch(batch_size: int, shapes: RowShapes) -> Row:
    """`batch_size` all-padding rows (segment 0, no loss) of these shapes."""
    return {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in _layout(shapes).items()}


def pad_row(row: Row, shapes: RowShapes) -> Row:
    """One row padded to `shapes`."""
    out = empty_batch(1, shapes)
    put_row(out, 0, row)
    return {k: v[0] for k, v in out.items()}


def padded_batches(batch_size: int, shapes: RowShapes) -> Callable[[Sequence[Row | None]], Row]:
    """A grain batch_fn: encoded rows padded straight into one batch of exactly `batch_size`
    (one copy of each array, none per row); a skipped record (None) and the rows after the
    last leave padding rows."""

    def batch(rows: Sequence[Row | None]) -> Row:
        out = empty_batch(batch_size, shapes)
        for i, row in enumerate(r for r in rows if r is not None):
            put_row(out, i, row)
        return out

    return batch


def stack_rows(batch_size: int, *, template: Row | None = None) -> Callable[[Sequence[Row | None]], Row]:
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
    shapes = media_shapes(
        seq_len=seq_len, config=config, max_images=most("image_patches"), max_frames=most("frame_patches"),
        max_audio_clips=most("audio_mels"), max_mel_frames=mel_frames,
    )
    # Generation prompts have no targets: give them empty ones so every batch has one layout.
    rows = [{"targets": np.zeros_like(r["tokens"]), "loss_mask": np.zeros(r["tokens"].shape, np.float32), **r}
            for r in rows]
    return padded_batches(batch_size or len(rows), shapes)(rows)
