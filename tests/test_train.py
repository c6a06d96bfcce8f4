"""Training: the loss falls, logits-at-loss-positions equals the full loss, resume is exact
(after a clean stop, a kill -9 between checkpoints, a kill -9 inside a save, and in-process
from the in-memory replica)."""

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from random_batches import random_text_batches
from train_worker import documents as worker_documents
from train_worker import model_config, text_stream
from train_worker import train_config as worker_train_config

from gemini_jax.checkpoint import Checkpointer
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train import TrainConfig, Trainer, train, with_loss_positions
from gemini_jax.train.batches import model_inputs
from gemini_jax.train.loss import masked_cross_entropy
from gemini_jax.train.metrics import MetricsLog
from gemini_jax.train.optimizer import OptimizerConfig

CONFIG = model_config()
WORKER = Path(__file__).with_name("train_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer([inspect.getsource(textwrap)], vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def tok(tok_path):
    return Tokenizer.load(tok_path)


@pytest.fixture(scope="module")
def documents():
    return worker_documents()


def train_losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tok, documents):
    """The run directory of train_worker's run, uninterrupted, trained here."""
    run_dir = tmp_path_factory.mktemp("whole")
    train(config=CONFIG, run_dir=run_dir, data=text_stream(documents, tok), train_config=worker_train_config())
    return run_dir


def test_loss_positions_give_the_full_masked_loss(build_model, tok, documents):
    model = build_model(CONFIG)
    batch = next(text_stream(documents, tok))
    rng = np.random.default_rng(0)
    batch["loss_mask"] = (rng.random(batch["loss_mask"].shape) < 0.2).astype(np.float32)  # a sparse mask
    full, count = masked_cross_entropy(model(model_inputs(batch)).logits, batch["targets"], batch["loss_mask"])
    trainer = Trainer(model, OptimizerConfig(total_steps=10_000))
    gathered, aux = trainer._loss_fn(trainer.frozen_inputs(), trainer.params, with_loss_positions(batch))
    gathered_count = aux["loss_tokens"]
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
        trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OptimizerConfig(warmup_steps=1, total_steps=10_000),
                          logits_chunk_tokens=chunk)
        losses = [float(trainer.step(batch)["loss"]) for _, batch in stream]
        results.append((losses, jax.tree.map(np.array, trainer.params)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[1][1], results[0][1])


def test_an_update_with_non_finite_gradients_is_skipped_and_counted(tok, documents):
    # Its own parameters: the trainer donates them, and build_model's are shared by other tests.
    trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OptimizerConfig(warmup_steps=1, total_steps=10_000))
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


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tok, documents, uninterrupted):
    config = worker_train_config()
    # Interrupted after step 4 (the checkpoint), then resumed by a fresh call with a fresh iterator.
    train(config=CONFIG, run_dir=tmp_path / "split", data=text_stream(documents, tok), train_config=config,
          stop_after=4)
    assert len(train_losses(tmp_path / "split")) == 4
    train(config=CONFIG, run_dir=tmp_path / "split", data=text_stream(documents, tok), train_config=config)
    assert train_losses(tmp_path / "split") == train_losses(uninterrupted)

    # The parameters agree too, bit for bit.
    restored = []
    for run_dir in (uninterrupted, tmp_path / "split"):
        trainer = Trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), config.optimizer)
        checkpointer = Checkpointer(run_dir)
        state, meta = checkpointer.restore(8, state_like=trainer.state())
        checkpointer.close()
        restored.append(state["params"])
        assert meta["step"] == 8 and meta["data_state"] is not None
    jax.tree.map(np.testing.assert_array_equal, *restored)


# -- kill -9: between checkpoints, inside a save ----------------------------------------------

