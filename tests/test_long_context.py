"""Long context: the key-value retrieval generator (deterministic, the queried pair where asked,
train and test apart), the recipes' training streams built from their mixture files, accuracy by
length and position, NLL by position against a direct computation, and the plot."""

import dataclasses
import inspect
import json
import os
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax import cli, recipes
from gemini_jax.config import PRESETS
from gemini_jax.data.corpora import kv_retrieval as kv
from gemini_jax.data.corpora import stdlib_prepared
from gemini_jax.data.corpora.text_windows import TextWindows
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.evals.tasks import nll_position, retrieval
from gemini_jax.recipes import long_context, train_and_evaluate
from gemini_jax.recipes.runner import Timings
from gemini_jax.train import TrainConfig, Trainer
from gemini_jax.train.optimizer import OptimizerConfig

SPEC = kv.RetrievalSpec(num_pairs=5, key_digits=3, value_digits=4)
FILLER = inspect.getsource(textwrap)
# The standard library's files of each split, in tests: halves of one module (and digits for the
# tokenizer, which keys and values are written in).
TEXTS = {"train": FILLER[: len(FILLER) // 2] + "0123456789: \n" * 50, "validation": FILLER[len(FILLER) // 2:],
         "test": FILLER[len(FILLER) // 2:]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer([FILLER, "0123456789: \n" * 50], vocab_size=400,
                           path=tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture(scope="module")
def sources(tok):
    half = len(FILLER) // 2
    return kv.FillerSource(FILLER[:half], tok, split="train"), kv.FillerSource(FILLER[half:], tok, split="test")


@pytest.mark.parametrize("position, index", [(0.0, 0), (0.5, 2), (0.7, 3), (1.0, 4)])
def test_an_example_is_deterministic_and_asks_for_the_pair_at_its_position(tok, sources, position, index):
    _, test = sources
    make = lambda: kv.make_example(test, np.random.default_rng(7), length=300, position=position, spec=SPEC)
    example = make()
    assert example == make()
    assert example != kv.make_example(test, np.random.default_rng(8), length=300, position=position, spec=SPEC)
    key, value = example.pairs[index]
    lines = example.prompt.splitlines()
    assert lines[index] == f"{key}: {value}" and len(lines[:SPEC.num_pairs]) == SPEC.num_pairs
    assert example.prompt.endswith(f"\nQ {key}:") and example.answer == f" {value}"
    assert len({k for k, _ in example.pairs}) == SPEC.num_pairs
    # The length holds within one line of filler, and the pieces encode as the whole text does.
    whole = tok.encode("".join(piece for piece, _ in example.pieces()))
    assert example.tokens == 1 + len(whole) and 300 - 40 < example.tokens <= 300
    row = kv.encode_row(example, tok)
    assert list(row["tokens"][1:]) + [int(row["targets"][-1])] == whole
    assert tok.decode(row["targets"][row["loss_mask"] > 0]) == f" {value}\n"


def test_train_and_test_keys_and_text_are_kept_apart(tok, sources):
    train, test = sources
    train_keys, test_keys = set(kv.split_keys("train", 3)), set(kv.split_keys("test", 3))
    validation_keys = set(kv.split_keys("validation", 3))
    assert not train_keys & test_keys and not validation_keys & (train_keys | test_keys)
    assert len(train_keys | validation_keys | test_keys) == 1000 and 50 < len(test_keys) < 150
    assert 20 < len(validation_keys) < 80  # 5% of train's keys
    validation = kv.FillerSource(FILLER, tok, split="validation")
    assert all(k in validation_keys for e in kv.test_set(validation, lengths=[200], positions=[0.5], per_cell=3,
                                                         spec=SPEC) for k, _ in e.pairs)
    examples = kv.test_set(test, lengths=[200, 260], positions=[0.0, 1.0], per_cell=3, spec=SPEC)
    assert len(examples) == 12 and {e.length for e in examples} == {200, 260}
    assert all(k in test_keys for e in examples for k, _ in e.pairs)
    assert examples == kv.test_set(test, lengths=[200, 260], positions=[0.0, 1.0], per_cell=3, spec=SPEC)
    # A cell does not change when other cells are asked for.
    assert examples[9:] == kv.test_set(test, lengths=[260], positions=[1.0], per_cell=3, spec=SPEC)
    rows = kv.TrainingRows(train, seq_len=256, batch_size=3, spec=SPEC, queries=3)
    batch = next(rows)
    text = tok.decode(batch["tokens"].ravel())
    assert all(f"{k}:" not in text for k in test_keys)
    with pytest.raises(ValueError, match="held-out"):
        kv.test_set(train, lengths=[200], per_cell=1, spec=SPEC)
    with pytest.raises(ValueError, match="training text"):
        kv.TrainingRows(test, seq_len=256, batch_size=1, spec=SPEC)


def test_training_rows_pack_examples_score_answers_and_resume(tok, sources):
    train, _ = sources
    rows = kv.TrainingRows(train, seq_len=256, batch_size=2, spec=SPEC, queries=3, seed=1, short_steps=1)
    first, second = next(rows), next(rows)  # the first of half length, twice as many rows
    assert {k: v.shape for k, v in first.items()} == {k: (4, 128) for k in first}
    assert {k: v.shape for k, v in second.items()} == {k: (2, 256) for k in first}
    for b in range(4):
        segments = first["segment_ids"][b]
        assert segments.max() >= 1 and np.all(np.diff(segments[segments > 0]) >= 0)
        for s in range(1, segments.max() + 1):
            at = segments == s
            assert np.array_equal(first["positions"][b][at], np.arange(at.sum()))
            text = tok.decode(first["tokens"][b][at])
            answers = tok.decode(first["targets"][b][at & (first["loss_mask"][b] > 0)])
            # Each scored answer is the value its query's key has among the pairs at the start.
            asked = [line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith("Q ")]
            pairs = dict(line.split(": ") for line in text.splitlines() if len(line.split(": ")) == 2
                         and line.split(": ")[0].isdigit() and len(line.split(": ")[0]) == 3)
            assert asked and answers.split() == [pairs[k] for k in asked]
    resumed = kv.TrainingRows(train, seq_len=256, batch_size=2, spec=SPEC, queries=3, seed=1, short_steps=1)
    resumed.set_state(rows.get_state())
    rows.set_state({"step": 1})
    for a, b in [(second, next(rows)), (next(resumed), next(rows))]:
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_accuracy_by_length_and_position():
    lengths = [256, 256, 256, 256, 512, 512, 512, 512]
    positions = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    correct = [True, True, True, False, True, False, False, False]
    metrics = retrieval.accuracy_by_bucket(lengths, positions, correct)
    assert metrics["exact_match"] == 50.0 and metrics["examples"] == 8
    assert metrics["exact_match@len=256"] == 75.0 and metrics["exact_match@len=512"] == 25.0
    assert metrics["exact_match@pos=0.00"] == 75.0 and metrics["exact_match@pos=1.00"] == 25.0
    assert metrics["exact_match@len=256,pos=1.00"] == 50.0 and metrics["exact_match@len=512,pos=1.00"] == 0.0
    grid = retrieval.format_grid(metrics).splitlines()
    assert grid[0] == "| length | pos 0.00 | pos 1.00 | all |"
    assert grid[2] == "| 256 | 100.0 | 50.0 | 75.0 |" and grid[-1] == "| all | 75.0 | 25.0 | 50.0 |"
    with pytest.raises(ValueError, match="one length"):
        retrieval.accuracy_by_bucket([256], [0.0, 1.0], [True])


def test_nll_by_position_equals_the_per_token_losses_computed_directly(build_model):
    config = dataclasses.replace(PRESETS["test"].text_only, max_seq_len=32, depth=1)
    model = build_model(config)
    documents = np.random.default_rng(0).integers(9, config.vocab_size, (3, 24)).astype(np.int32)
    nll = nll_position.nll_by_position(model, documents, batch_size=2)  # 2 batches, the last one padded
    assert nll.shape == (23,)
    length = documents.shape[1] - 1
    forward = nnx.jit(lambda m, tokens: m({
        "tokens": tokens, "segment_ids": jnp.ones_like(tokens), "media_spans": jnp.zeros_like(tokens),
        "positions": jnp.arange(length, dtype=jnp.int32)[None]}).logits)
    reference = []
    for doc in documents:  # one unpadded row at a time, log-softmax in float64
        logits = np.asarray(forward(model, jnp.asarray(doc[None, :-1]))[0], np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        reference.append(-logp[np.arange(length), doc[1:]])
    np.testing.assert_allclose(nll, np.mean(reference, axis=0), rtol=2e-5, atol=2e-5)
    # Causal: a position's loss is that of the same tokens scored as a shorter document.
    prefix = nll_position.nll_by_position(model, documents[:, :9], batch_size=2)
    np.testing.assert_allclose(prefix, nll[:8], rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="context"):
        nll_position.nll_by_position(model, np.zeros((1, 40), np.int32))


def test_position_buckets_and_the_plot(tmp_path):
    nll = np.arange(1.0, 11.0)  # contexts 1..10
    assert nll_position.position_buckets(nll) == {"nll@ctx=1": 1.0, "nll@ctx=2-3": 2.5, "nll@ctx=4-7": 5.5,
                                                  "nll@ctx=8-10": 9.0}
    path = tmp_path / "plots" / "nll.png"
    nll_position.plot_nll_by_position(nll, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert (tmp_path / "plots" / "nll.json").read_text().startswith('{"context_tokens": [1, 2')


def test_held_out_documents_have_the_length_asked_for(tok):
    documents = nll_position.held_out_documents(tok, length=64, count=3)
    assert documents.shape == (3, 64) and np.all(documents[:, 0] == tok.bos_id)
    assert np.all(documents[:, 1:] != tok.bos_id)


def test_text_windows_score_every_token_of_bos_led_windows_and_resume():
    ids = np.arange(100, 400, dtype=np.int32)  # token i of the text is 100 + i: offsets are visible
    rows = TextWindows(ids, seq_len=16, batch_size=3, bos_id=2, seed=5)
    first, second = next(rows), next(rows)
    assert {k: v.shape for k, v in first.items()} == {k: (3, 16) for k in
                                                       ("tokens", "targets", "loss_mask", "segment_ids", "positions",
                                                        "media_spans")}
    assert np.all(first["tokens"][:, 0] == 2) and np.all(first["loss_mask"] == 1)
    # Consecutive text: each input after <bos> is the previous target; targets run without a gap.
    np.testing.assert_array_equal(first["tokens"][:, 1:], first["targets"][:, :-1])
    assert np.all(np.diff(first["targets"], axis=1) == 1)
    np.testing.assert_array_equal(first["positions"], np.broadcast_to(np.arange(16), (3, 16)))
    assert not np.array_equal(first["targets"], second["targets"])
    resumed = TextWindows(ids, seq_len=16, batch_size=3, bos_id=2, seed=5)
    resumed.set_state(rows.get_state())
    np.testing.assert_array_equal(next(resumed)["targets"], next(rows)["targets"])
    with pytest.raises(ValueError, match="too few for rows of 400"):
        TextWindows(ids, seq_len=400, batch_size=1, bos_id=2)


@pytest.fixture
def small_library(monkeypatch):
    """The standard library replaced by TEXTS wherever the long-context recipes read it."""
    files = lambda split: [TEXTS[split]]
    for module in (long_context, stdlib_prepared, nll_position, kv):
        monkeypatch.setattr(module, "standard_library_files", files)
    return TEXTS


def recipe_stream(recipe, run_dir):
    return recipe.setup(run_dir, Timings()).data


def test_retrieval_trains_on_short_rows_then_full_ones_and_resumes(tmp_path, small_library):
    """kv_retrieval.yaml: the first 3/4 of the steps rows of half the length, twice as many, as
    the recipe's TrainingRows made them; then full rows; the answers alone scored."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=400, max_seq_len=512).text_only
    recipe = long_context.RetrievalRecipe(run_dir=str(tmp_path / "run"), model=config, seq_len=512, batch_size=2,
                                          cache_dir=str(tmp_path / "cache"), train=TrainConfig(steps=8, seed=3))
    stream = recipe_stream(recipe, tmp_path / "run")
    batches = [next(stream) for _ in range(8)]
    assert [b["tokens"].shape for b in batches] == [(4, 256)] * 6 + [(2, 512)] * 2
    tokenizer = long_context.prepare_tokenizer(tmp_path / "run", config)
    filler = kv.FillerSource(small_library["train"], tokenizer, split="train")
    rows = kv.TrainingRows(filler, seq_len=512, batch_size=2, seed=3, queries=8, short_steps=6)
    for batch in batches[:6]:
        expected = next(rows)
        assert all(np.array_equal(batch[k], expected[k]) for k in expected)
    for batch in batches:
        scored = batch["loss_mask"] > 0
        assert 0 < scored.sum() < (batch["segment_ids"] > 0).sum() / 3  # answers, not the context
        answers = tokenizer.decode(batch["targets"][scored]).split()
        assert answers and all(a.isdigit() and len(a) == 4 for a in answers)
    # Resumed across the stage boundary from a saved position, the stream goes on as it did.
    stream = recipe_stream(recipe, tmp_path / "run")
    for _ in range(5):
        next(stream)
    state = stream.get_state()
    resumed = recipe_stream(recipe, tmp_path / "run")
    resumed.set_state(state)
    for expected in batches[5:]:
        batch = next(resumed)
        assert all(np.array_equal(batch[k], expected[k]) for k in expected)
    assert [p.name[:10] for p in (tmp_path / "cache").iterdir()] == ["stdlib-v1-"]  # prepared once, reused


def test_long_text_trains_on_windows_of_its_text(tmp_path, small_library):
    """long_text.yaml: rows of seq_len consecutive tokens of the training text, every token
    scored, as the recipe's TextWindows made them; a resumed stream continues where it stopped."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=400, max_seq_len=64).text_only
    recipe = long_context.LongTextRecipe(run_dir=str(tmp_path / "run"), model=config, seq_len=64, batch_size=3,
                                         cache_dir=str(tmp_path / "cache"), train=TrainConfig(steps=10, seed=2))
    stream = recipe_stream(recipe, tmp_path / "run")
    tokenizer = long_context.prepare_tokenizer(tmp_path / "run", config)
    ids = tokenizer.encode(small_library["train"])
    windows = TextWindows(ids, seq_len=64, batch_size=3, bos_id=tokenizer.bos_id, seed=2)
    for _ in range(3):
        batch, expected = next(stream), next(windows)
        assert {k: v.shape for k, v in batch.items()} == {k: (3, 64) for k in expected}
        assert all(np.array_equal(batch[k], expected[k]) for k in expected)
        assert np.all(batch["loss_mask"] == 1) and np.all(batch["tokens"][:, 0] == tokenizer.bos_id)
        np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
        assert all(any(ids[i:i + 64] == row.tolist() for i in range(len(ids) - 63)) for row in batch["targets"])
    state = stream.get_state()
    resumed = recipe_stream(recipe, tmp_path / "run")
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["targets"], next(stream)["targets"])


@pytest.mark.slow
def test_long_text_recipe_trains_and_plots_its_nll_by_position(tmp_path, monkeypatch, small_library):
    """`train --task long_text` end to end on a tiny decoder: it learns (its loss ends below a
    uniform guess's) and the run holds its NLL-by-position table, plot and results."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=400, max_seq_len=64).text_only
    recipe = long_context.LongTextRecipe(
        run_dir=str(tmp_path / "run"), model=config, seq_len=64, batch_size=4, eval_documents=4,
        cache_dir=str(tmp_path / "cache"),
        train=TrainConfig(steps=30, progress=False, sdc_check_every=10, optimizer=OptimizerConfig(warmup_steps=5)))
    checked = []
    checked_step = Trainer.checked_step
    monkeypatch.setattr(Trainer, "checked_step", lambda self, batch, *, step: checked.append(step) or
                        checked_step(self, batch, step=step))
    results = train_and_evaluate(recipe)
    assert checked == [10, 20, 30]  # the training guards reach the long-context recipes too
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < np.log(config.vocab_size) - 0.5  # learnt more than a uniform guess
    nll = results["nll_by_position"]
    assert nll["documents"] == 4 and nll["length"] == 64 and "kv_retrieval" not in results
    assert (tmp_path / "run" / long_context.PLOT_FILE).stat().st_size > 5000
    assert json.loads((tmp_path / "run" / "results.json").read_text())["task"] == "long_text"


def test_the_cli_hands_the_training_guards_to_the_long_context_recipes(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(recipes, "train_and_evaluate", lambda recipe: seen.append(recipe) or {})
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --sdc-check-every adds a GPU flag
    assert cli.main(["train", "--task", "long_text", "--run-dir", str(tmp_path), "--sdc-check-every", "5",
                     "--replica-every", "7", "--loss-spike-factor", "2.5", "--no-progress"]) == 0
    [recipe] = seen
    assert isinstance(recipe, long_context.LongTextRecipe) and recipe.run_dir == str(tmp_path)
    assert (recipe.train.sdc_check_every, recipe.train.replica_every, recipe.train.optimizer.loss_spike_factor,
            recipe.train.progress) == (5, 7, 2.5, False)
    assert cli.main(["train", "--task", "kv_retrieval", "--cache-dir", str(tmp_path / "cache"), "--seq-len", "256",
                     "--batch-size", "4", "--steps", "100"]) == 0
    recipe = seen[-1]
    assert isinstance(recipe, long_context.RetrievalRecipe)
    assert (recipe.cache_dir, recipe.seq_len, recipe.batch_size, recipe.train.steps) == (
        str(tmp_path / "cache"), 256, 4, 100)


def test_the_cli_checks_long_context_requests(capsys, tmp_path):
    assert long_context.default_lengths(512) == [128, 256, 512] and long_context.default_lengths(300) == [128, 256, 300]
    # Long context and benchmarks may share a call: this one gets as far as loading the run.
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--tasks", "kv_retrieval,mmlu",
                     "--lengths", "256"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", "--tasks", "kv_retrieval", "--lengths", "256,x"]) == 2
    message = capsys.readouterr().err
    assert "--lengths" in message and "positive token counts" in message


def test_decoding_against_a_full_32k_cache_equals_the_forward_pass(build_model):
    """A prompt of 32,764 tokens prefilled (blockwise: no [T, T] matrix) into a 32,768-slot
    cache, then 4 decode steps: each step's logits equal the full forward pass's at that
    position, so positions near the end of the context are rotated and read correctly.
    One block of one head keeps two 32K-token passes to seconds on a CPU; tests/test_model.py
    checks deeper models with more heads against the forward pass at short lengths."""
    length, steps = 32_768, 4
    config = dataclasses.replace(PRESETS["test"], depth=1, num_heads=1, num_kv_heads=1, max_seq_len=length,
                                 attention_impl="blockwise", attention_block=4096).text_only
    model = build_model(config)
    tokens = np.random.default_rng(3).integers(10, config.vocab_size, (1, length)).astype(np.int32)

    def batch(n):
        return {"tokens": jnp.asarray(tokens[:, :n]), "segment_ids": jnp.ones((1, n), jnp.int32),
                "positions": jnp.arange(n, dtype=jnp.int32)[None], "media_spans": jnp.zeros((1, n), jnp.int32)}

    # The last `steps` positions of one forward pass over all 32,768 tokens.
    reference = nnx.jit(lambda m, b: m(b).logits[:, -steps:])(model, batch(length))
    cache = model.init_cache(batch_size=1, max_len=length)
    _, cache = nnx.jit(lambda m, b, c: m.prefill(b, c))(model, batch(length - steps), cache)
    step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
    for s in range(steps):
        logits, cache = step(model, jnp.asarray(tokens[:, length - steps + s]), cache)
        # Decode writes the token at its position and predicts the next: the forward pass's
        # logits at that same position.
        np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(reference[0, s]), atol=2e-4,
                                   err_msg=f"decode step {s} (position {length - steps + s})")
    assert int(cache.index[0]) == length
