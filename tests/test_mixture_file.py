"""The mixture file: its schema, its stage arithmetic, and an error naming file and key for each mistake."""

import json

import pytest

from gemini_jax.data.mixture_file import MixtureError, load_mixture


@pytest.fixture
def data(tmp_path):
    """Two prepared-looking directories (a manifest is what marks one complete) and an unfinished one."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "test.jsonl").write_text("")
    return tmp_path


def write(folder, data, name="mix.json"):
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_weights_default_to_one_each(data):
    mixture = load_mixture(write(data, {"sources": {"a": {"path": "a"}, "b": "b"}}))
    assert [dict(s.weights) for s in mixture.stages] == [{"a": 1.0, "b": 1.0}]
    assert mixture.sources["a"].path == data / "a"
    assert mixture.stage_steps(10) == [10]


def test_yaml_stages_by_share_and_step(data):
    (data / "mix.yaml").write_text(
        "sources:\n  a: {path: a, seq_len: 64, batch_size: 4}\n  b: {path: b}\n"
        "stages:\n  - {until: 0.5, weights: {a: 1}}\n  - {until: 80, weights: {a: 1, b: 2}}\n"
        "  - {weights: {b: 1}}\nmetrics: [exact_match]\neval: {held: test.jsonl, other: b}\n")
    mixture = load_mixture(data / "mix.yaml")
    assert mixture.sources["a"].seq_len == 64 and mixture.sources["a"].batch_size == 4
    assert mixture.stage_steps(100) == [50, 30, 20]
    assert mixture.metrics == ("exact_match",)
    assert [(e.name, e.is_jsonl) for e in mixture.eval_sets] == [("held", True), ("other", False)]
    with pytest.raises(MixtureError, match="stages end at steps"):
        mixture.stage_steps(60)  # the step-80 boundary lies past the end


@pytest.mark.parametrize("mixture, message", [
    ({"sources": {"a": "a"}, "weights": {"c": 1}}, r"weights\.c: no source 'c'"),
    ({"sources": {"a": "a"}, "weights": {"a": -1}}, r"weights\.a: a weight is a finite number above 0"),
    ({"sources": {"a": "a"}, "weights": {"a": 0}}, r"weights\.a"),
    ({"sources": {"a": "a"}, "weights": {"a": float("nan")}}, r"weights\.a"),
    ({"sources": {"a": "missing"}}, r"sources\.a\.path: .*missing' does not exist"),
    ({"sources": {"a": "unfinished"}}, r"sources\.a\.path: .*no manifest\.json.*data prepare"),
    ({"sources": {"a": "a"}, "stages": [{"until": 0.5, "weights": {"a": 1}}, {"until": 0.4, "weights": {"a": 1}},
                                        {"weights": {"a": 1}}]}, "must increase"),
    ({"sources": {"a": "a"}, "stages": [{"weights": {"a": 1}}, {"weights": {"a": 1}}]}, r"stages\[0\]\.until"),
    ({"sources": {"a": "a"}, "metrics": ["bleu"]}, "metrics: expected a list of"),
    ({"sources": {"a": "a"}, "wieghts": {"a": 1}}, r"unknown key\(s\) \['wieghts'\]"),
    ({"sources": {"a": {"path": "a", "seqlen": 3}}}, r"sources\.a: unknown key\(s\) \['seqlen'\]"),
    ({"sources": {"a": {"path": "a", "seq_len": 0}}}, r"sources\.a\.seq_len: expected a positive integer"),
    ({"sources": {"a": "a"}, "eval": {"x": "nope.jsonl"}}, r"eval\.x: .* does not exist"),
    ({"sources": {"a": {"path": "a", "tasks": "vqa"}}}, r"sources\.a\.tasks: expected a list of names"),
    ({"sources": {"a": {"path": "a", "buckets": 0}}}, r"sources\.a\.buckets: expected a positive integer"),
    ({"sources": {"a": {"path": "a", "augment": "mixup"}}}, r"sources\.a\.augment: expected one of \['specaugment', 'image'\]"),
    ({"sources": {"a": {"path": "a", "cache": "yes"}}}, r"sources\.a\.cache: expected true or false"),
    ({"sources": {"a": "a"}, "eval_tasks": ["vqa", "mmlu_pro"]}, r"eval_tasks: unknown task\(s\) \['mmlu_pro'\]"),
    ({"sources": {"a": {"path": "a", "seq_len": 1.5}}}, r"sources\.a\.seq_len: .* or a share in \(0, 1\] of the run's"),
    ({"sources": {"a": {"path": "a", "batch_size": -2.0}}}, r"sources\.a\.batch_size: .* or a multiple of the run's"),
    ({"sources": {"a": {"path": "a", "packing": "rows"}}},
     r"sources\.a\.packing: expected one of \['documents', 'windows'\]"),
    ({"sources": {"a": {"path": "a", "packing": "windows", "buckets": 2}}},
     r"sources\.a\.buckets: does not apply to `packing: windows`"),
    ({"sources": {"a": {"path": "a", "queries": 4}}}, r"sources\.a\.queries: only a generated source"),
    ({"sources": {"a": "a", "g": {"generate": "sudoku", "filler": "a"}}},
     r"sources\.g\.generate: expected one of \['kv_retrieval'\]"),
    ({"sources": {"a": "a", "g": {"generate": "kv_retrieval", "filler": "a", "path": "a"}}},
     r"sources\.g\.path: a generated source is not read from disk"),
    ({"sources": {"a": "a", "g": {"generate": "kv_retrieval"}}}, r"sources\.g\.filler: expected the name of a text"),
    ({"sources": {"a": "a", "g": {"generate": "kv_retrieval", "filler": "z"}}},
     r"sources\.g\.filler: no source 'z' read from disk; those: \['a'\]"),
    ({"sources": {"a": "a", "g": {"generate": "kv_retrieval", "filler": "h"},
                  "h": {"generate": "kv_retrieval", "filler": "a"}}}, r"sources\.g\.filler: no source 'h' read from"),
])
def test_mistakes_name_file_and_key(data, mixture, message):
    path = write(data, mixture)
    with pytest.raises(MixtureError, match=message) as error:
        load_mixture(path)
    assert str(path) in str(error.value)


def test_source_options_and_eval_tasks(data):
    mixture = load_mixture(write(data, {
        "sources": {"a": {"path": "a", "tasks": ["vqa:shape"], "buckets": 2, "augment": "specaugment", "cache": True},
                    "b": "b"},
        "eval_tasks": ["vqa", "text"]}))
    a, b = mixture.sources["a"], mixture.sources["b"]
    assert (a.tasks, a.buckets, a.augment, a.cache) == (("vqa:shape",), 2, "specaugment", True)
    assert (b.tasks, b.buckets, b.augment, b.cache) == (None, 1, None, None)
    assert mixture.eval_tasks == ("vqa", "text")


def test_relative_shapes_packing_and_generated_sources(data):
    (data / "mix.yaml").write_text(
        "sources:\n  text: {path: a, packing: windows, seq_len: 1.0}\n"
        "  short: {generate: kv_retrieval, filler: text, seq_len: 0.5, batch_size: 2.0, queries: 8}\n"
        "  full: {generate: kv_retrieval, filler: text, seq_len: 256}\n"
        "stages:\n  - {until: 0.75, weights: {short: 1}}\n  - {weights: {full: 1}}\n")
    mixture = load_mixture(data / "mix.yaml")
    text, short, full = mixture.sources.values()
    assert (text.path, text.packing, text.seq_len, text.generate) == (data / "a", "windows", 1.0, None)
    assert (short.path, short.generate, short.filler, short.seq_len, short.batch_size, short.queries) == (
        None, "kv_retrieval", "text", 0.5, 2.0, 8)
    assert (full.seq_len, full.batch_size, full.queries) == (256, None, None)  # an integer is tokens
    assert mixture.stage_steps(8) == [6, 2]  # `text`, in no stage, fills but is not trained on


def test_paths_may_be_relative_to_another_folder(data, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("mixtures")
    path = write(elsewhere, {"sources": {"a": "a"}})
    with pytest.raises(MixtureError, match="does not exist"):
        load_mixture(path)
    assert load_mixture(path, base=data).sources["a"].path == data / "a"


def test_a_short_run_may_round_a_stage_to_no_steps(data):
    mixture = load_mixture(write(data, {"sources": {"a": "a", "b": "b"}, "stages": [
        {"until": 0.09, "weights": {"a": 1}}, {"until": 0.18, "weights": {"b": 1}}, {"weights": {"a": 1}}]}))
    assert mixture.stage_steps(6) == [0, 1, 5]


def test_unknown_extension_and_missing_file(data):
    with pytest.raises(MixtureError, match="does not exist"):
        load_mixture(data / "none.yaml")
    with pytest.raises(MixtureError, match=".yaml, .yml or .json"):
        load_mixture(write(data, {}, name="mix.toml"))


def test_eval_tasks_are_scored_on_validation_while_training_and_on_test_at_the_end(data):
    from gemini_jax.recipes.custom import evaluation_sets

    mixture = load_mixture(write(data, {"sources": {"a": "a"}, "eval_tasks": ["vqa", "text"]}))
    quick, final = evaluation_sets(mixture, {})
    assert [(t.name, t.split) for t in quick] == [("vqa", "validation"), ("text", "validation")]
    assert [(t.name, t.split) for t in final] == [("vqa", "test"), ("text", "test")]