def start_worker(run_dir, tok_path, cache_dir, *args):
    """train_worker.py on `run_dir`, sharing this module's compilation cache."""
    env = {**os.environ, "PYTHONPATH": SRC, "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), "--tokenizer", str(tok_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finished_steps(run_dir) -> list[int]:
    """Step directories that Orbax has committed (a save in flight is `<step>.orbax-checkpoint-tmp`)."""
    return sorted(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory, tok_path, tok, documents, compilation_cache):
    """One run (8 steps, a checkpoint every 2) killed with SIGKILL twice, then resumed here to its
    end. First this test kills it as soon as its first checkpoint lands (each step slowed down, so
    that the kill falls between checkpoints); then the run kills itself inside the save of step 6,
    after Orbax wrote the step's files and before it committed them. Returns what each left."""
    run_dir, cache = tmp_path_factory.mktemp("killed"), compilation_cache
    seen = {}
    proc = start_worker(run_dir, tok_path, cache, "--checkpoint-every", "2", "--step-delay", "0.5")
    try:
        while not finished_steps(run_dir) and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err[-4000:]
    seen["between"] = {"steps": finished_steps(run_dir), "logged": len(train_losses(run_dir))}

    proc = start_worker(run_dir, tok_path, cache, "--checkpoint-every", "2", "--kill-in-save-of", "6")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-4000:]
    seen["in_save"] = {
        "in_flight": [p.name for p in (run_dir / "checkpoints").glob("6.orbax-checkpoint-tmp*")],
        "committing_thread": (run_dir / "killed_in_save.txt").read_text(),
    }
    checkpointer = Checkpointer(run_dir)  # (it deletes the leftover of the save cut short)
    seen["in_save"]["latest"] = checkpointer.latest_step()
    checkpointer.close()

    train(config=CONFIG, run_dir=run_dir, data=text_stream(documents, tok),
          train_config=worker_train_config(checkpoint_every=2))
    seen["end"] = {"losses": train_losses(run_dir), "steps": finished_steps(run_dir),
                   "leftovers": [p.name for p in (run_dir / "checkpoints").glob("*tmp*")]}
    return seen


def test_a_run_killed_between_checkpoints_resumes_exactly(killed_twice, uninterrupted):
    between = killed_twice["between"]
    assert between["steps"] and max(between["steps"]) < 8 and between["logged"] < 8  # killed mid-run
    assert killed_twice["end"]["losses"] == train_losses(uninterrupted)


def test_a_run_killed_inside_a_save_keeps_the_previous_checkpoint(killed_twice, uninterrupted):
    in_save = killed_twice["in_save"]
    assert len(in_save["in_flight"]) == 1  # the kill came while step 6 was being written
    assert in_save["committing_thread"] != "MainThread"  # and the save ran in the background
    assert in_save["latest"] == 4  # the step before is whole: the resumed run restored it
    assert killed_twice["end"]["losses"] == train_losses(uninterrupted)
    assert killed_twice["end"]["steps"] == [6, 8] and killed_twice["end"]["leftovers"] == []


def test_the_metrics_log_drops_a_line_cut_short_by_a_kill(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": 1.0})
    with log.path.open("a") as f:
        f.write('{"kind": "train", "st')  # killed mid-write
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [1, 2] and log.path.read_text().endswith("}\n")


# -- the in-memory replica ---------------------------------------------------------------------

def test_a_failed_step_restarts_from_the_in_memory_replica(tmp_path, tok, documents, uninterrupted, monkeypatch):
    """A step fails after losing the primary state (deleted, as a failed device's memory): training
    restarts from the replica taken at step 3 without reading storage (no checkpoint exists before
    the end) and ends with the uninterrupted losses. A failure that recurs before a fresh copy raises."""
    calls, failing_calls = [], {5}
    step = Trainer.step

    def step_that_fails(self, batch):
        calls.append(1)
        if len(calls) in failing_calls:
            for array in jax.tree.leaves(self.state()):
                array.delete()
            raise jax.errors.JaxRuntimeError("simulated device failure")
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", step_that_fails)
    config = worker_train_config(checkpoint_every=100, replica_every=3)
    train(config=CONFIG, run_dir=tmp_path / "a", data=text_stream(documents, tok), train_config=config)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["source"]) for r in records if r["kind"] == "recovery"] == [(3, "in-memory replica")]
    assert train_losses(tmp_path / "a") == train_losses(uninterrupted)
    assert len(calls) == 8 + 2  # steps 4 and 5 ran twice

    calls.clear()
    failing_calls.update({6})  # step 5, then step 4 again right after the restart
    with pytest.raises(jax.errors.JaxRuntimeError, match="simulated"):
        train(config=CONFIG, run_dir=tmp_path / "b", data=text_stream(documents, tok), train_config=config)


