"""The codes of the images a model writes: an image tokenizer's encoder, for training data.

An image in a model turn is a target the model learns to write as discrete codes
(data/encode.py); this turns one into them. Images of another size are resized to the
tokenizer's square first (bicubic), as every image it was trained on had that size.

    coder = ImageCoder.load("runs/drawings/image_tokenizer")
    row = encode_example(example, tokenizer=tok, config=config, image_codes=coder)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from gemini_jax.data import media


class ImageCoder:
    """Calls the encoder one image at a time (jitted once); encode_example's media cache keeps
    each image's codes, under `key`, a digest of the tokenizer's weights."""

    def __init__(self, image_tokenizer: Any, *, key: str):
        import jax
        from flax import nnx

        self.image_tokenizer = image_tokenizer
        self.key = key
        self.size = image_tokenizer.config.image_size
        # A plain jax.jit of the split model: nnx.jit walks the module on every call, which took
        # longer than the encoder itself on one 64 x 64 picture (docs/image-output.md).
        graphdef, self._state = nnx.split(image_tokenizer)
        self._encode = jax.jit(lambda state, images: nnx.merge(graphdef, state).encode(images))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ImageCoder:
        from gemini_jax.model.image_tokenizer import load_image_tokenizer

        return cls(load_image_tokenizer(directory), key=tokenizer_key(directory))

    def __call__(self, source: Any) -> np.ndarray:
        """int32[codes_per_image]: the image's codes in raster order."""
        from PIL import Image

        pixels = media.load_image(source)
        if pixels.shape[:2] != (self.size, self.size):
            pixels = np.asarray(Image.fromarray(pixels).resize((self.size, self.size), Image.Resampling.BICUBIC))
        return np.asarray(self._encode(self._state, pixels[None]), np.int32).reshape(-1)


def tokenizer_key(directory: str | os.PathLike) -> str:
    """Names a saved image tokenizer by a digest of its weights."""
    from gemini_jax.model.image_tokenizer import WEIGHTS_FILE

    digest = hashlib.blake2b(Path(directory, WEIGHTS_FILE).read_bytes(), digest_size=16).hexdigest()
    return f"image-tokenizer:{digest}"
