"""Training the image scorer (model/image_scorer.py) on a drawing corpus's real pictures.

Each train request (its instruction, the source picture of an edit, its target picture) is one
example; in a batch of B requests every request scores 3B candidates: the batch's targets, the
edits' source pictures (the edit not made) and the edits' targets moved by 8 to 16 pixels (the
change made, the place not kept). A candidate answers a drawing request when it shows the shape
and colour asked for, an edit when it also has the target's place and size; a softmax over the
candidates is trained to put its mass on those that answer (a contrastive loss, as CLIP's, with
the two mistakes an editor makes as hard negatives). Validation reports how often the top-scored
candidate answers the request (`<kind>_top_answers`), for drawings and edits apart.

    pairs = corpus_pairs(corpus, "train")
    scorer = train(ImageScorer(config, rngs=nnx.Rngs(seed)), pairs, settings)
    train_and_save(corpus, "runs/image_generation/image_scorer", settings=ScorerSettings())
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from gemini_jax.config import ConfigError
from gemini_jax.model.image_scorer import ImageScorer, hashed_words

# A moved target's offset in pixels, along each axis moved: half a small shape's width and more. The
# scorer is taught that a shape kept in its place beats one moved this far, whatever its size.
SHIFT_PIXELS = (8, 16)


@dataclasses.dataclass(frozen=True)
class ScorerSettings:
    """How the scorer trains (`gemini-jax image-scorer train`'s defaults; docs/image-output.md)."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"image scorer training: {name} must be 1 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"image scorer training: learning_rate must be above 0, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Requests and their target pictures: instructions, source pictures (zeros for a drawing),
    target pictures, and what each picture shows (`Shown`), which says which candidates answer
    which request."""

    instructions: list[str]
    sources: np.ndarray  # uint8 [N, H, W, 3]
    has_source: np.ndarray  # bool [N]
    targets: np.ndarray  # uint8 [N, H, W, 3]
    target_shown: Shown
    source_shown: Shown

    def __len__(self) -> int:
        return len(self.instructions)


@dataclasses.dataclass(frozen=True)
class Shown:
    """Per picture: its shape and colour (as ids), and where its shape is (centre, radius)."""

    kind: np.ndarray  # int [N]: shape * 64 + colour
    place: np.ndarray  # int [N, 3]: x, y, radius

    @classmethod
    def of(cls, scenes) -> Shown:
        from gemini_jax.data.corpora.drawings import COLOURS, SHAPES

        kind = [(SHAPES.index(s.shape) * 64 + COLOURS.index(s.colour)) if s is not None else -1 for s in scenes]
        place = [(int(s.x), int(s.y), s.radius) if s is not None else (-1, -1, -1) for s in scenes]
        return cls(np.array(kind), np.array(place).reshape(-1, 3))

    def take(self, index: np.ndarray) -> Shown:
        return Shown(self.kind[index], self.place[index])


def corpus_pairs(corpus, split: str) -> Pairs:
    """Every request of a DrawingCorpus split (both kinds) with its real target picture."""
    from gemini_jax.data.corpora.drawings import load_png

    records = corpus.records("draw", split) + corpus.records("edit", split)
    targets = np.stack([load_png(r.image) for r in records])
    blank = np.zeros_like(targets[0])
    sources = np.stack([load_png(r.source_image) if r.source_image is not None else blank for r in records])
    return Pairs([r.prompt for r in records], sources, np.array([r.source_image is not None for r in records]), targets,
                 Shown.of([r.target for r in records]), Shown.of([r.source for r in records]))


def moved(pictures: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each picture rolled by SHIFT_PIXELS in a random direction (the background is flat, so the
    roll moves the shape), and each roll's (dx, dy)."""
    out = np.empty_like(pictures)
    offsets = np.zeros((len(pictures), 2), int)
    for i, picture in enumerate(pictures):
        dy, dx = (rng.integers(SHIFT_PIXELS[0], SHIFT_PIXELS[1] + 1, 2) * rng.choice((-1, 1), 2))
        if rng.random() < 0.5:  # along one axis only, half the time
            dy, dx = (dy, 0) if rng.random() < 0.5 else (0, dx)
        out[i] = np.roll(picture, (int(dy), int(dx)), axis=(0, 1))
        offsets[i] = dx, dy
    return out, offsets


def _batch(pairs: Pairs, index: np.ndarray, rng: np.random.Generator, buckets: int) -> dict[str, np.ndarray]:
    targets = pairs.targets[index]
    has = pairs.has_source[index]
    shifted, offsets = moved(targets, rng)
    candidates = np.concatenate([targets, pairs.sources[index], shifted])
    wanted = pairs.target_shown.take(index)
    shown_moved = Shown(wanted.kind, wanted.place + np.concatenate([offsets, np.zeros((len(index), 1), int)], 1))
    shown = [wanted, pairs.source_shown.take(index), shown_moved]
    kind = np.concatenate([s.kind for s in shown])
    place = np.concatenate([s.place for s in shown])
    # A candidate answers a drawing when it shows the shape and colour asked for, an edit when it
    # also has the target's place and size.
    answers = wanted.kind[:, None] == kind[None, :]
    answers &= ~has[:, None] | (wanted.place[:, None, :] == place[None, :, :]).all(-1)
    # A drawing has no source, and no place to keep: its columns of those kinds are left out.
    allowed = np.concatenate([np.ones(len(index), bool), has, has])
    return {"words": hashed_words([pairs.instructions[i] for i in index], buckets), "sources": pairs.sources[index],
            "has_source": has, "candidates": candidates, "allowed": allowed, "answers": answers & allowed[None, :]}


def batch_scores(model: ImageScorer, batch: dict[str, jax.Array]) -> jax.Array:
    """[B, 3B]: every request of the batch against every candidate; left-out columns at -inf."""
    request = model.request_features(batch["words"], batch["sources"], batch["has_source"])
    pictures = model.pictures(batch["candidates"])
    scores = model.pair_scores(request, jnp.broadcast_to(pictures[None], (request.shape[0], *pictures.shape)))
    return jnp.where(batch["allowed"][None, :], scores, -jnp.inf)


def contrastive_loss(model: ImageScorer, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(loss, top answers): minus the log of the softmax mass on the candidates that answer each
    request (its own target always does), and whether the top-scored candidate answers it."""
    scores = batch_scores(model, batch)
    answers = batch["answers"]
    loss = jax.nn.logsumexp(scores, axis=-1) - jax.nn.logsumexp(jnp.where(answers, scores, -jnp.inf), axis=-1)
    top = jnp.take_along_axis(answers, jnp.argmax(scores, axis=-1)[:, None], axis=-1)[:, 0]
    return loss.mean(), top


@nnx.jit
def train_step(model: ImageScorer, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    (loss, top), grads = nnx.value_and_grad(contrastive_loss, has_aux=True)(model, batch)
    with jax.numpy_dtype_promotion("standard"):
        optimizer.update(model, grads)
    return {"loss": loss, "top_answers": top.mean()}


@nnx.jit
def _top_answers(model: ImageScorer, batch: dict[str, jax.Array]) -> jax.Array:
    return contrastive_loss(model, batch)[1]


def train(model: ImageScorer, pairs: Pairs, settings: ScorerSettings) -> list[dict[str, float]]:
    """Trains `model` in place on `pairs`; returns every step's loss and share of top answers."""
    if len(pairs) < settings.batch_size:
        raise ConfigError(f"{len(pairs)} training requests are fewer than a batch of {settings.batch_size}")
    warmup = min(settings.warmup_steps, settings.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, warmup_steps=warmup,
                                                  decay_steps=max(settings.steps, warmup + 1),
                                                  end_value=settings.learning_rate * 0.02)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=settings.weight_decay), wrt=nnx.Param)
    rng = np.random.default_rng([settings.seed, 41])
    history = []
    bar = tqdm(total=settings.steps, disable=not settings.progress, unit="step", desc="image scorer", leave=False)
    order = rng.permutation(len(pairs))
    at = 0
    for _ in range(settings.steps):
        if at + settings.batch_size > len(order):
            order, at = rng.permutation(len(pairs)), 0
        index = order[at : at + settings.batch_size]
        at += settings.batch_size
        metrics = train_step(model, optimizer, _batch(pairs, index, rng, model.config.word_buckets))
        history.append({k: float(v) for k, v in metrics.items()})
        bar.update()
    bar.close()
    return history


