"""The image scorer: how well a picture answers a drawing request, for choosing the best of several
sampled replies (as DALL-E reranks its samples with CLIP, and Parti with a contrastive model).

A request is its instruction (text) and, for an edit, the picture it asks to change. The scorer
reads the instruction as hashed words and word pairs (pairs keep "circle into a triangle" apart
from "triangle into a circle"), the pictures with a small convolutional encoder whose features
keep where things are (an edit must keep its shape's place and size), and scores each candidate
picture against the request with a small network on both. It is trained by the project on real
(request, target picture) pairs, never on a generated picture (train/image_scorer.py), so it is a
model of its own, unlike the evaluations' judge (evals/image_judge.py: a connected-region rule
and a logistic regression on shape masks).

    config = ImageScorerConfig()
    scorer = ImageScorer(config, rngs=nnx.Rngs(0))
    scores = scorer(words, sources, has_source, candidates)   # [B], [B, K] -> float32 [B, K]
    best = choose(scorer, instructions, sources, candidates)   # per request, the best candidate's index
    save_image_scorer(scorer, "runs/image_generation/image_scorer"); load_image_scorer(...)

Dimension letters: B requests, K candidate pictures, H W pixel rows and columns, V word buckets.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.config import ConfigError
from gemini_jax.model.module_weights import load_weights, read_record, save_weights

CONFIG_FILE = "image_scorer.json"
WEIGHTS_FILE = "image_scorer.safetensors"
FORMAT = "gemini-jax/image-scorer-v1"


@dataclasses.dataclass(frozen=True)
class ImageScorerConfig:
    """Square RGB pictures of `image_size` pixels; instructions hashed into `word_buckets`."""

    image_size: int = 64
    pool: int = 2  # pixels averaged on each side before the convolutions: cheaper, and a shape stays clear
    word_buckets: int = 2048
    widths: tuple[int, ...] = (32, 64)  # channels of each stride-2 convolution
    width: int = 128  # of a request's and a picture's features

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        for name in ("image_size", "pool", "word_buckets", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"image scorer {name} must be a positive integer, got {value!r}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"image scorer widths must be positive integers, one per convolution, got {self.widths}")
        if self.image_size % (self.pool << len(self.widths)):
            raise ConfigError(f"image scorer image_size {self.image_size} must be a multiple of pool {self.pool} "
                              f"times 2**{len(self.widths)} (one halving per convolution)")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ImageScorerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ConfigError(f"unknown image scorer config key(s) {unknown}; accepted: {sorted(fields)}")
        return cls(**record)


def words_and_pairs(text: str) -> list[str]:
    """The lower-cased words of `text` and each pair of neighbours ("make", "make the", "the", ...)."""
    words = re.findall(r"[a-z]+", text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def hashed_words(texts: list[str], buckets: int) -> np.ndarray:
    """float32 [B, buckets]: how often each bucket's words and word pairs occur in each text (a
    stable hash, the same in every process)."""
    out = np.zeros((len(texts), buckets), np.float32)
    for row, text in enumerate(texts):
        for item in words_and_pairs(text):
            out[row, zlib.crc32(item.encode()) % buckets] += 1.0
    return out


class PictureEncoder(nnx.Module):
    """Average pooling, stride-2 convolutions, then one dense layer over the flattened grid:
    features that keep where in the picture each thing is (global pooling would not)."""

    def __init__(self, config: ImageScorerConfig, *, rngs: nnx.Rngs):
        channels = (3, *config.widths)
        self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(channels, channels[1:])])
        self.pool = config.pool
        side = config.image_size // config.pool >> len(config.widths)
        self.out = nnx.Linear(side * side * config.widths[-1], config.width, rngs=rngs)

    def __call__(self, pictures: jax.Array) -> jax.Array:
        """uint8 or float [..., H, W, 3] in 0..255 -> float32 [..., width]"""
        lead = pictures.shape[:-3]
        x = pictures.reshape(-1, *pictures.shape[-3:]).astype(jnp.float32) / 127.5 - 1.0
        n, h, w, c = x.shape
        x = x.reshape(n, h // self.pool, self.pool, w // self.pool, self.pool, c).mean(axis=(2, 4))
        for conv in self.convs:
            x = jax.nn.gelu(conv(x))
        return self.out(x.reshape(x.shape[0], -1)).reshape(*lead, -1)


class ImageScorer(nnx.Module):
    def __init__(self, config: ImageScorerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.pictures = PictureEncoder(config, rngs=rngs)
        self.words = nnx.Linear(config.word_buckets, config.width, rngs=rngs)
        self.request = nnx.Linear(2 * config.width + 1, config.width, rngs=rngs)
        self.hidden = nnx.Linear(3 * config.width, config.width, rngs=rngs)
        self.score = nnx.Linear(config.width, 1, rngs=rngs)

    def request_features(self, words: jax.Array, sources: jax.Array, has_source: jax.Array) -> jax.Array:
        """[B, V], [B, H, W, 3], [B] (0 or 1: a drawing has no source picture) -> [B, width]"""
        has = has_source.astype(jnp.float32)[:, None]
        source = self.pictures(sources) * has
        return jax.nn.gelu(self.request(jnp.concatenate([jax.nn.gelu(self.words(words)), source, has], axis=-1)))

    def pair_scores(self, request: jax.Array, candidates: jax.Array) -> jax.Array:
        """Request features [B, width] against candidate features [B, K, width] -> [B, K]."""
        request = jnp.broadcast_to(request[:, None, :], candidates.shape)
        both = jnp.concatenate([request, candidates, request * candidates], axis=-1)
        return self.score(jax.nn.gelu(self.hidden(both)))[..., 0]

    def __call__(self, words: jax.Array, sources: jax.Array, has_source: jax.Array,
                 candidates: jax.Array) -> jax.Array:
        """Scores of candidate pictures [B, K, H, W, 3] for each request: float32 [B, K], higher better."""
        return self.pair_scores(self.request_features(words, sources, has_source), self.pictures(candidates))


@nnx.jit
def _scores(model: ImageScorer, words, sources, has_source, candidates) -> jax.Array:
    return model(words, sources, has_source, candidates)


def choose(model: ImageScorer, instructions: list[str], sources: list[np.ndarray | None],
           candidates: list[list[np.ndarray | None]]) -> list[int]:
    """For each request (its instruction and, for an edit, its source picture), the index of the
    candidate picture the scorer rates highest (candidates [B][K], uint8 [H, W, 3] each); a missing
    picture (None) is chosen only when every candidate is missing (then index 0)."""
    if not instructions:
        return []
    size = model.config.image_size
    blank = np.zeros((size, size, 3), np.uint8)
    words = hashed_words(instructions, model.config.word_buckets)
    has = np.array([s is not None for s in sources])
    source_pixels = np.stack([blank if s is None else s for s in sources])
    pictures = np.stack([np.stack([blank if c is None else c for c in row]) for row in candidates])
    scores = np.asarray(_scores(model, words, source_pixels, has, pictures))
    missing = np.array([[c is None for c in row] for row in candidates])
    return [int(i) for i in np.argmax(np.where(missing, -np.inf, scores), axis=1)]


def request_of(example) -> tuple[str, np.ndarray | None]:
    """What the scorer reads of a request (an Example ending on the user turn that asks for the
    picture): that turn's text, and the last picture of an earlier model turn (an edit's source),
    if any."""
    from gemini_jax.data.media import load_image

    last = example.contents[-1]
    text = " ".join(part.text for part in last.parts if part.text is not None)
    pictures = [part.image for content in example.contents[:-1] if content.role == "model"
                for part in content.parts if part.image is not None]
    return text, load_image(pictures[-1]) if pictures else None


# ----------------------------------------------------------------------------------------------
# The checkpoint: DIR/image_scorer.json (format, config, training report) and DIR/image_scorer.safetensors.


def save_image_scorer(model: ImageScorer, out: str | os.PathLike, *, report: dict[str, Any] | None = None) -> Path:
    """Writes the weights (safetensors) and then the config with `report` (JSON) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS_FILE, format=FORMAT)
    record = {"format": FORMAT, "config": model.config.to_json(), "report": report or {}}
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def load_image_scorer(directory: str | os.PathLike) -> ImageScorer:
    """The image scorer saved in `directory`; every weight must be there with its shape."""
    _, config = read_record(directory, CONFIG_FILE, format=FORMAT, kind="image scorer",
                            hint="train one with `gemini-jax image-scorer train --run RUN`",
                            parse=ImageScorerConfig.from_json)
    model = ImageScorer(config, rngs=nnx.Rngs(0))
    load_weights(model, Path(directory) / WEIGHTS_FILE)
    return model
