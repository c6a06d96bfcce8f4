"""Reinforcement learning from a reward: advantages and the loss against numpy, an update moving
the log-probabilities the right way, non-finite rewards skipped, rollouts that are the
sampler's replies, and a resumed run that samples and learns what the uninterrupted one does."""

import dataclasses
import inspect
import json
import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_fresh_run
from flax import nnx

from gemini_jax import cli
from gemini_jax.config import PRESETS, ConfigError
from gemini_jax.data.examples import ExampleError
from gemini_jax.data.prompts import prompt_from_json
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.recipes.rl import RLRecipe, Rollouts, exact_match_reward, rollout_row
from gemini_jax.recipes.runner import Timings
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams
from gemini_jax.train import TrainConfig, train
from gemini_jax.train.batches import with_loss_positions
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.policy_gradient import (
    PolicyGradientConfig,
    PolicyGradientTrainer,
    best_of_group_advantages,
    group_advantages,
    policy_gradient_loss,
)
from gemini_jax.train.preference_loss import reply_log_probs

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10)
COLOURS = ["red", "blue", "green", "black", "yellow", "gray", "teal", "brown"]


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "Is there a red circle? yes no. Is there a blue square? no.\n" * 30]
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer(corpus, vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def start_run(tmp_path_factory, tok_file):
    """A run directory holding a fresh test-preset model: what `--init-from` reads."""
    return write_fresh_run(tmp_path_factory.mktemp("start"), config=CONFIG, tokenizer_path=tok_file)


def conversation(question, answer):
    return {"contents": [{"role": "user", "parts": [{"text": question}]}, {"role": "model", "parts": [{"text": answer}]}]}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [conversation(f"{q} a {c} {s}?", "yes" if s == "circle" else "no")
             for q in ("Is there", "Do you see") for c in COLOURS for s in ("circle", "square", "triangle")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_group_advantages_by_hand():
    got = group_advantages(np.array([1, 0, 0, 1, 2, 2, 2, 2], np.float32), 4)
    np.testing.assert_allclose(got, [1, -1, -1, 1, 0, 0, 0, 0], atol=1e-5)  # a group of equal rewards teaches nothing


def test_best_of_group_advantages_by_hand():
    got = best_of_group_advantages(np.array([0.2, 0.9, 0.9, -1, 2, 2, 2, 2, 0, np.nan, 1, 0], np.float32), 4)
    # The first of equal best replies; a group of equal rewards teaches nothing; a NaN poisons its group only.
    np.testing.assert_array_equal(got[:8], [0, 1, 0, 0, 0, 0, 0, 0])
    assert np.isnan(got[8:]).all() and got.dtype == np.float32


def test_policy_gradient_loss_matches_numpy():
    rng = np.random.default_rng(0)
    log_probs, reference = -rng.random((3, 4)) * 3, -rng.random((3, 4)) * 3
    weights = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)  # the third row scores nothing
    advantages, kl_coef = np.array([1.5, -0.5, 7.0], np.float32), 0.2
    loss, parts = policy_gradient_loss(*(jnp.asarray(x, jnp.float32) for x in (log_probs, reference, weights, advantages)),
                                       kl_coef=kl_coef)
    kl = np.exp(reference - log_probs) - (reference - log_probs) - 1
    per_row = lambda x: (x * weights).sum(1)[:2] / weights.sum(1)[:2]  # noqa: E731
    expected_pg = np.mean(per_row(-advantages[:, None] * log_probs))
    expected_kl = np.mean(per_row(kl))
    assert float(parts["pg"]) == pytest.approx(expected_pg, rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(expected_kl, rel=1e-5)
    assert float(loss) == pytest.approx(expected_pg + kl_coef * expected_kl, rel=1e-5)
    assert float(policy_gradient_loss(jnp.asarray(reference), jnp.asarray(reference), jnp.asarray(weights),
                                      jnp.zeros(3), kl_coef=1.0)[1]["kl"]) == 0.0  # no KL to itself


def two_replies(tok):
    prompt = prompt_from_json(conversation("Is there a red circle?", "yes"), base_dir=".", where="x")
    sampler = Sampler(Gemini(CONFIG, rngs=nnx.Rngs(0)), tok)
    row = sampler.encode_prompt(prompt.example)
    rows = [rollout_row(row, tok.encode(text), end_id=tok.end_of_turn_id) for text in ("yes", "no")]
    from gemini_jax.data.pipeline import collate

    return collate(rows, seq_len=32, config=CONFIG)


def test_an_update_raises_rewarded_replies_and_lowers_the_others(tok_file):
    tok = Tokenizer.load(tok_file)
    batch = {**two_replies(tok), "rewards": np.array([1, 0], np.float32), "advantages": np.array([1, -1], np.float32)}
    reference = Gemini(CONFIG, rngs=nnx.Rngs(0))
    trainer = PolicyGradientTrainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OPTIMIZER, reference=reference,
                                    policy_gradient=PolicyGradientConfig(kl_coef=0.0))
    before = np.asarray(reply_log_probs(reference, with_loss_positions(batch)))
    first = trainer.step(batch)  # the warm-up's first step has a learning rate of 0
    assert float(first["kl"]) == 0.0 and float(first["reward"]) == 0.5
    assert float(trainer.step(batch)["kl"]) == 0.0
    after = np.asarray(reply_log_probs(trainer.model, with_loss_positions(batch)))
    assert after[0] > before[0] and after[1] < before[1]


def test_a_non_finite_reward_skips_the_update_and_counts_it(tok_file):
    tok = Tokenizer.load(tok_file)
    batch = {**two_replies(tok), "rewards": np.array([np.nan, 0], np.float32)}
    batch["advantages"] = group_advantages(batch["rewards"], 2)
    trainer = PolicyGradientTrainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OPTIMIZER, reference=Gemini(CONFIG, rngs=nnx.Rngs(0)))
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.params))
    metrics = trainer.step(batch)
    assert int(metrics["skipped_updates"]) == 1
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.to_pure_dict(trainer.params)))


