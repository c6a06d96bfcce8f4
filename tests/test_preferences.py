"""Preference pairs (format, errors, split, batches) and the losses that learn from them: the
reward model's pairwise loss and DPO's, against hand-computed and numpy values, and both
trainers moving the right way on a pair set a rule labels."""

import dataclasses
import inspect
import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_fresh_run
from flax import nnx
from PIL import Image

from gemini_jax import checkpoint, cli
from gemini_jax.config import PRESETS
from gemini_jax.data.examples import ExampleError
from gemini_jax.data.preferences import encode_pairs, pair_batches, pair_from_json, read_pairs, split_pairs
from gemini_jax.data.records import DataError
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train.batches import with_loss_positions
from gemini_jax.train.dpo import DPOConfig, DPOTrainer
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.preference_loss import bradley_terry_loss, dpo_loss, reply_log_probs
from gemini_jax.train.reward import REWARD_FILE, RewardModel, RewardTrainer, load_reward_model, write_reward_record

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)
OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=40)


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "Is there a red circle? Yes, there is a red circle. No.\n" * 30]
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer(corpus, vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def tok(tok_file):
    return Tokenizer.load(tok_file)


def pair(question, chosen, rejected, **extra):
    return {"contents": [{"role": "user", "parts": [{"text": question}]}],
            "chosen": [{"text": chosen}], "rejected": [{"text": rejected}], **extra}


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---- the format ---------------------------------------------------------------------------------


def test_a_pair_reads_media_relative_to_its_file_and_scores_only_the_reply(tmp_path, tok):
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "a.png")
    record = {"contents": [{"role": "user", "parts": [{"image": "a.png"}, {"text": "Is there a circle?"}]},
                           {"role": "model", "parts": [{"text": "Yes."}]},
                           {"role": "user", "parts": [{"text": "Red?"}]}],
              "chosen": [{"text": "Yes, a red circle."}], "rejected": [{"text": "No."}]}
    (p,) = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", [record]))
    assert p.prompt[0].parts[0].image == str(tmp_path / "a.png")
    batch = encode_pairs([p], tokenizer=tok, config=CONFIG).batch([0], 1)
    assert batch["tokens"].shape[0] == 2 and batch["image_patches"].shape[:2] == (2, 1)
    eot = tok.end_of_turn_id
    for row, reply in ((0, "Yes, a red circle."), (1, "No.")):  # the last reply only, not the earlier "Yes."
        scored = batch["targets"][row][batch["loss_mask"][row] == 1]
        np.testing.assert_array_equal(scored, [*tok.encode(reply), eot])


@pytest.mark.parametrize("record, match", [
    ({"contents": [{"role": "user", "parts": [{"text": "q"}]}], "chosen": [{"text": "a"}]}, "missing 'rejected'"),
    (pair("q", "same", "same"), "identical"),
    ({"contents": [{"role": "user", "parts": [{"text": "q"}]}, {"role": "model", "parts": [{"text": "a"}]}],
      "chosen": [{"text": "b"}], "rejected": [{"text": "c"}]}, "must end on a user turn"),
    ({"contents": [{"role": "user", "parts": [{"text": "q"}]}], "chosen": [{"sound": "x"}], "rejected": [{"text": "c"}]},
     "'chosen'.*must be one of"),
    ([1, 2], "expected an object"),
])
def test_bad_pairs_say_what_is_wrong_and_where(record, match):
    with pytest.raises(ExampleError, match=match) as info:
        pair_from_json(record, base_dir=".", where="pairs.jsonl:7")
    assert "pairs.jsonl:7" in str(info.value)


def test_bad_lines_are_skipped_within_a_budget_and_named_beyond_it(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair("a", "b", "c"), "{not json", pair("d", "e", "e"), pair("f", "g", "h")])
    with pytest.raises(DataError, match=r"2 bad records of preference pairs") as info:
        read_pairs(path, max_bad_records=1)
    assert "p.jsonl:2: not JSON" in str(info.value) and "p.jsonl:3" in str(info.value)
    assert [p.chosen[0].text for p in read_pairs(path, max_bad_records=2)] == ["b", "g"]
    with pytest.raises(DataError, match="no preference pairs"):
        read_pairs(write_jsonl(tmp_path / "empty.jsonl", []))


def test_pairs_split_by_their_prompt_or_group():
    pairs = [pair_from_json(pair(f"question {i % 50}", f"yes {i}", f"no {i}"), base_dir=".", where="x")
             for i in range(400)]
    splits = split_pairs(pairs, validation_fraction=0.2, test_fraction=0.2)
    assert sum(map(len, splits.values())) == 400 and all(len(s) > 40 for s in splits.values())
    prompts = {name: {p.prompt[0].parts[0].text for p in s} for name, s in splits.items()}
    assert not (prompts["train"] & prompts["validation"]) and not (prompts["train"] & prompts["test"])
    assert split_pairs(pairs, validation_fraction=0.2, test_fraction=0.2) == splits  # by hash, every time
    grouped = [dataclasses.replace(p, group="one") for p in pairs]
    assert max(map(len, split_pairs(grouped).values())) == 400


