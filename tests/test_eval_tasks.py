"""Benchmark loaders on their fixtures (tests/fixtures/evals), their errors on bad files, answer
extraction, and the CLI's task checks that need no model."""

import pytest
from evals_data import make_data_dir

from gemini_jax import cli
from gemini_jax.evals import leakfree_code
from gemini_jax.evals.tasks import TASKS, TaskDataError, get_task
from gemini_jax.evals.tasks import text as T
from gemini_jax.evals.tasks.runner import describe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


# (task, questions, shots in the pool, first item's golds, first item's label)
EXPECTED = {
    "mmlu": (3, 10, ("B",), 1), "gsm8k": (3, 2, ("70",), None), "math": (2, 0, ("\\frac{3}{4}",), None),
    "bbh": (2, 3, ("True",), None), "drop": (3, 0, ("21",), None),
    "hellaswag": (2, 0, ("starts pulling up roofing on a roof.",), 3), "wmt": (4, 0, ("Good morning.",), None),
    "vqav2": (2, 0, ("red", "red", "red", "dark red"), None), "textvqa": (1, 0, ("stop", "stop", "stop sign", "stop"), None),
    "docvqa": (1, 0, ("1 May 1999", "May 1, 1999"), None), "infographicvqa": (1, 0, ("40%",), None),
    "chartqa": (2, 0, ("12.5",), None), "ai2d": (1, 0, ("B",), 1), "mmmu": (2, 0, ("A",), 0),
    "mathvista": (3, 0, ("A",), 0),
    "asr_manifest": (2, 0, ("hello world",), None), "covost2": (2, 0, ("Hello everyone.",), None),
    "vatex": (2, 0, ("A red square moves to the left.", "A square slides left across the screen."), None), "videoqa": (1, 0, ("left", "to the left"), None),
    "humaneval": (164, 0, None, None),
    "leakfree_code": (len(leakfree_code.load_problems()), 0, None, None),  # built from the installed fontTools
}


def test_every_task_is_known_to_the_cli_and_tested():
    assert tuple(TASKS) == cli.BENCHMARK_TASKS
    assert set(EXPECTED) == set(TASKS)
    from gemini_jax.evals.tasks.demo import TASKS as DEMO

    assert cli.DEMO_TASKS == DEMO and not set(DEMO) & set(TASKS)
    from gemini_jax.evals.registry import TASKS as EVERY_TASK

    assert set(EVERY_TASK) == {*TASKS, *DEMO, *cli.ROBUSTNESS_TASKS, *cli.LONG_CONTEXT_TASKS, *cli.PREPARED_TASKS,
                               *cli.SAFETY_TASKS, *cli.IMAGE_GENERATION_TASKS}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_loader_reads_its_fixture(data, name):
    task = get_task(name)
    loaded = task.load(data / task.folder)
    count, shots, golds, label = EXPECTED[name]
    assert len(loaded.items) == count and len(loaded.shots) == shots
    first = loaded.items[0]
    if golds is not None:
        assert first.golds == golds
    assert first.label == label
    prompt = task.prompt(first, loaded.shots, min(task.default_shots, 1) if loaded.shots else 0)
    text = describe(prompt)
    assert text.strip()
    for item in loaded.items:  # media paths resolve to the generated files
        if not isinstance(item.prompt, str):
            media = [getattr(p, p.kind) for c in item.prompt.contents for p in c.parts if p.kind != "text"]
            assert media and all((data / m).is_file() for m in media)


def test_prompts_follow_the_published_formats(data):
    mmlu = get_task("mmlu")
    loaded = mmlu.load(data / "mmlu")
    logic = next(i for i in loaded.items if i.meta["subject"] == "logic")
    prompt = mmlu.prompt(logic, loaded.shots, 2)
    assert prompt.startswith("The following are multiple choice questions (with answers) about logic.\n\n")
    assert prompt.count("Answer:") == 3 and prompt.endswith("D. not q\nAnswer:")
    assert "astronomy" not in prompt and "Answer: A\n\nWhat is the negation" in prompt  # the subject's own shots
    gsm = get_task("gsm8k")
    g = gsm.load(data / "gsm8k")
    assert gsm.prompt(g.items[1], g.shots, 0) == ("Question: A shop sold 1,200 cups on Monday and 300 on Tuesday. "
                                                   "How many in all?\nAnswer:")
    assert g.items[1].golds == ("1500",)
    with pytest.raises(TaskDataError, match="3-shot prompts need 3 shots, but GSM8K train.jsonl has 2"):
        gsm.prompt(g.items[0], g.shots, 3)
    drop = get_task("drop").load(data / "drop")
    assert [i.golds for i in drop.items] == [("21",), ("Robbie Gould",), ("March 3 2009",)]
    assert get_task("hellaswag").load(data / "hellaswag").items[0].prompt == (
        "Roof shingle removal: A man is sitting on a roof. he")
    mmmu = get_task("mmmu").load(data / "mmmu").items
    kinds = [p.kind for p in mmmu[1].prompt.contents[0].parts]
    assert kinds == ["text", "image", "text", "image", "text"]  # "<image n>" places the images


