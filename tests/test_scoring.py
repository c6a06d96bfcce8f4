"""Evaluation scores with training's loss: per-position losses and row sums equal to the plain
full-logits cross-entropy, to the bit."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax.config import PRESETS
from gemini_jax.evals.scoring import LossScorer, position_losses
from gemini_jax.model.layers import tied_logits

CONFIG = dataclasses.replace(PRESETS["test"], vision=None, audio=None)


def _full_logits_losses(hidden, targets, weight, table):
    logits = tied_logits(table, hidden, dtype=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weight


def test_position_losses_are_weighted_cross_entropy_at_every_position():
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (3, 7, 12))
    table = jax.random.normal(keys[1], (50, 12))
    targets = jax.random.randint(keys[2], (3, 7), 0, 50)
    weight = jnp.asarray(np.random.default_rng(0).choice([0.0, 0.25, 1.0, 2.0], size=(3, 7)), jnp.float32)
    got = position_losses(hidden, targets, weight, table=table,
                          project=functools.partial(tied_logits, dtype=jnp.float32))
    assert got.shape == (3, 7)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_full_logits_losses(hidden, targets, weight, table)))
    assert (np.asarray(got)[np.asarray(weight) == 0] == 0).all() and (np.asarray(got)[np.asarray(weight) > 0] > 0).all()


def test_row_scores_equal_the_full_logits_cross_entropy(build_model):
    model = build_model(CONFIG)
    rng = np.random.default_rng(1)
    tokens = rng.integers(16, CONFIG.vocab_size, (4, 33)).astype(np.int32)  # no media placeholder ids
    mask = (rng.random((4, 32)) < 0.6).astype(np.float32)
    mask[3] = 0.0  # a row with nothing scored: loss 0, count 0, greedy
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
             "segment_ids": np.ones((4, 32), np.int32), "positions": np.tile(np.arange(32, dtype=np.int32), (4, 1)),
             "media_spans": np.zeros((4, 32), np.int32)}
    scorer = LossScorer(model)
    scores = scorer.rows(batch)

    @jax.jit  # compiled, as the scorer is: eager ops would sum in another order
    def full_logits_scores(state, batch):
        out = nnx.merge(scorer.graphdef, state)({k: v for k, v in batch.items() if k not in ("targets", "loss_mask")})
        logits = out.logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        weight = batch["loss_mask"].astype(jnp.float32)
        hits = (jnp.argmax(logits, axis=-1) == batch["targets"]) | (weight == 0)
        return (losses * weight).sum(-1), weight.sum(-1), hits.all(-1)

    expected, _, greedy = full_logits_scores(scorer.state, batch)
    np.testing.assert_array_equal(scores.loss, np.asarray(expected))
    np.testing.assert_array_equal(scores.count, mask.sum(-1))
    np.testing.assert_array_equal(scores.greedy, greedy)
    assert scores.loss[3] == 0 and scores.greedy[3] and scores.loss[:3].min() > 0
