"""Training on a mixture of prepared data: the digits example end to end on the tiny `test`
model (a few steps), resumption, --init-from, and the tokenizer checks."""

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, get_preset
from gemini_jax.data.examples import from_json
from gemini_jax.data.prepare.pipeline import PrepareOptions
from gemini_jax.data.prepare.pipeline import prepare as prepare_data
from gemini_jax.data.prepare.record_codec import encode_record
from gemini_jax.data.prepare.shards import ShardWriter
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.recipes.custom import DataRecipe, train_on_data
from gemini_jax.train import TrainConfig
from gemini_jax.train.optimizer import OptimizerConfig

ROOT = Path(__file__).resolve().parents[1]


def digits_example():
    spec = importlib.util.spec_from_file_location("digits", ROOT / "examples" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_by_hand(jsonl: Path, out: Path, *, tokenizer_text: str) -> None:
    """A prepared directory as `data prepare` writes it, with a tokenizer trained on `tokenizer_text`."""
    lines = jsonl.read_text().splitlines()
    examples = [from_json(json.loads(line), base_dir=jsonl.parent) for line in lines]
    out.mkdir(parents=True)
    writers = {split: ShardWriter(out, split, records_per_shard=100) for split in ("train", "validation")}
    for example in examples:
        record = encode_record(example)
        writers["validation" if hashlib.sha256(record).digest()[0] % 8 == 0 else "train"].write(record)
    splits = {split: {"files": w.close(), "records": w.records} for split, w in writers.items()}
    train_tokenizer([tokenizer_text] * 20, vocab_size=400, path=out / "tokenizer.model")
    digest = hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps({
        "format": 1, "splits": splits, "modalities": ["image", "text"], "text_only": False,
        "tokenizer": "tokenizer.model", "tokenizer_sha256": digest, "sources": [str(jsonl)],
        "options": {"vocab_size": 400}}))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    digits_example().write(out, limit=40)
    options = PrepareOptions(vocab_size=400, validation_fraction=0.15, decontaminate=False, near_dedup=False)
    report = prepare_data([str(out / "train.jsonl")], str(out / "prepared"), options, progress=False)
    assert json.loads((out / "prepared" / "manifest.json").read_text())["splits"]["validation"]["records"], report
    return out


def recipe(digits: Path, run_dir: Path, *, steps: int, **changes) -> DataRecipe:
    train = TrainConfig(steps=steps, log_every=1, checkpoint_every=2, progress=False,
                        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1))
    return DataRecipe(mixture=str(digits / "mixture.yaml"), run_dir=str(run_dir), model=get_preset("test"),
                      train=train, batch_size=4, eval_limit=6, **changes)


