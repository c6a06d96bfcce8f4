"""Training the image tokenizer (model/image_tokenizer.py) on the demo's easy-VQA images, and its
held-out report.

    gemini-jax image-tokenizer train --out runs/image-tokenizer     # 64 codes an image; test 31.2 dB, 86% usage

The 5,000 easy-VQA pictures (64x64 RGB: one flat shape on a pale background) are split into
train, validation and test by a hash of their path in the wheel, so the split never moves. The
loss is the pixels' mean squared error (with `edge_weight`, plus that of the differences between
neighbouring pixels) and a small penalty that keeps the latents where FSQ's rounding responds;
AdamW with a warmup and a cosine decay, gradients clipped. Validation picks the settings
(docs/image-output.md); test is read once, at the end, into OUT/report.json: PSNR (per image,
8-bit range, averaged), the share of the codebook used at least once, and a PNG of test images
above their reconstructions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from gemini_jax.config import ConfigError
from gemini_jax.data.prepare.pipeline import hash_split
from gemini_jax.model.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, save_image_tokenizer
from gemini_jax.train.metrics import MetricsLog

REPORT_FILE = "report.json"
RECONSTRUCTIONS_FILE = "reconstructions.png"
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How the tokenizer trains; the defaults are the ones validation chose (docs/image-output.md)."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    clip_norm: float = 1.0  # of the gradients, globally
    # Weight of `edge_error` in the loss (0: pixels alone). Pixel error alone lets a small shape's
    # outline blur into a blob, which reads as another shape (docs/image-output.md).
    edge_weight: float = 0.0
    seed: int = 0
    log_every: int = 50
    eval_batch_size: int = 250
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"image tokenizer training: {name} must be 1 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"image tokenizer training: learning_rate must be above 0, got {self.learning_rate}")
        if not 0.0 <= self.edge_weight < float("inf"):
            raise ConfigError(f"image tokenizer training: edge_weight must be a finite number >= 0, got {self.edge_weight}")


def easy_vqa_images(data_dir: str | os.PathLike | None = None, *, limit: int | None = None) -> dict[str, np.ndarray]:
    """{"train" | "validation" | "test": uint8 [N, 64, 64, 3]}: every PNG under the easy-VQA data
    folder (or `data_dir`), split by a hash of its path relative to that folder. `limit` keeps
    the first that many paths (sorted), for quick runs."""
    from PIL import Image

    if data_dir is None:
        from gemini_jax.data.corpora.demo_tasks import easy_vqa_data_dir

        data_dir = easy_vqa_data_dir()
    root = Path(data_dir)
    paths = sorted(root.rglob("*.png"))[:limit]
    if not paths:
        raise ConfigError(f"no PNG images under {root}: expected the easy-VQA data folder (pip install easy-vqa)")
    splits: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for path in paths:
        key = path.relative_to(root).as_posix().encode()
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        splits[hash_split(key, validation_fraction=VALIDATION_FRACTION, test_fraction=TEST_FRACTION)].append(pixels)
    empty = [name for name, images in splits.items() if not images]
    if empty:
        raise ConfigError(f"{len(paths)} images under {root} leave no {' or '.join(empty)} image: give more images")
    return {name: np.stack(images) for name, images in splits.items()}


# FSQ bounds each latent with tanh, whose gradient vanishes far out: an encoder left alone pushes its
# latents there (a rounded value far out never flips), and a channel stuck at its outermost level
# is dead. Measured: without this term, 76 of 1,000 codes used on validation, one channel of four
# always at the same level. Latents within +-LATENT_BOUND reach every level (tanh(2.5) = 0.987).
LATENT_BOUND = 2.5
LATENT_PENALTY = 0.1


def edge_error(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of the differences between horizontally and vertically neighbouring
    pixels ([B, H, W, C] in [0, 1]): zero where the outlines match, whatever the flat colours."""
    return sum(jnp.mean(jnp.square(jnp.diff(reconstruction, axis=axis) - jnp.diff(target, axis=axis)))
               for axis in (1, 2))


def reconstruction_loss(model: ImageTokenizer, images: jax.Array, edge_weight: jax.Array | float = 0.0
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, {"mse", "edge", "latent_excess"}): the pixels' mean squared error in [0, 1], plus
    `edge_weight` times `edge_error`, plus a small penalty on latents beyond the range where FSQ's
    rounding still responds to them."""
    out = model(images)
    target = images.astype(jnp.float32) / jnp.float32(255)
    mse = jnp.mean(jnp.square(out.reconstruction - target))
    edge = edge_error(out.reconstruction, target)
    excess = jnp.mean(jnp.square(jax.nn.relu(jnp.abs(out.latents) - LATENT_BOUND)))
    return mse + edge_weight * edge + LATENT_PENALTY * excess, {"mse": mse, "edge": edge, "latent_excess": excess}


@nnx.jit
def train_step(model: ImageTokenizer, optimizer: nnx.Optimizer, images: jax.Array,
               edge_weight: jax.Array | float = 0.0) -> dict[str, jax.Array]:
    (loss, metrics), grads = nnx.value_and_grad(reconstruction_loss, has_aux=True)(model, images, edge_weight)
    # Optax mixes Python scalars with int32 step counts: written for standard promotion (trainer.py).
    with jax.numpy_dtype_promotion("standard"):
        optimizer.update(model, grads)
    return {"loss": loss, **metrics}


@nnx.jit
def _reconstruct(model: ImageTokenizer, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = model(images)
    return out.codes, jnp.round(out.reconstruction * 255).astype(jnp.uint8)


def reconstruct(model: ImageTokenizer, images: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes int32 [N, h, w], reconstructions uint8 [N, H, W, C]) of `images` uint8 [N, H, W, C],
    in batches padded to `batch_size`, so that one compiled program serves every call."""
    codes, reconstructions = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
        c, r = _reconstruct(model, jnp.asarray(padded))
        codes.append(np.asarray(c)[: len(batch)])
        reconstructions.append(np.asarray(r)[: len(batch)])
    return np.concatenate(codes), np.concatenate(reconstructions)


