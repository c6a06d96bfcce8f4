"""The checkpoint adapter (evals/model.py) on a tiny random-weight model: log-likelihoods equal a
direct forward pass, long inputs are windowed, stop strings cut generations; then every benchmark
fixture through its protocol, and `gemini-jax eval --tasks ...` on a run directory."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from evals_data import make_data_dir, write_run

from gemini_jax import cli
from gemini_jax.config import PRESETS
from gemini_jax.evals.checkpoint_model import CheckpointModel, scoring_windows
from gemini_jax.evals.tasks import Settings, get_task, run_task
from gemini_jax.sample.streaming import truncate_at_stop

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=320, max_seq_len=128)
TEXTS = ["The following are multiple choice questions (with answers) about astronomy.\nAnswer: B\n",
         "Question: Tom has 3 apples and buys 2 more.\nAnswer: 5\n", "def f(x):\n    return x + 1\n"] * 20


@pytest.fixture(scope="module")
def run(tmp_path_factory, build_model):
    """A run directory of a random-weight test model, the model and its tokenizer."""
    model = build_model(CONFIG)
    run_dir, tokenizer = write_run(tmp_path_factory.mktemp("evalrun"), model, config=CONFIG, texts=TEXTS)
    return run_dir, model, tokenizer


@pytest.fixture(scope="module")
def adapter(run):
    _, model, tokenizer = run
    return CheckpointModel(model, tokenizer, batch_size=4)


def direct_loglikelihood(model, ids, first):
    tokens = np.asarray([ids[:-1]], np.int32)
    n = tokens.shape[1]
    out = model({"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.arange(n, dtype=np.int32)[None],
                 "media_spans": np.zeros_like(tokens)})
    logp = np.asarray(jax.nn.log_softmax(out.logits.astype(np.float32), axis=-1))[0]  # [T, V]
    return float(sum(logp[t - 1, ids[t]] for t in range(first, len(ids))))


def test_loglikelihood_equals_a_direct_forward_pass(run, adapter):
    _, model, tok = run
    pairs = [("Question: Tom has 3 apples.\nAnswer:", " 5"), ("The following are", " multiple choice"), ("", "x y")]
    got = adapter.loglikelihood(pairs)
    for (context, continuation), value in zip(pairs, got):
        ctx, cont = tok.encode(context), tok.encode(continuation)
        ids = [tok.bos_id, *ctx, *cont]
        assert value == pytest.approx(direct_loglikelihood(model, ids, 1 + len(ctx)), rel=1e-4, abs=1e-4)
        assert value < 0
    # Same answer alone and in a batch (padding rows and bucketing change nothing).
    assert adapter.loglikelihood(pairs[:1])[0] == pytest.approx(got[0], rel=1e-5)


def test_long_inputs_are_cut_from_the_left_and_windowed(run, adapter):
    _, model, tok = run
    assert scoring_windows([0, 1, 2, 3, 4], 3, 8) == [([0, 1, 2, 3, 4], 2)]
    assert scoring_windows([0, 1, 2, 3, 4], 1, 2) == [([0, 1, 2], 2), ([2, 3, 4], 2)]
    context = "def f(x):\n    return x + 1\n" * 12
    ids = [tok.bos_id, *tok.encode(context), *tok.encode(" Answer")]
    assert len(ids) > CONFIG.max_seq_len + 1
    before = adapter.truncated
    with pytest.warns(UserWarning, match="cut from the left") if before == 0 else _nothing():
        [value] = adapter.loglikelihood([(context, " Answer")])
    assert adapter.truncated == before + 1
    kept = ids[-(CONFIG.max_seq_len + 1):]
    n_cont = len(tok.encode(" Answer"))
    assert value == pytest.approx(direct_loglikelihood(model, kept, len(kept) - n_cont), rel=1e-4)
    # A whole document longer than the context: windows, each scoring new tokens once.
    [rolling] = adapter.loglikelihood_rolling([context])
    doc = [tok.bos_id, *tok.encode(context)]
    expected = sum(direct_loglikelihood(model, w, len(w) - n) for w, n in scoring_windows(doc, 1, CONFIG.max_seq_len))
    assert rolling == pytest.approx(expected, rel=1e-4)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_generate_greedy_samples_and_stop_strings(adapter):
    assert truncate_at_stop("abc\n\nQuestion: x", ["Question:", "\n\n"]) == "abc"
    assert truncate_at_stop("abc", ["", "z"]) == "abc"
    prompts = ["Question: Tom has 3 apples.\nAnswer:", "def f(x):"]
    [[a1, a2], [b1, b2]] = adapter.generate(prompts, temperature=0.0, num_samples=2, seed=0, max_tokens=12, stop=())
    assert a1 == a2 and b1 == b2 and a1
    stop = a1[len(a1) // 2 :][:2]
    [[cut], [b]] = adapter.generate(prompts, temperature=0.0, num_samples=1, seed=0, max_tokens=12, stop=[stop])
    assert cut == a1[: a1.find(stop)] and stop not in cut and b == truncate_at_stop(b1, [stop])
    [samples] = adapter.generate(prompts[:1], temperature=1.0, num_samples=4, seed=5, max_tokens=12, stop=())
    assert len(samples) == 4 and len(set(samples)) > 1  # distinct seeds, distinct samples


@pytest.mark.parametrize("name, settings", [
    # One task per protocol and per kind of media (each extra one costs compilations).
    ("mmlu", Settings(shots=1)), ("gsm8k", Settings(shots=1, samples=2, limit=2)), ("wmt", Settings(limit=2)),
    ("humaneval", Settings(limit=1)), ("vqav2", Settings()), ("mmmu", Settings(limit=1)),
    ("asr_manifest", Settings()), ("videoqa", Settings()), ("covost2", Settings()),
    ("vatex", Settings()),
])
def test_every_protocol_runs_on_the_fixtures(tmp_path_factory, adapter, name, settings):
    data = make_data_dir(tmp_path_factory.mktemp("d"))
    task = get_task(name)
    result = run_task(task, adapter, data, settings)
    assert result.metrics["examples"] == len(result.records) > 0
    for metric in task.metrics:
        assert 0.0 <= result.metrics[metric] <= 100.0 or metric in ("wer", "cider_d")
        assert np.isfinite(result.metrics[metric])
    record = result.records[0]
    assert {"task", "id", "prompt", "output", "answer", "golds", "scores"} <= set(record)
    json.dumps(record, default=str)
    if name == "mmlu":  # the exact 1-shot MMLU prompt, scored on the letters
        assert record["prompt"].endswith("D. Vega\nAnswer: B\n\nWhich planet is known as the Red Planet?\n"
                                         "A. Venus\nB. Mars\nC. Mercury\nD. Saturn\nAnswer:")
        assert len(record["loglikelihoods"]) == 4 and record["output"] in "ABCD"
    if name == "mmmu":  # its prompt is longer than the test model's context: counted as wrong
        assert result.metrics["errors"] == 1 and "context is 128" in record["error"]
    if name == "gsm8k":
        assert len(record["output"]) == 2 and 0 <= record["consensus"] <= 1


def test_cli_evaluates_benchmarks_on_a_checkpoint(run, tmp_path, capsys):
    root, _, _ = run
    data = make_data_dir(tmp_path)
    out, records = tmp_path / "results.json", tmp_path / "records.jsonl"
    code = cli.main(["eval", "--tasks", "hellaswag,vqav2", "--checkpoint", str(root),
                     "--data-dir", str(data), "--limit", "2", "--output", str(out),
                     "--records", str(records), "--no-progress"])
    assert code == 0
    table = capsys.readouterr().out
    assert "hellaswag" in table and "accuracy" in table and "vqa_accuracy" in table
    results = json.loads(out.read_text())
    assert set(results) == {"hellaswag", "vqav2"} and results["hellaswag"]["examples"] == 2
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 4 and {r["task"] for r in lines} == set(results)
    assert cli.main(["eval", "--tasks", "gsm8k", "--checkpoint", str(root)]) == 2
    assert "give --data-dir" in capsys.readouterr().err
