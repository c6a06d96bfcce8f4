"""Training-time augmentation of encoded rows (numpy, seeded per row by Grain).

SpecAugment (Park et al., 2019): zero a few random bands of mel bins and spans of frames
in each audio clip. A small speech corpus is memorised within minutes; masking makes the
model rely on more than one cue per word, which is what carries to unseen voices.

ImageAugment: images and video frames of plain-background scenes (easy-VQA's, the demo's
clips) redrawn with their shapes scaled and moved, their background recoloured and pixel noise
added: a model that saw only one renderer's sizes and pastel backgrounds answers about those,
not about shapes. What the questions ask (shape, colour, which way, bigger or smaller, which
first) survives each change; the frames of one clip change together.

`speed_perturbed`: a waveform played faster or slower, tempo and pitch together (Ko et al.,
2015), for clips written before they are encoded.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Row = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecAugment:
    freq_masks: int = 2
    max_freq_width: int = 8
    time_masks: int = 2
    max_time_fraction: float = 0.08  # of the clip's real frames, per mask

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        if "audio_mels" not in row:
            return row
        mels = row["audio_mels"].copy()  # [C, M, F]
        lengths = row["audio_mel_mask"].sum(axis=1)  # [C]
        num_mels = mels.shape[2]
        for clip, length in enumerate(lengths):
            if length == 0:
                continue
            for _ in range(self.freq_masks):
                width = int(rng.integers(0, self.max_freq_width + 1))
                start = int(rng.integers(0, max(1, num_mels - width)))
                mels[clip, :length, start : start + width] = 0.0
            max_width = int(self.max_time_fraction * length)
            for _ in range(self.time_masks):
                width = int(rng.integers(0, max_width + 1))
                start = int(rng.integers(0, max(1, length - width)))
                mels[clip, start : start + width, :] = 0.0
        return {**row, "audio_mels": mels}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageAugment:
    """Scale and move the shapes (together, within the frame), recolour the background with a
    darker colour far enough from every shape's, add Gaussian noise; each with its probability.
    Pixels are in [-1, 1]; a background is the most common colour of an image's border.

    By default each change is drawn one time in ten, so about a quarter of the images (and
    clips) change at all; four in ten cost the demo's encoder its shapes (docs/robustness.md)."""

    scale_probability: float = 0.1
    scale: tuple[float, float] = (0.35, 2.0)  # of the shapes' extent, drawn log-uniformly
    recolour_probability: float = 0.1
    recolour: tuple[float, float] = (-1.0, 0.4)  # each channel of the new background
    min_contrast: float = 0.9  # RGB distance, in [-1, 1] units, between the new background and a shape
    noise_probability: float = 0.1
    noise: tuple[float, float] = (0.02, 0.12)  # standard deviation, in [-1, 1] units

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        row = dict(row)
        for family in ("image", "frame"):
            key, mask = f"{family}_patches", f"{family}_patch_mask"
            if key not in row or not row[mask].any():
                continue
            patches = row[key].copy()  # [S, P, p*p*3]
            slots = [s for s in range(patches.shape[0]) if row[mask][s].any()]
            # Each image alone; every frame of a row together (one clip).
            for group in ([[s] for s in slots] if family == "image" else [slots]):
                scale, recolour, noise = (rng.random(3) < (self.scale_probability, self.recolour_probability,
                                                           self.noise_probability))
                if not (scale or recolour or noise):
                    continue
                images = [_unpatchify(patches[s], row[f"{family}_coords"][s], row[mask][s]) for s in group]
                if any(image is None for image in images) or len({i.shape for i in images}) > 1:
                    continue
                changed = self._augment(np.stack(images), rng, scale=scale, recolour=recolour, noise=noise)
                for s, image in zip(group, changed):
                    n = int(row[mask][s].sum())
                    patches[s, :n] = _patchify(image, patch_size=_patch_size(patches.shape[-1]))
            row[key] = patches
        return row

    def _augment(self, images: np.ndarray, rng: np.random.Generator, *, scale: bool, recolour: bool,
                 noise: bool) -> np.ndarray:
        """images float32[F, H, W, 3] -> the same, changed alike."""
        background = _background(images[0])
        if scale:
            images = _rescale(images, background, rng, self.scale)
        if recolour:
            images = _recolour(images, background, rng, self.recolour, self.min_contrast)
        if noise:
            sigma = rng.uniform(*self.noise)
            images = np.clip(images + sigma * rng.standard_normal(images.shape, dtype=np.float32), -1.0, 1.0)
        return images


