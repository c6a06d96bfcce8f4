"""The training loop's settings and parts: TrainConfig refuses bad values and derives
checkpoint_every and the schedule's length from `steps`; a hand-built Trainer needs a
schedule length; the metrics log of a non-first process writes nothing; the hooks run at
their own steps."""

import dataclasses

import pytest
from random_batches import random_text_batches

from gemini_jax.checkpoint import Checkpointer
from gemini_jax.config import PRESETS, ConfigError
from gemini_jax.train import TrainConfig, Trainer, train
from gemini_jax.train.hooks import PeriodicCheckpoint, PeriodicEvaluation, StepOutcome
from gemini_jax.train.metrics import MetricsLog
from gemini_jax.train.optimizer import OptimizerConfig

CONFIG = dataclasses.replace(PRESETS["test"].text_only, vocab_size=400)


@pytest.mark.parametrize(("field", "value", "accepted"), [
    ("steps", 0, "at least 1"),
    ("log_every", 0, "at least 1"),
    ("checkpoint_every", 0, r"at least 1 \(or None"),
    ("eval_every", -1, "0 \\(off\\) or a positive"),
    ("sdc_check_every", -5, "0 \\(off\\) or a positive"),
    ("replica_every", -1, "0 \\(off\\) or a positive"),
])
def test_train_config_refuses_bad_values_naming_the_field(field, value, accepted):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field} must be {accepted}.*got {value}"):
        TrainConfig(**{field: value})


def test_derived_defaults_follow_steps_and_explicit_values_stay():
    resolved = TrainConfig(steps=10).resolved()
    assert (resolved.checkpoint_every, resolved.optimizer.total_steps) == (2, 10)
    assert TrainConfig(steps=3).resolved().checkpoint_every == 1  # never 0
    # A recipe that replaces steps stays consistent.
    longer = dataclasses.replace(TrainConfig(steps=10), steps=400).resolved()
    assert (longer.checkpoint_every, longer.optimizer.total_steps) == (100, 400)
    explicit = TrainConfig(steps=10, checkpoint_every=7, optimizer=OptimizerConfig(total_steps=99)).resolved()
    assert (explicit.checkpoint_every, explicit.optimizer.total_steps) == (7, 99)
    assert resolved.resolved() == resolved
    with pytest.raises(ConfigError, match="total_steps must be at least 1"):
        OptimizerConfig(total_steps=0)


def test_a_hand_built_trainer_needs_total_steps(build_model):
    with pytest.raises(ConfigError, match=r"OptimizerConfig.total_steps is None.*give total_steps explicitly"):
        Trainer(build_model(CONFIG), OptimizerConfig())


def checkpoint_steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_train_fills_in_the_derived_defaults(tmp_path):
    """steps 8 and no explicit intervals: checkpoints every 2 steps, and the cosine reaches its
    end (the peak times final_lr_fraction) at step 8; the checkpoint records the resolved values."""
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=1)
    config = TrainConfig(steps=8, log_every=1, progress=False, optimizer=optimizer)
    train(config=CONFIG, run_dir=tmp_path, data=random_text_batches(CONFIG.vocab_size), train_config=config,
          stop_after=3)
    log = MetricsLog(tmp_path)
    assert checkpoint_steps(tmp_path) == [2, 3]  # every 2, and where the run stopped
    result = train(config=CONFIG, run_dir=tmp_path, data=random_text_batches(CONFIG.vocab_size), train_config=config)
    assert result.step == 8
    checkpointer = Checkpointer(tmp_path)
    meta = checkpointer.read_meta(8)
    checkpointer.close()
    assert checkpoint_steps(tmp_path) == [6, 8]  # every 2 (the Checkpointer keeps the last two)
    assert meta["train_config"]["checkpoint_every"] == 2 and meta["train_config"]["optimizer"]["total_steps"] == 8
    lrs = {r["step"]: r["lr"] for r in log.read() if r["kind"] == "train"}
    assert lrs[8] == pytest.approx(optimizer.learning_rate * optimizer.final_lr_fraction, rel=1e-5)
    assert lrs[7] > lrs[8]


def test_the_log_of_a_process_that_does_not_write_stays_untouched(tmp_path):
    MetricsLog(tmp_path).write({"kind": "train", "step": 1})
    silent = MetricsLog(tmp_path, writes=False)
    silent.write({"kind": "train", "step": 2})
    silent.truncate_after(0)
    silent.clear()
    assert silent.read() == [{"kind": "train", "step": 1}]


class Recorder:
    def __init__(self):
        self.saved = []

    def save(self, step):
        self.saved.append(step)


def test_periodic_hooks_run_at_their_steps_and_at_the_end(tmp_path):
    outcome = StepOutcome(metrics={}, tokens=0)
    checkpoints = Recorder()
    hook = PeriodicCheckpoint(checkpoints, every=3, end=7)
    for step in range(1, 8):
        hook(step, outcome)
    assert checkpoints.saved == [3, 6, 7]

    class NoModel:  # a trainer, as far as an evaluation that ignores the model can tell
        model = None

    calls = []

    def evaluate(model):
        calls.append(model)
        return {"eval_loss": float(len(calls))}

    evaluation = PeriodicEvaluation(evaluate=evaluate, every=2, end=6, trainer=NoModel(), log=MetricsLog(tmp_path))
    for step in range(1, 7):
        evaluation(step, outcome)
    # Steps 2 and 4, not 6: the loop evaluates the last step itself (`run`), after the final checkpoint.
    assert [r["step"] for r in MetricsLog(tmp_path).read()] == [2, 4]
    assert evaluation.last_metrics == {"eval_loss": 2.0}


def test_time_waiting_for_data_is_measured(tmp_path):
    """A pipeline that takes 0.1 s a batch: at least that much waiting per step is counted."""
    import time

    def slow(batches):
        for batch in batches:
            time.sleep(0.1)
            yield batch

    config = TrainConfig(steps=5, progress=False, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1))
    result = train(config=CONFIG, run_dir=tmp_path, data=slow(random_text_batches(CONFIG.vocab_size)),
                   train_config=config)
    assert result.data_wait_seconds >= 0.5 and 0 < result.data_wait_fraction <= 1
    assert f"{100 * result.data_wait_fraction:.1f}% of the time waiting for data" in result.summary()
