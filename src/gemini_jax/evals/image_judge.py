"""The judge of generated drawings: which easy-VQA shape, in which colour, and where, a picture
holds. It never saw a generated image: its one learned part is fitted on real drawings only.

    judge = ImageJudge.fit(corpus.images("train"), [d.target.shape for d in train_drawings])
    verdicts = judge.judge(images)            # uint8 [N, 64, 64, 3] -> list[Verdict]
    verdicts[0].shape, verdicts[0].colour     # "circle", "teal" (None: no shape found)
    mask_iou(verdicts[0].mask, other.mask)    # where the shape is, compared

- Where: the background is the median of the picture's outermost ring of pixels; the shape is the
  largest connected region of pixels farther than BACKGROUND_DISTANCE from it (stray pixels of a
  poor picture are not the shape).
- Colour: the median of the region's inner pixels (anti-aliased edges mix with the background),
  named by the nearest of easy-VQA's eight colours. A fixed rule: the colours are exact in real
  drawings, and a rule cannot overfit them.
- Shape: logistic regression (scikit-learn) on the region's mask cropped to its bounding box and
  resized to CROP x CROP: position and size do not change it, proportions and outline do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES

BACKGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as shape
MIN_PIXELS = 6  # a region smaller than this is no shape
CROP = 16
_PALETTE_NAMES = tuple(VQA_COLOURS)
_PALETTE = np.array([VQA_COLOURS[c] for c in _PALETTE_NAMES], np.float64)


@dataclasses.dataclass(frozen=True)
class Verdict:
    shape: str | None  # None: no shape found
    colour: str | None
    mask: np.ndarray  # bool [H, W]: the shape's pixels


def shape_mask(image: np.ndarray) -> np.ndarray:
    """bool [H, W]: the largest connected region unlike the background of uint8 [H, W, 3]."""
    pixels = image.astype(np.float64)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background = np.median(ring, axis=0)
    unlike = np.linalg.norm(pixels - background, axis=-1) > BACKGROUND_DISTANCE
    labels, count = ndimage.label(unlike)
    if count == 0:
        return unlike
    sizes = ndimage.sum(unlike, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def mask_features(mask: np.ndarray) -> np.ndarray:
    """float [CROP * CROP]: the mask's bounding box, resized (area-averaged) to CROP x CROP."""
    from PIL import Image

    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros(CROP * CROP)
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)
    resized = Image.fromarray(crop).resize((CROP, CROP), Image.Resampling.BOX)
    return np.asarray(resized, np.float64).reshape(-1)


def colour_of(image: np.ndarray, mask: np.ndarray) -> str:
    """The easy-VQA colour nearest the median of the mask's inner pixels."""
    inner = ndimage.binary_erosion(mask)
    pixels = image[inner if inner.any() else mask].astype(np.float64)
    median = np.median(pixels, axis=0)
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - median, axis=1)))]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class ImageJudge:
    """Shape and colour of drawings; `fit` on real ones."""

    def __init__(self, classifier):
        self.classifier = classifier

    @classmethod
    def fit(cls, images: np.ndarray, shapes: Sequence[str], *, seed: int = 0) -> ImageJudge:
        """A judge whose shape classifier learned from real `images` uint8 [N, H, W, 3] and their shapes."""
        from sklearn.linear_model import LogisticRegression

        if len(images) != len(shapes) or not len(images):
            raise ValueError(f"the judge fits on images and their shapes, one each: got {len(images)} images "
                             f"and {len(shapes)} shapes")
        unknown = sorted(set(shapes) - set(VQA_SHAPES))
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; accepted: {', '.join(VQA_SHAPES)}")
        features = np.stack([mask_features(shape_mask(image)) for image in images])
        classifier = LogisticRegression(max_iter=2000, random_state=seed).fit(features, list(shapes))
        return cls(classifier)

    def judge(self, images: np.ndarray | Sequence[np.ndarray]) -> list[Verdict]:
        masks = [shape_mask(image) for image in images]
        found = [i for i, mask in enumerate(masks) if mask.sum() >= MIN_PIXELS]
        shapes: dict[int, str] = {}
        if found:
            predicted = self.classifier.predict(np.stack([mask_features(masks[i]) for i in found]))
            shapes = {i: str(s) for i, s in zip(found, predicted)}
        return [Verdict(shapes.get(i), colour_of(image, mask) if i in shapes else None, mask)
                for i, (image, mask) in enumerate(zip(images, masks))]
