"""The image tokenizer: a convolutional autoencoder with a finite-scalar-quantization bottleneck,
turning an image into a small grid of discrete codes that a language model can write, and back.

- Encoder: per stage, space-to-depth (2x2 pixels -> channels, halving the side) then a 3x3
  convolution and a residual 3x3 convolution; `factor` = 2**stages; a 1x1 convolution to one
  channel per FSQ level. Space-to-depth before a convolution (and depth-to-space after one in
  the decoder) keeps every convolution at the lower resolution, several times cheaper on CPUs
  than strided or transposed convolutions of the same reach.
- Bottleneck: FSQ (model/fsq.py): prod(levels) codes, nothing to learn, nothing to collapse.
- Decoder: the mirror image, then a sigmoid: pixels in [0, 1].

    config = ImageTokenizerConfig(image_size=64, factor=8, levels=(8, 5, 5, 5), widths=(32, 64, 128))
    tokenizer = ImageTokenizer(config, rngs=nnx.Rngs(0))
    codes = tokenizer.encode(images)          # uint8 or float [B, 64, 64, 3] -> int32 [B, 8, 8]
    pixels = tokenizer.decode(codes)          # -> float32 [B, 64, 64, 3] in [0, 1]
    save_image_tokenizer(tokenizer, "runs/image-tokenizer"); load_image_tokenizer("runs/image-tokenizer")

`gemini-jax image-tokenizer train` trains one (train/image_tokenizer.py).

Dimension letters: B batch, H W pixel rows and columns, h w code rows and columns, C channels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.checkpoint import CheckpointError
from gemini_jax.config import ConfigError
from gemini_jax.model.fsq import FSQ
from gemini_jax.model.module_weights import load_weights, read_record, save_weights

CONFIG_FILE = "image_tokenizer.json"
WEIGHTS_FILE = "image_tokenizer.safetensors"
FORMAT = "gemini-jax/image-tokenizer-v1"


@dataclasses.dataclass(frozen=True)
class ImageTokenizerConfig:
    """Square images of `image_size` pixels, `factor` pixels a code on each side."""

    image_size: int = 64
    channels: int = 3
    factor: int = 8  # a power of two: one encoder (and decoder) stage per halving
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels, one per latent channel
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage, full resolution first

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "widths", tuple(self.widths))
        for name in ("image_size", "channels", "factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"image tokenizer {name} must be a positive integer, got {value!r}")
        if self.factor < 2 or self.factor & (self.factor - 1):
            raise ConfigError(f"image tokenizer factor must be a power of two >= 2 (2, 4, 8, ...), got {self.factor}")
        if self.image_size % self.factor:
            raise ConfigError(f"image tokenizer image_size {self.image_size} is not a multiple of factor "
                              f"{self.factor}: codes must tile the image")
        if len(self.widths) != self.stages or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"image tokenizer widths {self.widths} must be {self.stages} positive integers, one per "
                              f"stage of factor {self.factor} (log2 of it)")
        try:
            FSQ(self.levels)
        except ValueError as e:
            raise ConfigError(f"image tokenizer: {e}") from None

    @property
    def stages(self) -> int:
        return int(math.log2(self.factor))

    @property
    def grid(self) -> int:
        """Codes per side of an image."""
        return self.image_size // self.factor

    @property
    def codes_per_image(self) -> int:
        return self.grid * self.grid

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"levels": list(self.levels), "widths": list(self.widths)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ImageTokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, dict) or set(record) != names:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(f"an image tokenizer config needs exactly the fields {sorted(names)}, got {got}")
        return cls(**record)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenizerOutput:
    """The forward pass: what training reads and what probing needs."""

    reconstruction: jax.Array  # float32 [B, H, W, C] in [0, 1]
    codes: jax.Array  # int32 [B, h, w]
    latents: jax.Array  # float32 [B, h, w, len(levels)], before quantization


def _space_to_depth(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 block of pixels becomes one position."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def _depth_to_space(x: jax.Array) -> jax.Array:
    """[B, H, W, 4C] -> [B, 2H, 2W, C], the inverse of `_space_to_depth`."""
    b, h, w, c4 = x.shape
    x = x.reshape(b, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def _conv(c_in: int, c_out: int, size: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(c_in, c_out, kernel_size=(size, size), padding="SAME", rngs=rngs)


class Residual(nnx.Module):
    """x + conv(gelu(x)): one more 3x3 reach at the same resolution."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv = _conv(width, width, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv(jax.nn.gelu(x))


