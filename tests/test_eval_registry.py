"""The one evaluation registry (evals/registry.py): every family (demo sets, long context,
benchmarks) through one `evaluate`, mixed in one call without changing a number; options no
chosen task reads named; unknown tasks listed with the known ones; checks before any work."""

import dataclasses
import json
from typing import ClassVar

import pytest
from evals_data import make_data_dir, write_run

from gemini_jax.config import PRESETS
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.corpora.kv_retrieval import RetrievalSpec
from gemini_jax.evals import registry
from gemini_jax.evals.eval_task import EvalOptions, EvalTask, Family, TaskOutcome
from gemini_jax.evals.registry import (
    TASKS,
    evaluate,
    evaluate_run,
    format_results,
    refuse_unused_options,
    unused_options,
)
from gemini_jax.evals.tasks import TASKS as BENCHMARKS
from gemini_jax.evals.tasks import TaskDataError
from gemini_jax.evals.tasks import demo as demo_sets
from gemini_jax.evals.tasks.long_context import PLOT_FILE, KvRetrieval, NllByPosition

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400, max_seq_len=128)
TEXTS = ["Q 12: 34\n56: 78\nWhat colour is the circle? red blue green\n", "def f(x):\n    return x + 1\n"] * 30
SPEC = RetrievalSpec(num_pairs=3, key_digits=2, value_digits=2)  # a short prompt for a 128-token context


@pytest.fixture(scope="module")
def run(tmp_path_factory, build_model):
    """A run directory of a random-weight multimodal test model, the model and its tokenizer."""
    model = build_model(CONFIG)
    run_dir, tokenizer = write_run(tmp_path_factory.mktemp("registry"), model, config=CONFIG, texts=TEXTS)
    return run_dir, model, tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return DemoCorpus.build(tmp_path_factory.mktemp("cache"), sizes=DemoSizes.tiny(), progress=False)


def test_the_registry_holds_every_evaluation_once():
    assert list(TASKS)[:10] == ["vqa", "asr", "video", "text", "robustness", "robustness_validation",
                                "kv_retrieval", "nll_by_position", "prepared", "prepared_validation"]
    assert set(BENCHMARKS) <= set(TASKS) and len(TASKS) == 18 + len(BENCHMARKS)  # 6 safety, 2 image_generation
    assert {t.family for t in TASKS.values()} == set(Family)
    assert all(TASKS[name].family is Family.DEMO_SETS for name in registry.DEFAULT_TASKS)
    assert registry.DEFAULT_TASKS == demo_sets.TASKS
    assert [t.seq_len for t in demo_sets.demo_sets(text_seq_len=64) if t.name == "text"] == [64]


def test_unknown_tasks_are_listed_with_the_known_ones(tmp_path):
    with pytest.raises(TaskDataError) as error:
        evaluate_run(tmp_path / "no-such-run", ["mmlu", "nope", "vqa", "nada"])  # before any loading
    message = str(error.value)
    assert "unknown task(s) nope, nada" in message
    assert "benchmarks: mmlu, gsm8k" in message and "demo sets: vqa, asr, video, text" in message
    assert "long context: kv_retrieval, nll_by_position" in message
    assert "your data: prepared, prepared_validation" in message
    with pytest.raises(TaskDataError, match="named twice"):
        registry.resolve(["text", demo_sets.CodePerplexity(seq_len=64)])


def test_options_no_chosen_task_reads_are_named():
    options = EvalOptions(shots=2, lengths=[128], records="r.jsonl", cache_dir="c", limit=5, batch_size=3)
    assert options.lengths == (128,)  # frozen and hashable, whatever sequence it was given
    assert unused_options(["vqa", "text"], options) == ["--shots (for benchmarks only)",
                                                        "--lengths (for long context only)"]
    assert unused_options(["kv_retrieval"], options) == [
        "--cache-dir (for demo sets only)", "--shots (for benchmarks only)",
        "--records (for benchmarks, demo sets and your data only)"]
    assert unused_options(["vqa", "mmlu", "nll_by_position"], options) == []  # a mixture reads them all
    assert unused_options(list(TASKS), EvalOptions()) == []  # defaults are never refused
    with pytest.raises(TaskDataError, match=r"do nothing for demo sets and long context: --data-dir \(for benchmarks"):
        refuse_unused_options(["text", "nll_by_position"], EvalOptions(data_dir="d"))
    refuse_unused_options(["text", "mmlu"], EvalOptions(data_dir="d"))


