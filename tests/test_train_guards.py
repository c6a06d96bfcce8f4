"""Training's guards: the replay check for silent data corruption, and the loss-spike skip."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from random_batches import random_text_batch

from gemini_jax.config import PRESETS
from gemini_jax.train import replay
from gemini_jax.train.metrics import MetricsLog
from gemini_jax.train.optimizer import OptimizerConfig, skip_loss_spikes, spike_skips
from gemini_jax.train import TrainConfig, Trainer, train

CONFIG = dataclasses.replace(PRESETS["test"].text_only, vocab_size=400)


def a_batch(seed: int = 0, **shape) -> dict[str, np.ndarray]:
    return random_text_batch(CONFIG.vocab_size, seed, **shape)


def host(tree):
    return jax.tree.map(np.array, tree)


def own_copy(model):
    """A model with its own arrays: a Trainer donates them, and build_model's are shared."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def test_fingerprints_see_one_flipped_bit_and_name_its_array():
    tree = {"a": jnp.linspace(-1, 1, 7, dtype=jnp.float32), "b": {"c": jnp.arange(5, dtype=jnp.int32)}}
    flipped = replay.flip_bit("a", bit=0)(tree)  # the lowest mantissa bit: the smallest possible change
    assert not np.array_equal(np.array(flipped["a"]), np.array(tree["a"]))
    assert replay.differing(replay.fingerprint(tree), replay.fingerprint(tree)) == []
    assert replay.differing(replay.fingerprint(tree), replay.fingerprint(flipped)) == ["a"]
    with pytest.raises(ValueError, match="no gradient at 'z'"):
        replay.flip_bit("z", bit=0)(tree)


def test_sdc_check_passes_clean_replays_and_catches_a_flipped_gradient_bit(tmp_path, monkeypatch):
    """Steps 1-2 are checked and agree; step 3's replay has one gradient bit flipped, as a
    faulty chip would: the check names the step and the array, and metrics.jsonl records it."""
    corrupted = "decoder/blocks/0/attn/q"
    checked_step = Trainer.checked_step

    def faulty_at_step_3(self, batch, *, step, corrupt=None):
        fault = replay.flip_bit(corrupted, bit=22) if step == 3 else None
        return checked_step(self, batch, step=step, corrupt=fault)

    monkeypatch.setattr(Trainer, "checked_step", faulty_at_step_3)
    config = TrainConfig(steps=3, log_every=1, checkpoint_every=100, progress=False, sdc_check_every=1,
                         optimizer=OptimizerConfig(warmup_steps=1, total_steps=3))
    with pytest.raises(replay.SilentDataCorruptionError, match=f"step 3.*gradient: '{corrupted}'") as caught:
        train(config=CONFIG, run_dir=tmp_path, data=iter([a_batch(i) for i in range(3)]), train_config=config)
    assert caught.value.step == 3 and caught.value.gradients == [corrupted]
    assert f"params/{corrupted}" in caught.value.state  # the fault reached the updated weights
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("sdc", 3)]
    assert records[-1]["gradients"] == [corrupted] and records[-1]["state"] == caught.value.state
    assert records[0]["spike_skips"] == 0 and records[0]["skipped_updates"] == 0


def test_a_resumed_run_keeps_its_sdc_reports(tmp_path):
    log = MetricsLog(tmp_path)
    for record in [{"kind": "train", "step": 4}, {"kind": "train", "step": 5}, {"kind": "sdc", "step": 6}]:
        log.write(record)
    log.truncate_after(4)  # resumed from the checkpoint of step 4
    assert log.read() == [{"kind": "train", "step": 4}, {"kind": "sdc", "step": 6}]


def test_spike_guard_skips_without_learning_then_gives_in():
    tx = skip_loss_spikes(optax.sgd(1.0), factor=2.0, warmup=2, decay=0.5, max_consecutive=2)
    params = jnp.zeros([], jnp.float32)
    state = tx.init(params)
    applied = []
    for loss in [1.0, 1.0, 5.0, 5.0, 5.0, 1.0]:
        updates, state = tx.update(jnp.ones([], jnp.float32), state, params, value=jnp.float32(loss))
        applied.append(bool(updates != 0))
    # Two spikes skipped; the third in a row is taken as the loss's new level, and the guard
    # re-arms only after a fresh warmup (so the final drop to 1.0 is not judged).
    assert applied == [True, True, False, False, True, True]
    assert int(state.total_spikes) == 2 and float(state.loss_mean) == 3.0


def test_a_spiking_batch_is_skipped_and_counted_and_normal_steps_are_not(build_model):
    # decay 0.5: a mean of the last few losses, which keeps up with the fast fall below.
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10_000, loss_spike_factor=3.0,
                                loss_spike_warmup=3, loss_spike_decay=0.5)
    # Seed 1: test_train.py's Trainer has donated (deleted) the arrays of build_model(CONFIG).
    trainer = Trainer(own_copy(build_model(CONFIG, seed=1)), optimizer)
    easy = a_batch(0)
    losses = [float(trainer.step(easy)["loss"]) for _ in range(12)]  # one batch, learnt by heart
    assert losses[-1] < 0.25 * losses[0] and int(spike_skips(trainer.opt_state)) == 0
    before = host(trainer.params)
    spiking = {**easy, "targets": a_batch(1)["targets"]}  # the same text, other answers
    metrics = trainer.step(spiking)
    assert float(metrics["loss"]) > 3 * losses[-1] and int(metrics["spike_skips"]) == 1
    assert int(metrics["skipped_updates"]) == 0  # finite: the other guard's count stays apart
    jax.tree.map(np.testing.assert_array_equal, host(trainer.params), before)
    metrics = trainer.step(easy)
    assert int(metrics["spike_skips"]) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host(trainer.params)),
                                                         jax.tree.leaves(before)))