def _patch_size(dim: int) -> int:
    return int(round((dim // 3) ** 0.5))


def _unpatchify(patches: np.ndarray, coords: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """float32[H, W, 3] of one slot's patches, or None unless they are a full grid in row-major
    order (what media.image_patches writes)."""
    n = int(mask.sum())
    rows, cols = int(coords[:n, 0].max()) + 1, int(coords[:n, 1].max()) + 1
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    if n != rows * cols or not mask[:n].all() or not np.array_equal(coords[:n], grid):
        return None
    p = _patch_size(patches.shape[-1])
    return patches[:n].reshape(rows, cols, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * p, 3)


def _patchify(image: np.ndarray, *, patch_size: int) -> np.ndarray:
    h, w = image.shape[0] // patch_size, image.shape[1] // patch_size
    return image.reshape(h, patch_size, w, patch_size, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)


def _background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [B, 3]
    _, first, counts = np.unique(_codes(border, levels=256), return_index=True, return_counts=True)
    return border[first[np.argmax(counts)]]


def _codes(colours: np.ndarray, *, levels: int) -> np.ndarray:
    """int64[...]: each [-1, 1] RGB colour as one integer, `levels` steps per channel."""
    q = np.clip(((colours + 1.0) * ((levels - 1) / 2.0)).round(), 0, levels - 1).astype(np.int64)
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


def _alpha(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """[..., H, W]: 0 on the background, 1 on a shape, between on their anti-aliased edges."""
    return np.clip((np.linalg.norm(images - background, axis=-1) - 0.05) / 0.45, 0.0, 1.0)


def _rescale(images: np.ndarray, background: np.ndarray, rng: np.random.Generator,
             scale: tuple[float, float]) -> np.ndarray:
    _, h, w, _ = images.shape
    shown = (_alpha(images, background) > 0.5).any(axis=0)
    if not shown.any():
        return images
    ys, xs = np.nonzero(shown)
    y0, x0, extent_h, extent_w = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    largest = min(h / extent_h, w / extent_w)  # the shapes stay whole
    if largest < scale[0]:
        return images
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(min(scale[1], largest)))))
    top, left = rng.uniform(0, h - s * extent_h), rng.uniform(0, w - s * extent_w)
    # Output pixel (y, x) reads input (y0 + (y - top) / s, x0 + (x - left) / s), bilinearly; outside
    # the input it reads the background (flat index h * w, appended).
    def source(length, start, origin):
        at = origin + (np.arange(length) + 0.5 - start) / s - 0.5
        low = np.floor(at).astype(np.int64)
        return low, low + 1, (at - low).astype(np.float32)

    y_low, y_high, fy = source(h, top, y0)
    x_low, x_high, fx = source(w, left, x0)
    flat = np.concatenate([images.reshape(len(images), h * w, 3),
                           np.broadcast_to(background, (len(images), 1, 3))], axis=1)  # [F, H*W + 1, 3]

    def read(ys, xs):
        inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
        return flat[:, np.where(inside, ys[:, None] * w + xs[None, :], h * w).ravel()]  # [F, H*W, 3]

    fy, fx = np.repeat(fy, w)[None, :, None], np.tile(fx, h)[None, :, None]
    top_row = read(y_low, x_low) * (1 - fx) + read(y_low, x_high) * fx
    bottom_row = read(y_high, x_low) * (1 - fx) + read(y_high, x_high) * fx
    return (top_row * (1 - fy) + bottom_row * fy).reshape(images.shape).astype(np.float32)


def _recolour(images: np.ndarray, background: np.ndarray, rng: np.random.Generator,
              channel_range: tuple[float, float], min_contrast: float) -> np.ndarray:
    alpha = _alpha(images, background)
    # The shapes' colours, to 8 levels a channel: every level combination that a shape pixel has.
    present = np.flatnonzero(np.bincount(_codes(images[alpha >= 1.0], levels=8), minlength=512))
    shape_colours = np.stack([present // 64, present // 8 % 8, present % 8], -1) * (2.0 / 7.0) - 1.0
    for _ in range(10):
        colour = rng.uniform(*channel_range, 3).astype(np.float32)
        if not len(shape_colours) or np.linalg.norm(shape_colours - colour, axis=-1).min() >= min_contrast:
            return images + (1.0 - alpha)[..., None] * (colour - background)
    return images


def speed_perturbed(samples: np.ndarray, speed: float) -> np.ndarray:
    """`samples` played `speed` times as fast (0.8: slower and lower; 1.25: faster and higher),
    resampled by the nearest fraction with a denominator of at most 20."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(1 / speed).limit_denominator(20)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)