def test_answer_extraction():
    assert T.gsm8k_number("so 3 + 4 = 7 apples.\n#### 7") == "7"
    assert T.gsm8k_number("It is 1,234.0 in the end") == "1234"
    assert T.gsm8k_number("no digits") is None
    assert T.math_answer("so $x = \\boxed{\\dfrac{1}{2}}$. Or \\boxed{\\frac{3}{4}}.") == "\\frac{3}{4}"
    assert T.math_answer("\\boxed{\\left( 1, 2 \\right)}") == "(1,2)"
    assert T.math_answer("no box") is None and T.last_boxed("\\boxed{unclosed") is None


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.parent


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"gsm8k/test.jsonl: no such file or directory \(expected GSM8K"):
        get_task("gsm8k").load(tmp_path / "gsm8k")
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(TaskDataError, match=r"mmlu/test: no files matching '\*_test.csv'"):
        get_task("mmlu").load(tmp_path / "mmlu")


@pytest.mark.parametrize("task, path, content, message", [
    ("gsm8k", "test.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": "q", \n',
     r"test.jsonl:2: malformed JSON line"),
    ("gsm8k", "test.jsonl", '\n{"question": "q"}\n', r"test.jsonl:2: missing field 'answer' \(expected a string\)"),
    ("gsm8k", "test.jsonl", '{"question": 3, "answer": "#### 1"}\n',
     r"test.jsonl:1: field 'question' is int 3, expected a string"),
    ("gsm8k", "test.jsonl", '{"question": "q", "answer": "no final"}\n', r"test.jsonl:1: field 'answer' has no '####"),
    ("gsm8k", "test.jsonl", '[1, 2]\n', r"test.jsonl:1: a line holds a list, expected a JSON object"),
    ("mmlu", "test/x_test.csv", "q,a,b,c,d,A\nq,a,b,c,d\n", r"x_test.csv:2: 5 columns, expected 6"),
    ("mmlu", "test/x_test.csv", "q,a,b,c,d,E\n", r"x_test.csv:1: column 'answer' is 'E', expected one of A, B, C, D"),
    ("hellaswag", "val.jsonl", '{"ctx": "c", "endings": ["a", "b"], "label": 5}\n',
     r"val.jsonl:1: field 'label' is 5, expected an index into the 2 endings"),
    ("hellaswag", "val.jsonl", '{"ctx": "c", "endings": "ab", "label": true}\n',
     r"val.jsonl:1: field 'label' is bool True, expected an integer or a string"),
    ("bbh", "t.json", '{"examples": [{"input": "x", "target": 1}]}', r"t.json: examples\[0\]: field 'target' is int"),
    ("bbh", "t.json", '{"examples": [', r"t.json: line 1: malformed JSON"),
    ("math", "test.jsonl", '{"problem": "p", "solution": "s"}\n', r"test.jsonl:1: field 'solution' has no \\boxed"),
    ("drop", "drop_dataset_dev.json", '{"p": {"passage": "x", "qa_pairs": [{"question": "q", "answer": {}}]}}',
     r"drop_dataset_dev.json: p: qa_pairs\[0\]: the answer has no number, date or spans"),
    ("wmt", "a.de-en.src", "one\ntwo\n", r"a.de-en.ref: no such file"),
    ("wmt", "a.de-en.tsv", "one\n", r"a.de-en.tsv:1: expected 'source<TAB>reference'"),
    ("chartqa", "test.json", '[{"imgname": "missing.png", "query": "q", "label": "1"}]',
     r"test.json: \[0\]: field 'imgname' names 'png/missing.png', but .* does not exist"),
    ("asr_manifest", "m.json", '{"audio_filepath": "a.wav"}\n', r"m.json:1: field 'audio_filepath' names 'a.wav'"),
    ("vqav2", "q_questions.json", '{"questions": []}', r"q_questions.json: missing field 'data_subtype'"),
    ("mmmu", "v.jsonl", '{"question": "q", "options": "[\'a\', \'b\']", "answer": "C"}\n',
     r"v.jsonl:1: field 'answer' is 'C', expected a letter among the 2 options"),
    ("mathvista", "t.json", '{"7": {"question": "q", "image": "missing.png", "answer": "1"}}',
     r"t.json: \['7'\]: field 'image' names 'missing.png', but .* does not exist"),
    ("mathvista", "t.json", '[1]', r"t.json: \[0\]: expected a problem object, got int"),
    ("vatex", "v.json", '[{"videoID": "nothere", "enCap": ["a"]}]', r"v.json: \[0\]: no clip for videoID 'nothere'"),
    ("vatex", "v.json", '{"videoID": "x"}', r"v.json: expected a list of \{videoID, enCap\}, got dict"),
    ("covost2", "covost_v2.fr_en.test.tsv", "path\tsentence\ttranslation\nmissing.wav\ts\tt\n",
     r"covost_v2.fr_en.test.tsv:2: field 'path' names 'clips/missing.wav'"),
    ("covost2", "covost_v2.fr_en.test.tsv", "path\tsentence\na.wav\ts\n", r"test.tsv:2: no 'translation'"),
    ("covost2", "covost_v2.french.tsv", "path\n", r"the name must be covost_v2.<src>_<tgt>.tsv"),
])
def test_bad_records_name_file_line_and_field(tmp_path, task, path, content, message):
    t = get_task(task)
    _write(tmp_path / t.folder / path, content)
    if task == "vqav2":
        _write(tmp_path / t.folder / "a_annotations.json", '{"annotations": []}')
    with pytest.raises(TaskDataError, match=message):
        t.load(tmp_path / t.folder)
    assert issubclass(TaskDataError, ValueError)