def test_pair_batches_put_chosen_rows_first_and_pad_a_short_last_batch(tok):
    pairs = [pair_from_json(pair(f"q{i}", f"yes {i}", "no"), base_dir=".", where="x") for i in range(5)]
    encoded = encode_pairs(pairs, tokenizer=tok, config=CONFIG)
    batches = list(pair_batches(encoded, batch_size=2, seed=0, shuffle=False, num_epochs=1))
    assert [b["tokens"].shape[0] for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[0]["tokens"][0], encoded.chosen[0]["tokens"])
    np.testing.assert_array_equal(batches[0]["tokens"][2], encoded.rejected[0]["tokens"])
    assert batches[2]["loss_mask"][[1, 3]].sum() == 0  # the fifth pair, then a padding pair


# ---- the losses ---------------------------------------------------------------------------------


def test_bradley_terry_loss_and_accuracy_by_hand():
    scores = jnp.asarray([2.0, 0.0, 5.0, 1.0, 1.0, -3.0])  # chosen 2, 0, 5; rejected 1, 1, -3
    real = jnp.asarray([1.0, 1.0, 0.0])  # the third pair is padding
    loss, metrics = bradley_terry_loss(scores, real)
    # margins 1 and -1: (-log sigmoid(1) - log sigmoid(-1)) / 2 = (0.313262 + 1.313262) / 2
    assert float(loss) == pytest.approx(0.813262, abs=1e-6)
    assert float(metrics["accuracy"]) == 0.5 and float(metrics["margin"]) == 0.0


def test_dpo_loss_matches_numpy():
    rng = np.random.default_rng(3)
    policy, reference = rng.normal(size=8) * 4, rng.normal(size=8) * 4
    real, beta = np.array([1, 1, 1, 0], np.float32), 0.3
    loss, metrics = dpo_loss(jnp.asarray(policy, jnp.float32), jnp.asarray(reference, jnp.float32), jnp.asarray(real),
                             beta=beta)
    margin = beta * ((policy[:4] - reference[:4]) - (policy[4:] - reference[4:]))
    expected = np.sum(np.log1p(np.exp(-margin)) * real) / real.sum()
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.sum((margin > 0) * real) / 3)
    # The reference is a constant: no gradient reaches it.
    grad = jax.grad(lambda r: dpo_loss(jnp.asarray(policy, jnp.float32), r, jnp.asarray(real), beta=beta)[0])(
        jnp.asarray(reference, jnp.float32))
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_reply_log_probs_sum_the_reply_tokens_of_the_full_logits(tok):
    pairs = [pair_from_json(pair("Is there a red circle?", "Yes.", "No, there is not."), base_dir=".", where="x")]
    batch = with_loss_positions(encode_pairs(pairs, tokenizer=tok, config=CONFIG).batch([0], 1))
    model = Gemini(CONFIG, rngs=nnx.Rngs(0))
    got = np.asarray(reply_log_probs(model, batch))
    logits = np.asarray(model({k: v for k, v in batch.items() if k not in ("targets", "loss_mask", "loss_positions")}).logits,
                        np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    picked = np.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, (picked * batch["loss_mask"]).sum(axis=1), rtol=1e-5)


# ---- the trainers -------------------------------------------------------------------------------


def rule_pairs(count):
    """The rule: a reply that names the colour asked about is preferred to a bare yes."""
    colours = ["red", "blue", "green", "black"]
    return [pair_from_json(pair(f"Is there a {c} circle?", f"Yes, there is a {c} circle.", "Yes."), base_dir=".",
                           where="x") for c in colours * (count // 4)]


def test_reward_model_starts_at_log_2_and_learns_the_preference(tok):
    encoded = encode_pairs(rule_pairs(16), tokenizer=tok, config=CONFIG)
    trainer = RewardTrainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OPTIMIZER)
    stream = pair_batches(encoded, batch_size=4, seed=0)
    first = trainer.step(next(stream))
    assert float(first["loss"]) == pytest.approx(math.log(2), abs=1e-6)  # a zero head scores every reply 0
    for _ in range(30):
        metrics = trainer.step(next(stream))
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["loss"]) < 0.3
    model = trainer.model
    assert isinstance(model, RewardModel)
    scores = np.asarray(nnx.jit(lambda m, b: m(b))(model, encoded.batch([0, 1], 2)))
    assert scores[0] > scores[2] and scores[1] > scores[3]