def psnr(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 [N, H, W, C] pairs, 8-bit range (a perfect copy caps at 100 dB)."""
    error = (images.astype(np.float64) - reconstructions.astype(np.float64)) ** 2
    mse = error.reshape(len(images), -1).mean(axis=1)
    return np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)), 100.0)


def evaluate(model: ImageTokenizer, images: np.ndarray, *, batch_size: int = 250) -> dict[str, Any]:
    """PSNR (mean of per-image PSNR, and its low tail) and codebook usage over `images` uint8 [N, H, W, C]."""
    codes, recon = reconstruct(model, images, batch_size=batch_size)
    per_image = psnr(images, recon)
    used = len(np.unique(codes))
    size = model.config.codebook_size
    return {"images": len(images), "psnr_db": float(per_image.mean()), "psnr_db_min": float(per_image.min()),
            "psnr_db_p10": float(np.percentile(per_image, 10)), "codebook_usage": used / size, "codes_used": used,
            "codebook_size": size, "codes_per_image": model.config.codes_per_image}


def save_reconstructions(model: ImageTokenizer, images: np.ndarray, path: str | os.PathLike, *, count: int = 8,
                         batch_size: int = 250) -> None:
    """A PNG: `count` images in the top row, their reconstructions (through the codes) below, 2x enlarged."""
    from PIL import Image

    images = images[:count]
    _, recon = reconstruct(model, images, batch_size=batch_size)
    grid = np.concatenate([np.concatenate(list(images), axis=1), np.concatenate(list(recon), axis=1)])
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def _optimizer(model: ImageTokenizer, settings: TrainSettings) -> nnx.Optimizer:
    warmup = min(settings.warmup_steps, settings.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, warmup_steps=warmup, decay_steps=max(settings.steps, warmup + 1),
        end_value=settings.learning_rate * 0.02)
    # Clipping: without it, one early run of the 8x8 setting fell to predicting the mean image for good.
    tx = optax.chain(optax.clip_by_global_norm(settings.clip_norm), optax.adamw(schedule, weight_decay=settings.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _batches(images: np.ndarray, *, batch_size: int, seed: int):
    """Shuffled batches of the train images, reshuffled every epoch, forever; augmented by random
    horizontal flips (the shapes are symmetric or mirror into shapes of the same kind)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = images[order[start : start + batch_size]]
            flip = rng.random(batch_size) < 0.5
            yield np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)


def train(model: ImageTokenizer, images: np.ndarray, settings: TrainSettings, *,
          log: MetricsLog | None = None) -> list[dict[str, float]]:
    """Trains `model` in place on `images` uint8 [N, H, W, C]; returns every step's metrics."""
    if len(images) < settings.batch_size:
        raise ConfigError(f"{len(images)} training images are fewer than a batch of {settings.batch_size}")
    optimizer = _optimizer(model, settings)
    batches = _batches(images, batch_size=settings.batch_size, seed=settings.seed)
    history: list[dict[str, float]] = []
    bar = tqdm(total=settings.steps, disable=not settings.progress, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        metrics = train_step(model, optimizer, jnp.asarray(next(batches)), np.float32(settings.edge_weight))
        history.append({name: float(value) for name, value in metrics.items()})
        bar.update()
        if step % settings.log_every == 0 or step == settings.steps:
            recent = {name: float(np.mean([h[name] for h in history[-settings.log_every :]])) for name in history[-1]}
            bar.set_postfix(loss=f"{recent['loss']:.5f}")
            if log is not None:
                log.write({"step": step, **recent, "seconds": round(time.perf_counter() - start, 2)})
    bar.close()
    return history


def train_and_report(out: str | os.PathLike, *, config: ImageTokenizerConfig, settings: TrainSettings,
                     data_dir: str | os.PathLike | None = None, limit: int | None = None) -> dict[str, Any]:
    """Trains on the train split, writes the tokenizer (model/image_tokenizer.py's checkpoint),
    metrics.jsonl, reconstructions.png and report.json (validation and test figures) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = easy_vqa_images(data_dir, limit=limit)
    model = ImageTokenizer(config, rngs=nnx.Rngs(settings.seed))
    log = MetricsLog(out)
    log.clear()
    start = time.perf_counter()
    history = train(model, splits["train"], settings, log=log)
    train_seconds = time.perf_counter() - start
    save_image_tokenizer(model, out)
    validation = evaluate(model, splits["validation"], batch_size=settings.eval_batch_size)
    test = evaluate(model, splits["test"], batch_size=settings.eval_batch_size)
    save_reconstructions(model, splits["test"], out / RECONSTRUCTIONS_FILE, batch_size=settings.eval_batch_size)
    report = {"config": config.to_json(), "settings": dataclasses.asdict(settings),
              "images": {name: len(images) for name, images in splits.items()},
              "final_train_mse": float(np.mean([h["mse"] for h in history[-settings.log_every :]])),
              "train_seconds": round(train_seconds, 1), "validation": validation, "test": test,
              "codebook_size": config.codebook_size, "codes_per_image": config.codes_per_image}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