def evaluate(model: ImageScorer, pairs: Pairs, *, batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """The share of requests whose top-scored candidate among a batch's (as in training) answers
    it, for drawings and edits apart; a fixed draw of batches and moved targets."""
    rng = np.random.default_rng([seed, 42])
    order = rng.permutation(len(pairs))
    top = np.zeros(len(pairs), bool)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        top[index] = np.asarray(_top_answers(model, _batch(pairs, index, rng, model.config.word_buckets)))
    scored = np.zeros(len(pairs), bool)
    scored[order[: len(order) - len(order) % batch_size]] = True
    out = {"requests": int(scored.sum()), "batch_size": batch_size}
    for kind, mask in (("draw", ~pairs.has_source), ("edit", pairs.has_source)):
        if (mask & scored).any():
            out[f"{kind}_top_answers"] = float(top[mask & scored].mean())
    return out


def train_and_save(corpus, out, *, settings: ScorerSettings, config=None) -> dict[str, Any]:
    """Trains a scorer on the corpus's train requests and saves it with its validation report
    into `out` (written whole: a crash leaves no half-saved scorer)."""
    from pathlib import Path

    from gemini_jax.checkpoint import replace_dir
    from gemini_jax.model.image_scorer import ImageScorerConfig, save_image_scorer

    start = time.perf_counter()
    model = ImageScorer(config or ImageScorerConfig(), rngs=nnx.Rngs(settings.seed))
    history = train(model, corpus_pairs(corpus, "train"), settings)
    report = {"settings": dataclasses.asdict(settings), "train_seconds": round(time.perf_counter() - start, 1),
              "final_train_loss": float(np.mean([h["loss"] for h in history[-50:]])),
              "validation": evaluate(model, corpus_pairs(corpus, "validation"))}
    replace_dir(Path(out), lambda partial: save_image_scorer(model, partial, report=report))
    return report