def test_a_likelihood_reward_model_adds_the_weighted_log_probability_of_the_reply(tok, tok_file, tmp_path):
    pairs = [pair_from_json(pair("Is there a red circle?", "Yes.", "No, there is not."), base_dir=".", where="x")]
    batch = with_loss_positions(encode_pairs(pairs, tokenizer=tok, config=CONFIG).batch([0], 1))
    model = RewardModel(Gemini(CONFIG, rngs=nnx.Rngs(0)), likelihood=True)
    plain = RewardModel(model.backbone)
    head = np.random.default_rng(0).normal(size=CONFIG.width).astype(np.float32)
    for m in (model, plain):
        m.head[...], m.bias[...] = jnp.asarray(head), jnp.float32(0.3)
    model.mean_log_prob_weight[...], model.log_prob_weight[...] = jnp.float32(0.7), jnp.float32(-0.2)
    total = np.asarray(reply_log_probs(model.backbone, batch))
    count = batch["loss_mask"].sum(axis=1)
    np.testing.assert_allclose(np.asarray(model(batch)), np.asarray(plain(batch)) + 0.7 * total / count - 0.2 * total,
                               rtol=1e-5, atol=1e-5)
    # The weights start at zero: the first loss is log 2, as the plain head's.
    trainer = RewardTrainer(RewardModel(Gemini(CONFIG, rngs=nnx.Rngs(0)), likelihood=True), OPTIMIZER)
    encoded = encode_pairs(rule_pairs(8), tokenizer=tok, config=CONFIG)
    assert float(trainer.step(next(pair_batches(encoded, batch_size=4, seed=0)))["loss"]) == pytest.approx(math.log(2))
    # A reward run records the option, and loads with it.
    run = tmp_path / "reward"
    checkpoint.write_run_files(run, config=CONFIG, tokenizer_path=tok_file)
    saver = checkpoint.Checkpointer(run, async_save=False)
    saver.save(1, state=RewardTrainer(model, OPTIMIZER).state(), meta={"step": 1})
    saver.close()
    write_reward_record(run, init_from=run, data=tmp_path / "pairs.jsonl", likelihood=True)
    loaded = load_reward_model(run)
    assert loaded.likelihood and float(loaded.mean_log_prob_weight[...]) == pytest.approx(0.7)


def test_dpo_starts_at_log_2_moves_the_policy_and_leaves_the_reference(tok):
    encoded = encode_pairs(rule_pairs(16), tokenizer=tok, config=CONFIG)
    reference = Gemini(CONFIG, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(reference, nnx.Param)))
    trainer = DPOTrainer(Gemini(CONFIG, rngs=nnx.Rngs(0)), OPTIMIZER, reference=reference, dpo=DPOConfig(beta=0.5))
    stream = pair_batches(encoded, batch_size=4, seed=0)
    assert float(trainer.step(next(stream))["loss"]) == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    for _ in range(20):
        metrics = trainer.step(next(stream))
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["margin"]) > 0.5
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(reference, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    with pytest.raises(Exception, match="beta must be positive"):
        DPOConfig(beta=0.0)


# ---- the commands -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def start_run(tmp_path_factory, tok_file):
    """A run directory holding a fresh test-preset model: what `--init-from` reads."""
    return write_fresh_run(tmp_path_factory.mktemp("start"), config=CONFIG, tokenizer_path=tok_file)


@pytest.mark.slow
def test_reward_and_dpo_commands_train_resume_and_report(start_run, tmp_path, capsys, monkeypatch):
    shapes = ["circle", "square", "triangle"]
    records = [pair(f"Is there a {c} {s}?", f"Yes, there is a {c} {s}.", "Yes.")
               for c in ["red", "blue", "green", "black", "yellow", "gray", "teal", "brown"] for s in shapes]
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    common = ["--data", str(data), "--init-from", str(start_run), "--batch-size", "4", "--learning-rate", "3e-3",
              "--validation-fraction", "0.25", "--test-fraction", "0.25", "--no-progress"]
    reward_dir = tmp_path / "reward"
    assert cli.main(["reward", *common, "--run-dir", str(reward_dir), "--steps", "30"]) == 0
    results = json.loads((reward_dir / "results.json").read_text())
    assert results["preference_validation"]["pairs"] + results["preference_test"]["pairs"] > 6
    assert results["preference_validation"]["accuracy"] == 1.0  # unseen prompts, the same rule
    assert (reward_dir / REWARD_FILE).is_file() and checkpoint.Checkpointer(reward_dir).latest_step() == 30
    assert load_reward_model(reward_dir).head[...].any()
    assert cli.main(["reward", *common, "--run-dir", str(reward_dir), "--steps", "36", "--no-eval"]) == 0
    steps = [json.loads(line)["step"] for line in (reward_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 36 and checkpoint.Checkpointer(reward_dir).latest_step() == 36

    dpo_dir = tmp_path / "dpo"
    loaded = []
    load_run = checkpoint.load_run
    monkeypatch.setattr(checkpoint, "load_run", lambda run, *a, **k: loaded.append(run) or load_run(run, *a, **k))
    assert cli.main(["dpo", *common, "--run-dir", str(dpo_dir), "--steps", "20", "--beta", "0.5"]) == 0
    assert loaded == [str(start_run)]  # one reference for the trainer and the evaluations
    assert json.loads((dpo_dir / "results.json").read_text())["preference_validation"]["accuracy"] == 1.0
    assert "accuracy" in capsys.readouterr().out


def test_commands_refuse_bad_pairs_and_runs(start_run, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", [pair("a", "b", "c"), pair("d", "e", "e")])
    assert cli.main(["dpo", "--data", str(data), "--init-from", str(start_run), "--run-dir", str(tmp_path / "r")]) == 2
    assert "pairs.jsonl:2: 'chosen' and 'rejected' are identical" in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError, match="not a reward model run"):
        load_reward_model(start_run)
