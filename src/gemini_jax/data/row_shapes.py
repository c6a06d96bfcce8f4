"""Fixed row shapes: encoded rows padded to one task's text length and media slots, then stacked.

    shapes = media_shapes(seq_len=256, config=cfg, max_images=1, max_frames=0, max_audio_clips=0,
                          max_mel_frames=None)
    batch = stack_rows(32)([pad_row(row, shapes) for row in rows])
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


def _fit(array: np.ndarray, shape: tuple[int, ...], *, what: str, hint: str) -> np.ndarray:
    """`array` zero-padded at the end of each axis to `shape`."""
    if any(a > s for a, s in zip(array.shape, shape)):
        raise DataError(f"a row has {what} of shape {array.shape}, more than this task's batches hold {shape} ({hint})")
    out = np.zeros(shape, array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def pad_row(row: Row, shapes: RowShapes) -> Row:
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
    return stack_rows(batch_size or len(rows))([pad_row(r, shapes) for r in rows])