class DownStage(nnx.Module):
    """[B, H, W, C] -> [B, H/2, W/2, width]."""

    def __init__(self, c_in: int, width: int, *, rngs: nnx.Rngs):
        self.conv = _conv(4 * c_in, width, 3, rngs)
        self.residual = Residual(width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.residual(self.conv(_space_to_depth(x)))


class UpStage(nnx.Module):
    """[B, H, W, C] -> [B, 2H, 2W, width]."""

    def __init__(self, c_in: int, width: int, *, rngs: nnx.Rngs):
        self.residual = Residual(c_in, rngs=rngs)
        self.conv = _conv(c_in, 4 * width, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _depth_to_space(self.conv(jax.nn.gelu(self.residual(x))))


class ImageTokenizer(nnx.Module):
    """Images <-> FSQ codes; `__call__` is the training forward pass."""

    def __init__(self, config: ImageTokenizerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.fsq = FSQ(config.levels)
        widths = config.widths
        self.down = nnx.List([DownStage(c_in, c_out, rngs=rngs)
                              for c_in, c_out in zip((config.channels, *widths[:-1]), widths)])
        self.to_latents = _conv(widths[-1], len(config.levels), 1, rngs)
        self.from_latents = _conv(len(config.levels), widths[-1], 1, rngs)
        # Decoder stages mirror the encoder's; the last one widens to the first stage's width.
        outs = (*widths[::-1][1:], widths[0])
        self.up = nnx.List([UpStage(c_in, c_out, rngs=rngs) for c_in, c_out in zip(widths[::-1], outs)])
        self.to_pixels = _conv(widths[0], config.channels, 3, rngs)

    def _check(self, images: jax.Array) -> None:
        c = self.config
        want = (c.image_size, c.image_size, c.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"the image tokenizer takes images [B, {want[0]}, {want[1]}, {want[2]}], "
                             f"got shape {tuple(images.shape)}")

    def latents(self, images: jax.Array) -> jax.Array:
        """images uint8 [B, H, W, C] (0..255) or float [B, H, W, C] (0..1) -> float32 [B, h, w, len(levels)]."""
        self._check(images)
        scale = 1 / 255 if jnp.issubdtype(images.dtype, jnp.integer) else 1.0
        x = images.astype(jnp.float32) * jnp.float32(scale) * 2 - 1  # [-1, 1]
        for stage in self.down:
            x = stage(x)
        return self.to_latents(jax.nn.gelu(x))

    def decode_latents(self, quantized: jax.Array) -> jax.Array:
        """Quantized latents [B, h, w, len(levels)] in [-1, 1] -> pixels float32 [B, H, W, C] in [0, 1]."""
        x = self.from_latents(quantized)
        for stage in self.up:
            x = stage(x)
        return jax.nn.sigmoid(self.to_pixels(jax.nn.gelu(x)))

    def __call__(self, images: jax.Array) -> TokenizerOutput:
        latents = self.latents(images)
        quantized, codes = self.fsq(latents)  # straight-through rounding: gradients reach the encoder
        return TokenizerOutput(reconstruction=self.decode_latents(quantized), codes=codes, latents=latents)

    def encode(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, C] -> codes int32 [B, h, w] in [0, codebook_size)."""
        return self.fsq(self.latents(images))[1]

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes int32 [B, h, w] -> images float32 [B, H, W, C] in [0, 1]."""
        grid, size = self.config.grid, self.config.codebook_size
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (grid, grid):
            raise ValueError(f"the image tokenizer decodes codes [B, {grid}, {grid}], got shape {tuple(codes.shape)}")
        if not jnp.issubdtype(codes.dtype, jnp.integer):
            raise ValueError(f"codes must be integers in [0, {size}), got dtype {codes.dtype}")
        return self.decode_latents(self.fsq.decode(codes.astype(jnp.int32)))


# ----------------------------------------------------------------------------------------------
# The checkpoint: DIR/image_tokenizer.json (format, config) and DIR/image_tokenizer.safetensors.


def save_image_tokenizer(model: ImageTokenizer, out: str | os.PathLike) -> Path:
    """Writes the config (JSON) and the weights (safetensors, float32) into `out`; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS_FILE, format=FORMAT)
    record = {"format": FORMAT, "config": model.config.to_json(),
              "codebook_size": model.config.codebook_size, "codes_per_image": model.config.codes_per_image}
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def read_image_tokenizer_config(directory: str | os.PathLike) -> ImageTokenizerConfig:
    """The config of a saved image tokenizer, checked; nothing is allocated."""
    record, config = read_record(directory, CONFIG_FILE, format=FORMAT, kind="image tokenizer",
                                 hint="write one with `gemini-jax image-tokenizer train --out DIR`",
                                 parse=ImageTokenizerConfig.from_json)
    path = Path(directory) / CONFIG_FILE
    for name in ("codebook_size", "codes_per_image"):
        if record.get(name) != getattr(config, name):
            raise CheckpointError(f"{path}: {name} {record.get(name)!r} does not match its config's "
                                  f"{getattr(config, name)}")
    return config


def load_image_tokenizer(directory: str | os.PathLike, *,
                         expected: ImageTokenizerConfig | None = None) -> ImageTokenizer:
    """The image tokenizer saved in `directory`. With `expected`, a different saved config is refused,
    naming the fields that differ. Every weight must be there with its shape; none may be extra."""
    config = read_image_tokenizer_config(directory)
    if expected is not None and expected != config:
        diffs = [f"{f.name}: saved {getattr(config, f.name)!r}, expected {getattr(expected, f.name)!r}"
                 for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(expected, f.name)]
        raise CheckpointError(f"{directory} holds another image tokenizer ({'; '.join(diffs)})")
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing (its config is there: an interrupted save?)")
    model = ImageTokenizer(config, rngs=nnx.Rngs(0))
    load_weights(model, path)
    return model