def test_cli_rejects_unknown_tasks_and_bad_options(capsys):
    # Mixing benchmarks, demo sets and long context is allowed (tests/test_eval_registry.py).
    assert cli.main(["eval", "--tasks", "mmlu,nope", "--checkpoint", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) nope" in err and "mmlu, gsm8k" in err and "vqa, asr" in err
    assert cli.main(["eval", "--tasks", "mmlu", "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples" in err and "must be 1 or more, got 0" in err  # refused while the flags are parsed


def test_cli_help_explains_every_eval_flag(capsys):
    try:
        assert cli.main(["eval", "--help"]) == 0
    except SystemExit as e:  # argparse's own exit, where main lets it through
        assert e.code == 0
    out = capsys.readouterr().out
    for flag in ("--tasks", "--data-dir", "--limit", "--output", "--records", "--shots", "--samples", "--checkpoint"):
        assert flag in out


def test_mathvista_reads_choices_as_letters_and_free_form_as_short_answers(data):
    task = get_task("mathvista")
    items = {item.id: item for item in task.load(data / "mathvista").items}
    assert items["1"].choices == ("A", "B") and items["1"].golds == ("A",) and items["1"].label == 0
    assert items["3"].golds == ("C",) and items["3"].label == 2  # "6" of 2, 4, 6, 8
    assert items["2"].choices == () and items["2"].golds == ("1000",)
    assert "\nC. 6\n" in describe(items["3"].prompt)


def test_covost2_reads_the_test_rows_as_translation_requests(data):
    items = get_task("covost2").load(data / "covost2").items
    assert [i.golds for i in items] == [("Hello everyone.",), ("Thank you very much.",)]  # the train row is left out
    assert "Translate this French speech into English." in describe(items[0].prompt)


def test_vatex_is_scored_by_cider_d_against_every_caption():
    from gemini_jax.evals import metrics
    from gemini_jax.evals.tasks.runner import _corpus_metrics

    task = get_task("vatex")
    golds = [("a red square moves left", "the square slides to the left"),
             ("a blue circle grows", "the circle gets bigger"),
             ("two shapes appear", "a triangle and a circle are shown")]
    second = ["The square slides to the left.", "The circle gets bigger!", "A triangle and a circle are shown."]
    score = _corpus_metrics(task, second, golds)["cider_d"]
    words = lambda t: " ".join(t.lower().replace(".", "").replace("!", "").split())  # noqa: E731
    assert score == pytest.approx(100 * metrics.cider_d([words(p) for p in second], [list(g) for g in golds]))
    first_only = 100 * metrics.cider_d([words(p) for p in second], [list(g[:1]) for g in golds])
    assert score > first_only and score > 100  # each matches a second caption exactly