def recipe(prompts_file, start_run, run_dir, **changes):
    fields = dict(data=str(prompts_file), init_from=str(start_run), run_dir=str(run_dir), prompts_per_step=2,
                  group_size=2, max_new_tokens=4, validation_fraction=0.25, test_fraction=0.25, eval_limit=4,
                  train=TrainConfig(steps=4, log_every=1, optimizer=OPTIMIZER, progress=False))
    return RLRecipe(**(fields | changes))


def test_rollouts_are_the_samplers_replies_for_their_seeds(prompts_file, start_run, tmp_path, tok_file):
    r = recipe(prompts_file, start_run, tmp_path / "run")
    setup = r.setup(tmp_path / "run", Timings())
    r.make_trainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OPTIMIZER)
    batch = next(setup.data)
    rollouts: Rollouts = setup.data
    asked = list(rollouts.prompts)
    sampler = Sampler(r.link.trainer.model, Tokenizer.load(tok_file))
    seeds = [SamplingParams(temperature=1.0, max_new_tokens=4, seed=i) for i in range(4)]
    tok = Tokenizer.load(tok_file)
    for row in range(4):
        reply = batch["targets"][row][batch["loss_mask"][row] == 1].tolist()
        prompt_tokens = batch["tokens"][row][: int(np.argmax(batch["loss_mask"][row])) + 1]
        match = [p for p in asked if sampler.encode_prompt(p.example)["tokens"].tolist() == prompt_tokens.tolist()]
        assert len(match) == 1
        (expected,) = sampler.generate_ids([match[0].example], [seeds[row]])
        stopped = len(expected) < 4  # a reply cut at max_new_tokens has no <end_of_turn> to score
        assert reply == (expected + [tok.end_of_turn_id] if stopped else expected)
    assert batch["rewards"].shape == (4,) and set(batch["rewards"].tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_a_resumed_run_samples_and_learns_what_the_uninterrupted_one_does(prompts_file, start_run, tmp_path):
    def metrics(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["reward"], r["kl"]) for r in rows if r.get("kind") == "train"]

    def run(run_dir, **kwargs):
        r = recipe(prompts_file, start_run, run_dir)
        setup = r.setup(run_dir, Timings())
        train(config=setup.config, run_dir=run_dir, data=setup.data, train_config=r.train,
              make_trainer=r.make_trainer, **kwargs)

    run(tmp_path / "whole")
    run(tmp_path / "resumed", stop_after=2)
    run(tmp_path / "resumed")
    whole, resumed = metrics(tmp_path / "whole"), metrics(tmp_path / "resumed")
    assert [m[0] for m in whole] == [1, 2, 3, 4]
    np.testing.assert_allclose(np.array(resumed)[-4:], np.array(whole), rtol=1e-6)


def test_rl_command_trains_reports_and_refuses_bad_input(prompts_file, start_run, tmp_path, capsys, tok_file):
    common = ["--data", str(prompts_file), "--init-from", str(start_run), "--prompts-per-step", "2", "--group-size", "2",
              "--max-new-tokens", "4", "--steps", "2", "--eval-limit", "3", "--no-progress"]
    for advantage in ("group", "best"):
        run_dir = tmp_path / f"rl_{advantage}"
        assert cli.main(["rl", *common, "--advantage", advantage, "--run-dir", str(run_dir)]) == 0
        results = json.loads((run_dir / "results.json").read_text())
        assert results["rl_validation"]["prompts"] == 3 and 0.0 <= results["rl_validation"]["reward"] <= 1.0
        assert "mean reward" in capsys.readouterr().out
    assert cli.main(["rl", *common, "--advantage", "mean", "--run-dir", str(tmp_path / "rl3")]) == 2
    assert "invalid choice: 'mean'" in capsys.readouterr().err
    # A reward model reading other tokens than the policy writes is refused.
    reward_run = tmp_path / "reward"
    shutil.copytree(start_run, reward_run)
    train_tokenizer(["something else entirely " * 50, inspect.getsource(json)], vocab_size=400,
                    path=reward_run / "tokenizer.model")
    (reward_run / "reward.json").write_text("{}")
    assert cli.main(["rl", *common, "--reward", str(reward_run), "--run-dir", str(tmp_path / "rl2")]) == 2
    assert "another tokenizer than the policy" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="group-size must be at least 2"):
        recipe(prompts_file, start_run, tmp_path / "x", group_size=1)
    with pytest.raises(ConfigError, match="--advantage must be one of group, best, got 'mean'"):
        recipe(prompts_file, start_run, tmp_path / "x", advantage="mean")
    with pytest.raises(ExampleError, match="must end on a user turn followed by the model turn"):
        prompt_from_json({"contents": [{"role": "user", "parts": [{"text": "q"}]}]}, base_dir=".", where="p.jsonl:3")
    assert exact_match_reward({}, ["Yes."], ["yes"]).tolist() == [1.0]
