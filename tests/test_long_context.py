"""Long context: the key-value retrieval generator (deterministic, the queried pair where asked,
train and test apart), accuracy by length and position, NLL by position against a direct
computation, and the plot."""

import dataclasses
import inspect
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax import cli, long_context
from gemini_jax.config import PRESETS
from gemini_jax.data import kv_retrieval as kv
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.evals import nll_position, retrieval

SPEC = kv.RetrievalSpec(num_pairs=5, key_digits=3, value_digits=4)
FILLER = inspect.getsource(textwrap)


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
    assert not train_keys & test_keys and len(train_keys | test_keys) == 1000 and 50 < len(test_keys) < 150
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


def test_the_cli_refuses_mixed_or_bad_long_context_requests(capsys):
    assert long_context.default_lengths(512) == [128, 256, 512] and long_context.default_lengths(300) == [128, 256, 300]
    assert cli.main(["eval", "--tasks", "kv_retrieval,mmlu"]) == 2
    assert "in a run of their own" in capsys.readouterr().err
    assert cli.main(["eval", "--tasks", "kv_retrieval", "--lengths", "256,x"]) == 2
    assert "--lengths takes positive token counts" in capsys.readouterr().err