@pytest.mark.parametrize("options, message", [
    (dict(samples=0), "--samples must be >= 1"), (dict(shots=-1), "--shots must be >= 0"),
    (dict(limit=0), "--limit must be >= 1"), (dict(batch_size=0), "--batch-size must be >= 1"),
    (dict(lengths=[]), "--lengths takes positive"), (dict(lengths=[64, 0]), "--lengths takes positive"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(TaskDataError, match=message):
        EvalOptions(**options)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Probe(EvalTask):
    """A task of the caller's own: counts its runs."""

    name: str = "probe"
    runs: list = dataclasses.field(default_factory=list)
    family: ClassVar[Family] = Family.DEMO_SETS
    reads: ClassVar[frozenset[str]] = frozenset()
    default_batch_size: ClassVar[int] = 7

    def run(self, context):
        self.runs.append(self.batch_size(context.options))
        return TaskOutcome({"runs": len(self.runs)})


def test_every_task_is_checked_before_any_runs(run):
    _, model, tokenizer = run
    probe = Probe()
    with pytest.raises(TaskDataError, match="exceed the model's context of 128"):
        evaluate(model, tokenizer, [probe, "nll_by_position"], EvalOptions(lengths=(64, 256)))
    with pytest.raises(TaskDataError, match="give --data-dir"):
        evaluate(model, tokenizer, [probe, "gsm8k"])
    with pytest.raises(TaskDataError, match="3 pairs and a query take"):
        evaluate(model, tokenizer, [probe, KvRetrieval(spec=SPEC)], EvalOptions(lengths=(8,)))
    assert probe.runs == []
    assert evaluate(model, tokenizer, [probe]) == {"probe": {"runs": 1}} and probe.runs == [7]
    evaluate(model, tokenizer, [probe], EvalOptions(batch_size=2))
    assert probe.runs == [7, 2]


def test_nll_by_position_plots_beside_the_run_or_where_asked(run, tmp_path):
    _, model, tokenizer = run
    options = EvalOptions(lengths=(32,), limit=2, progress=False)
    results = evaluate(model, tokenizer, ["nll_by_position"], options, run_dir=tmp_path / "run")
    assert results["nll_by_position"]["documents"] == 2 and results["nll_by_position"]["length"] == 32
    assert (tmp_path / "run" / PLOT_FILE).stat().st_size > 5000
    elsewhere = tmp_path / "plots" / "nll.png"
    again = evaluate(model, tokenizer, [NllByPosition(documents=5)], dataclasses.replace(options, plot=str(elsewhere)))
    assert again == results and elsewhere.exists()  # --limit replaces the task's own count
    assert evaluate(model, tokenizer, [NllByPosition(documents=3)], EvalOptions(lengths=(32,), progress=False)
                    )["nll_by_position"]["documents"] == 3


def test_every_family_in_one_call_computes_what_each_computes_alone(run, corpus, tmp_path):
    run_dir, model, tokenizer = run
    data = make_data_dir(tmp_path)
    records = tmp_path / "out" / "records.jsonl"
    options = EvalOptions(limit=2, lengths=(128,), data_dir=str(data), records=str(records), progress=False)
    tasks = ["vqa", "wmt", KvRetrieval(spec=SPEC, per_cell=9), "text", "nll_by_position"]
    mixed = evaluate(model, tokenizer, tasks, options, corpus=corpus)
    assert list(mixed) == ["vqa", "wmt", "kv_retrieval", "text", "nll_by_position"]
    assert mixed["vqa"]["examples"] == 2 and 0.0 <= mixed["vqa"]["exact_match"] <= 100.0
    assert mixed["wmt"]["examples"] == 2 and "bleu" in mixed["wmt"]
    assert mixed["kv_retrieval"]["examples"] == 2 * 5 and "exact_match@len=128,pos=0.50" in mixed["kv_retrieval"]
    assert mixed["text"]["perplexity"] > 1.0 and mixed["text"]["documents"] == len(corpus.records("text", "test")[:2])
    assert mixed["nll_by_position"]["documents"] == 2 and "nll@ctx=64-127" in mixed["nll_by_position"]
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["task"] for r in lines] == ["vqa", "vqa", "wmt", "wmt"]  # long context and text write none
    # Each family alone, on the run directory: the same numbers.
    alone = {**evaluate_run(run_dir, ["vqa", "text"], EvalOptions(limit=2, progress=False), corpus=corpus),
             **evaluate_run(run_dir, ["wmt"], EvalOptions(limit=2, data_dir=str(data), progress=False)),
             **evaluate_run(run_dir, [KvRetrieval(spec=SPEC), "nll_by_position"],
                            EvalOptions(limit=2, lengths=(128,), progress=False))}
    assert alone == mixed
    table = format_results(mixed)
    assert "exact_match" in table and "bleu" in table and "| 128 |" in table and "nll@ctx=1 " in table


def test_format_results_prints_each_family_as_before():
    demo = {"vqa": {"exact_match": 50.0, "examples": 4}, "text": {"loss": 1.5, "perplexity": 4.48, "tokens": 900.0}}
    assert format_results(demo) == demo_sets.format_table(demo)
    assert "vqa      exact_match                 50.00" in format_results(demo)
    bench = {"mmlu": {"accuracy": 25.0, "examples": 3}}
    assert format_results(bench).splitlines()[2] == "mmlu  accuracy                25.00"
    long = {"nll_by_position": {"nll@ctx=1": 5.0, "documents": 2, "length": 32}}
    assert format_results({**bench, **long}).split("\n\n") == [
        format_results(bench), "nll_by_position: mean NLL (nats/token) by tokens of context\n"
        "  nll@ctx=1            5.000\n  documents            2\n  length               32"]
    mine = {"prepared": {"exact_match": 97.5, "examples": 40}}
    assert format_results({**demo, **mine}).split("\n\n")[1].splitlines()[2] == "prepared exact_match                 97.50"


def test_demo_sets_on_validation_read_validation_records(run, corpus, tmp_path):
    """What a recipe chooses on while it trains is validation; test is the final evaluation's."""
    _, model, tokenizer = run
    for split in ("validation", "test"):
        records = tmp_path / f"{split}.jsonl"
        tasks = [t for t in demo_sets.demo_sets(split=split) if t.name in ("asr", "text")]
        results = evaluate(model, tokenizer, tasks, EvalOptions(progress=False, records=str(records)), corpus=corpus)
        assert results["asr"]["examples"] == len(corpus.records("asr", split))
        assert results["text"]["documents"] == len(corpus.records("text", split))
        answers = {json.loads(line)["reference"] for line in records.read_text().splitlines()}
        assert answers == {r.meta["answer"] for r in corpus.records("asr", split)}