def steps_logged(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    results = train_on_data(recipe(digits, run_dir, steps=2))
    return run_dir, results


def test_trains_and_scores_the_held_out_sets(trained):
    run_dir, results = trained
    saved = json.loads((run_dir / "results.json").read_text())
    assert 0 <= saved["digits_test"]["exact_match"] <= 100 and saved["digits_test"]["examples"] == 6
    assert saved["digits/validation"]["loss"] > 0
    assert results["digits_test"] == saved["digits_test"]
    assert steps_logged(run_dir) == [1, 2]


@pytest.mark.slow
def test_resumes_from_its_last_checkpoint(digits, trained, tmp_path):
    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    train_on_data(recipe(digits, copy, steps=4, evaluate_at_end=False))
    assert steps_logged(copy) == [1, 2, 3, 4]
    assert checkpoint.Checkpointer(copy).latest_step() == 4


def params(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_init_from_starts_from_the_runs_parameters(digits, trained, tmp_path):
    run_dir, _ = trained
    start = recipe(digits, tmp_path / "tuned", steps=1, init_from=str(run_dir))
    fresh = Gemini(start.model_config(tokenizer=None), rngs=nnx.Rngs(7))
    trainer = start.make_trainer(fresh, start.train.resolved().optimizer)
    expected = params(checkpoint.load_run(run_dir).model)
    assert all(np.array_equal(a, b) for a, b in zip(params(trainer.model), expected))


@pytest.mark.slow
def test_init_from_trains_the_runs_model(digits, trained, tmp_path):
    run_dir, _ = trained
    start = recipe(digits, tmp_path / "tuned", steps=1, init_from=str(run_dir), evaluate_at_end=False)
    train_on_data(start)
    assert checkpoint.read_config(tmp_path / "tuned") == checkpoint.read_config(run_dir)
    assert (tmp_path / "tuned" / "tokenizer.model").read_bytes() == (run_dir / "tokenizer.model").read_bytes()


def test_init_from_refuses_data_prepared_with_another_tokenizer(digits, trained, tmp_path):
    run_dir, _ = trained
    other = tmp_path / "other"
    prepare_by_hand(digits / "train.jsonl", other / "prepared", tokenizer_text="another text entirely, with other words")
    (other / "mixture.yaml").write_text("sources:\n  digits: {path: prepared}\n")
    with pytest.raises(ConfigError, match=r"tokenizer does not match .*prepared.*--vocab-size 400.*--tokenizer"):
        train_on_data(dataclasses.replace(recipe(other, tmp_path / "run", steps=1), init_from=str(run_dir)))


@pytest.mark.parametrize("argv, message", [
    (["--data", "mix.yaml", "--task", "demo"], "give one of them"),
    (["--init-from", "runs/x"], "--init-from needs --data"),
    (["--data", "mix.yaml", "--init-from", "runs/x", "--preset", "demo"], "drop --preset"),
    (["--data", "mix.txt"], "expected a mixture file ending in .yaml"),
    (["--data", "missing.yaml"], "mixture file 'missing.yaml' does not exist"),
    (["--data", "mix.yaml", "--cache-dir", "c"], "--cache-dir does nothing"),
])
def test_flags_are_checked_before_anything_loads(argv, message, capsys):
    from gemini_jax import cli

    assert cli.main(["train", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_eval_reads_a_jsonl_file_or_a_prepared_split(digits, trained):
    from gemini_jax.evals.registry import EvalOptions, evaluate_run
    from gemini_jax.evals.tasks import TaskDataError

    run_dir, _ = trained
    results = evaluate_run(run_dir, ["prepared"], EvalOptions(data_dir=str(digits / "test.jsonl"), limit=3,
                                                              progress=False))
    assert results["prepared"]["examples"] == 3 and 0 <= results["prepared"]["exact_match"] <= 100
    with pytest.raises(TaskDataError, match="no split 'test'"):  # prepared without --test-fraction
        evaluate_run(run_dir, ["prepared"], EvalOptions(data_dir=str(digits / "prepared"), progress=False))


def test_a_source_keeps_its_tasks_and_buckets_by_media_size(tmp_path):
    from gemini_jax.data.mixture_file import MixtureError, Source
    from gemini_jax.data.prepared import open_prepared
    from gemini_jax.recipes.custom import source_groups

    rows = []
    for i in range(12):  # images of 4 to 48 pixels a side: PNG bytes grow with the side
        side = 4 * (i + 1)
        path = tmp_path / f"{i}.png"
        noise = np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        rows.append({"contents": [{"role": "user", "parts": [{"image": path.name}, {"text": "size?"}]},
                                  {"role": "model", "parts": [{"text": str(side)}]}], "task": "ab"[i % 2]})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = PrepareOptions(validation_fraction=0.0, decontaminate=False, near_dedup=False)
    prepare_data([str(tmp_path / "data.jsonl")], str(tmp_path / "prepared"), options, progress=False)
    data = open_prepared(tmp_path / "prepared")

    def answers(examples):
        return [int(e.contents[-1].parts[0].text) for e in examples]

    assert list(source_groups(Source("s", data.path), data)) == ["s"]
    only_a = source_groups(Source("s", data.path, tasks=("a",)), data)["s"]
    assert sorted(answers(only_a)) == [4, 12, 20, 28, 36, 44]
    groups = source_groups(Source("s", data.path, buckets=3), data)
    assert list(groups) == ["s-0", "s-1", "s-2"] and [len(g) for g in groups.values()] == [4, 4, 4]
    assert sorted(answers(groups["s-0"])) == [36, 40, 44, 48]  # the largest media first
    assert sorted(answers(groups["s-2"])) == [4, 8, 12, 16]
    with pytest.raises(MixtureError, match=r"no training records of tasks \['c'\]; its tasks: \['a', 'b'\]"):
        source_groups(Source("s", data.path, tasks=("c",)), data)


def test_a_float_shape_is_relative_to_the_runs():
    from gemini_jax.data.mixture_file import Source
    from gemini_jax.recipes.custom import source_shape

    config = get_preset("test")
    run = DataRecipe(mixture="mix.yaml", batch_size=8, seq_len=512)
    assert source_shape(Source("s", None, seq_len=0.5, batch_size=2.0), recipe=run, config=config) == (16, 256)
    assert source_shape(Source("s", None, seq_len=100, batch_size=3), recipe=run, config=config) == (3, 100)
    assert source_shape(Source("s", None), recipe=run, config=config) == (8, 512)
    unset = dataclasses.replace(run, seq_len=None)  # a share of the model's context; else its examples decide
    assert source_shape(Source("s", None, seq_len=0.5), recipe=unset, config=config) == (8, config.max_seq_len // 2)
    assert source_shape(Source("s", None), recipe=unset, config=config) == (8, None)


@pytest.mark.parametrize("sources, trained_on", [
    ({"digits": {"path": "prepared", "packing": "windows"}}, "digits"),
    ({"digits": "prepared", "rows": {"generate": "kv_retrieval", "filler": "digits"}}, "rows"),
])
def test_windows_and_fillers_take_text_only_sources(digits, tmp_path, sources, trained_on):
    from gemini_jax.data.mixture_file import MixtureError, load_mixture
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.recipes.custom import mixture_stream, open_sources

    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"sources": sources, "weights": {trained_on: 1}}))
    mixture = load_mixture(path, base=digits)
    data = open_sources(mixture)
    assert list(data) == ["digits"]  # a generated source has nothing to open
    tokenizer = Tokenizer.load(data["digits"].tokenizer_path)
    with pytest.raises(MixtureError, match="holds more than raw text"):
        mixture_stream(mixture, data, tokenizer=tokenizer, config=get_preset("test"),
                       recipe=DataRecipe(mixture=str(path), batch_size=2))