def test_a_second_checkpointer_on_a_crashed_run_saves_while_the_first_one_cleaned_up(tmp_path):
    """A save cut short leaves a temporary directory; each Checkpointer deletes such leftovers
    when it opens. One opened and closed at once (to read the latest step, say) must have
    finished that before the next one opens and deletes the same files, or the next one's first
    save fails (Orbax does it in a thread its close() does not wait for)."""
    import jax.numpy as jnp

    for trial in range(3):  # the race was lost about 4 times in 5
        run_dir = tmp_path / str(trial)
        leftover = run_dir / "checkpoints" / "6.orbax-checkpoint-tmp-1"
        for i in range(20):  # many files: a deletion that takes a while
            (leftover / str(i)).mkdir(parents=True)
            for j in range(100):
                (leftover / str(i) / str(j)).write_bytes(b"x")
        first = Checkpointer(run_dir)
        assert first.latest_step() is None
        first.close()
        second = Checkpointer(run_dir)
        second.save(1, state={"w": jnp.ones(3)}, meta={"step": 1})
        second.close()
        assert second.latest_step() == 1 and not leftover.exists()


def test_a_run_refuses_to_resume_or_be_overwritten_as_another_model(tmp_path):
    """Resuming with another model's config, or writing another config or tokenizer over a run
    with checkpoints, is refused with what differs; the run stays as it was. Runtime settings
    (dtype, attention, remat, scan, and the context: max_seq_len, RoPE's base) may change on resume."""
    import dataclasses

    from gemini_jax import checkpoint
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import PRESETS

    config = PRESETS["test"].text_only

    def run(model_config, steps):
        train_config = TrainConfig(steps=steps, log_every=1, checkpoint_every=2, progress=False,
                                   optimizer=OptimizerConfig(warmup_steps=1, total_steps=6))
        return train(config=model_config, run_dir=tmp_path / "run", data=random_text_batches(config.vocab_size),
                     train_config=train_config)

    (tmp_path / "tok.model").write_bytes(b"one tokenizer")
    (tmp_path / "other.model").write_bytes(b"another tokenizer")
    checkpoint.write_run_files(tmp_path / "run", config=config, tokenizer_path=tmp_path / "tok.model")
    run(config, 2)
    wider = dataclasses.replace(config, width=32)
    with pytest.raises(CheckpointError, match=r"checkpoints of another model \(width 24 -> 32\)"):
        run(wider, 4)
    with pytest.raises(CheckpointError, match="width 24 -> 32"):
        checkpoint.write_run_files(tmp_path / "run", config=wider, tokenizer_path=tmp_path / "tok.model")
    with pytest.raises(CheckpointError, match="another tokenizer"):
        checkpoint.write_run_files(tmp_path / "run", config=config, tokenizer_path=tmp_path / "other.model")
    assert checkpoint.read_config(tmp_path / "run") == config  # nothing was overwritten
    assert (tmp_path / "run" / "tokenizer.model").read_bytes() == b"one tokenizer"
    resumed = dataclasses.replace(config, remat="full", scan_layers=True, max_seq_len=512, rope_base=40_000.0)
    checkpoint.write_run_files(tmp_path / "run", config=resumed, tokenizer_path=tmp_path / "tok.model")
    assert run(resumed, 4).step == 4
