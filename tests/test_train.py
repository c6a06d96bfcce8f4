"""Training: the loss falls, logits-at-loss-positions equals the full loss, resume is exact."""

import dataclasses
import inspect
import json
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from gemini_jax.checkpoint import Checkpointer
from gemini_jax.config import PRESETS
from gemini_jax.data import pipeline
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import (
    TrainConfig,
    Trainer,
    masked_cross_entropy,
    model_inputs,
    train,
    with_loss_positions,
)

CONFIG = dataclasses.replace(PRESETS["test"].text_only, vocab_size=400)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [inspect.getsource(textwrap)]
    return train_tokenizer(corpus, vocab_size=400, path=tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture(scope="module")
def documents():
    return [inspect.getsource(textwrap)[i : i + 600] for i in range(0, 12_000, 600)]


def text_stream(documents, tok, seed=0):
    return iter(pipeline.packed_text(documents, tokenizer=tok, seq_len=48, batch_size=4, seed=seed,
                                     prefetch_batches=0))


def test_loss_positions_give_the_full_masked_loss(build_model, tok, documents):
    model = build_model(CONFIG)
    batch = next(text_stream(documents, tok))
    rng = np.random.default_rng(0)
    batch["loss_mask"] = (rng.random(batch["loss_mask"].shape) < 0.2).astype(np.float32)  # a sparse mask
    full, count = masked_cross_entropy(model(model_inputs(batch)).logits, batch["targets"], batch["loss_mask"])
    trainer = Trainer(model, OptimizerConfig())
    gathered, gathered_count = trainer._loss_fn(trainer.params, with_loss_positions(batch))
    assert float(count) == float(gathered_count) > 0
    np.testing.assert_allclose(float(gathered), float(full), rtol=1e-5)
    positions = with_loss_positions(batch)["loss_positions"]
    assert positions.shape[1] < batch["loss_mask"].shape[1]  # fewer logits than tokens


def test_vocabulary_chunked_loss_trains_like_the_plain_one(tok, documents):
    """Two updates with the loss projected 7 tokens at a time (train/loss.py's fused
    gradients) and in one piece: the same losses and parameters."""
    stream = list(zip(range(2), text_stream(documents, tok)))
    results = []
    for chunk in (None, 7):  # each trainer donates its own freshly made (identical) parameters
        trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OptimizerConfig(warmup_steps=1), logits_chunk_tokens=chunk)
        losses = [float(trainer.step(batch)["loss"]) for _, batch in stream]
        results.append((losses, jax.tree.map(np.array, trainer.params)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[1][1], results[0][1])


def test_an_update_with_non_finite_gradients_is_skipped_and_counted(build_model, tok, documents):
    # Its own parameters: the trainer donates them, and build_model's are shared by other tests.
    trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OptimizerConfig(warmup_steps=1))
    stream = text_stream(documents, tok)
    before = jax.tree.map(np.array, trainer.params)
    poisoned = next(stream)
    poisoned["loss_mask"] = poisoned["loss_mask"].copy()
    poisoned["loss_mask"][0, np.argmax(poisoned["loss_mask"][0] > 0)] = np.nan
    metrics = trainer.step(poisoned)
    assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped_updates"]) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, trainer.params), before)
    for _ in range(2):  # the schedule's first learning rate is 0: the second update moves
        metrics = trainer.step(next(stream))
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped_updates"]) == 1
    changed = jax.tree.map(lambda a, b: not np.array_equal(np.array(a), b), trainer.params, before)
    assert any(jax.tree.leaves(changed))


def test_a_short_run_lowers_the_loss(tmp_path, tok, documents):
    config = TrainConfig(steps=40, log_every=10, checkpoint_every=100, progress=False,
                         optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=5, total_steps=40))
    train(config=CONFIG, run_dir=tmp_path, data=text_stream(documents, tok), train_config=config)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert losses[-1] < 0.75 * losses[0], losses
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tok, documents):
    config = TrainConfig(steps=8, log_every=1, checkpoint_every=4, progress=False,
                         optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=8))

    def losses(run_dir):
        return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]

    train(config=CONFIG, run_dir=tmp_path / "whole", data=text_stream(documents, tok), train_config=config)
    # Interrupted after step 4 (the checkpoint), then resumed by a fresh call with a fresh iterator.
    train(config=CONFIG, run_dir=tmp_path / "split", data=text_stream(documents, tok), train_config=config,
          stop_after=4)
    assert len(losses(tmp_path / "split")) == 4
    train(config=CONFIG, run_dir=tmp_path / "split", data=text_stream(documents, tok), train_config=config)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")

    # The parameters agree too, bit for bit.
    restored = []
    for name in ("whole", "split"):
        trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), config.optimizer)
        checkpointer = Checkpointer(tmp_path / name)
        state, meta = checkpointer.restore(8, state_like=trainer.state())
        checkpointer.close()
        restored.append(state["params"])
        assert meta["step"] == 8 and meta["data_state"] is not None
    jax.tree.map(np.testing.assert_array_equal, *restored)
