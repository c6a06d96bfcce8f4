"""Question forms: every template question reads back into what it asks, and the suite's
paraphrases ask the same thing in words the templates never use."""

import easy_vqa
import numpy as np
import pytest

from gemini_jax.data.corpora import question_forms as qf
from gemini_jax.data.corpora.shapes import CLIP_TYPES, sample


def every_easy_vqa_question():
    return sorted(set(easy_vqa.get_train_questions()[0]) | set(easy_vqa.get_test_questions()[0]))


def test_every_template_question_reads_back_and_is_written_again():
    rng = np.random.default_rng(0)
    questions = every_easy_vqa_question()
    clips = [sample(np.random.default_rng(i), kind=kind, frames=8, size=32)
             for i in range(30) for kind in ("direction", "order", "size")]
    questions += sorted({clip.question() for clip in clips})
    assert len(questions) > 120  # 104 distinct easy-VQA questions, and the clips'
    for question in questions:
        meaning = qf.meaning(question)
        assert qf.ask(meaning, qf.ORIGINAL, rng) in questions
        for split in ("validation", "test"):  # every meaning has a held-out template in each split
            assert qf.ask(meaning, qf.HELD_OUT[split], rng)
    assert {type(c) for c in clips} == set(CLIP_TYPES)


@pytest.mark.parametrize(("question", "expected"), [
    ("is there not a red shape?", qf.Meaning("exists", colour="red", negated=True)),
    ("does the image contain a circle?", qf.Meaning("exists", shape="circle")),
    ("what is the color of the triangle?", qf.Meaning("colour", shape="triangle")),
    ("what is the blue shape?", qf.Meaning("shape", colour="blue")),
    ("what shape is present?", qf.Meaning("shape")),
    ("Which way does the red circle move?", qf.Meaning("direction", shape="circle", colour="red")),
    ("Which shape appears last?", qf.Meaning("last")),
])
def test_meanings(question, expected):
    assert qf.meaning(question) == expected


def test_a_question_outside_the_templates_is_refused_by_name():
    with pytest.raises(ValueError, match="'what is this' is not one of the demo's question templates"):
        qf.meaning("what is this")


def test_negation_keeps_its_sense_in_every_set():
    negated = qf.Meaning("exists", colour="red", negated=True)
    rng = np.random.default_rng(1)
    for templates in (qf.ORIGINAL, qf.HELD_OUT["validation"], qf.HELD_OUT["test"]):
        asked = {qf.ask(negated, templates, rng) for _ in range(50)}
        assert asked == {t.format(thing="red shape") for t in templates["exists", True]}


def test_held_out_paraphrases_are_new_questions_of_every_meaning():
    rng = np.random.default_rng(2)
    originals = {q.lower().rstrip("?") for q in every_easy_vqa_question()}
    for templates in qf.HELD_OUT.values():
        assert set(templates) == set(qf.ORIGINAL)
        for question in every_easy_vqa_question():
            asked = qf.ask(qf.meaning(question), templates, rng)
            assert asked.lower().rstrip("?.") not in originals


def test_surface_changes():
    assert qf.flip_first_case("what shape is this?") == "What shape is this?"
    assert qf.flip_first_case("Which way?") == "which way?"
    assert qf.drop_question_mark("is there a circle? ") == "is there a circle"
    assert qf.british("what color is the gray shape?") == "what colour is the grey shape?"
    assert qf.has_american_spelling("is there a gray circle?") and not qf.has_american_spelling("what shape?")


def test_training_and_held_out_paraphrases_never_share_a_template_and_cover_every_meaning():
    validation, test = qf.HELD_OUT["validation"], qf.HELD_OUT["test"]
    assert set(qf.TRAINING) == set(validation) == set(test) == set(qf.ORIGINAL)
    normal = lambda t: t.lower().rstrip("?.")  # noqa: E731 - the forms typed_form can make of a template
    for key in qf.ORIGINAL:
        training = {normal(qf.british(t)) for t in qf.TRAINING[key]} | {normal(t) for t in qf.TRAINING[key]}
        held_out = [{normal(qf.british(t)) for t in s[key]} | {normal(t) for t in s[key]} for s in (validation, test)]
        assert not training & held_out[0] and not training & held_out[1], key
        assert not held_out[0] & held_out[1], key
        assert not training & {normal(t) for t in qf.ORIGINAL[key]}, key


def test_training_paraphrases_keep_the_meaning():
    rng = np.random.default_rng(3)
    for question in every_easy_vqa_question():
        m = qf.meaning(question)
        asked = {qf.ask(m, qf.TRAINING, rng) for _ in range(30)}
        key = ("exists", m.negated) if m.ask == "exists" else (m.ask, m.ask == "shape" and m.colour is not None)
        thing = (m.shape or f"{m.colour} shape") if m.ask == "exists" else (m.shape or "shape")
        assert asked == {t.format(thing=thing, colour=m.colour, shape=m.shape) for t in qf.TRAINING[key]}


def test_typed_forms_vary_wording_spelling_case_and_question_mark_and_are_reproducible():
    question = "what shape is in the image?"
    forms = [qf.typed_form(question, f"key {i}") for i in range(1000)]
    assert forms == [qf.typed_form(question, f"key {i}") for i in range(1000)]
    plain = {"what shape is in the image?", "What shape is in the image?",
             "what shape is in the image", "What shape is in the image"}
    reworded = [f for f in forms if f not in plain]
    assert 0.25 < len(reworded) / len(forms) < 0.35
    templates = {t.lower().rstrip("?") for t in qf.TRAINING["shape", False]}
    assert {f.lower().rstrip("?") for f in reworded} == templates
    assert 0.4 < np.mean([f[0].isupper() for f in forms]) < 0.6
    assert 0.18 < np.mean([not f.endswith("?") for f in forms]) < 0.32
    british = [qf.typed_form("what color is the shape?", f"key {i}") for i in range(1000)]
    assert 0.2 < np.mean(["colour" in f for f in british]) < 0.4


def test_a_paraphrase_leaves_the_other_changes_as_they_were_drawn(monkeypatch):
    # The paraphrase has its own generator: case, question mark and spelling are drawn as without it.
    keys = [f"key {i}" for i in range(300)]
    forms = [qf.typed_form("what color is the circle?", k) for k in keys]
    monkeypatch.setattr(qf, "PARAPHRASE_RATE", 0.0)
    unworded = [qf.typed_form("what color is the circle?", k) for k in keys]
    assert sum(f != u for f, u in zip(forms, unworded)) > 60
    for f, u in zip(forms, unworded):
        reworded = not qf.british(f).lower().startswith("what colour is the circle")
        flipped = f[0].isupper() != reworded  # the training templates start with a capital, easy-VQA's not
        assert (flipped, "colour" in f) == (u[0].isupper(), "colour" in u)
        if not f.endswith("."):  # "Say the color of the circle." has no question mark to drop
            assert f.endswith("?") == u.endswith("?")


@pytest.mark.parametrize(("question", "answer", "expected"), [
    ("is there a red shape?", "yes", True), ("is there a red shape?", "no", False),
    ("is no circle present?", "no", True), ("is no circle present?", "yes", False),
    ("what color is the shape?", "red", None), ("Is there a red shape?", "yes", None),  # not a template
])
def test_about_present(question, answer, expected):
    assert qf.about_present(question, answer) is expected


def test_the_vqa_metrics_report_yes_no_apart_by_presence():
    from gemini_jax.data.corpora.demo import DemoRecord
    from gemini_jax.data.examples import Content, Example, Part
    from gemini_jax.evals.tasks.demo import Record, yes_no_by_presence

    asked = [("is there a red shape?", "yes", True), ("is there a blue shape?", "no", True),
             ("is there a green shape?", "no", False), ("is no circle present?", "no", False),
             ("what shape is present?", "circle", True)]
    records = [DemoRecord(Example(contents=(Content("user", (Part(text=q),)), Content("model", (Part(text=a),)))),
                          "yes/no", {"prompt": q, "answer": a}) for q, a, _ in asked]
    scored = [Record(task="vqa", prompt=q, output="", reference=a, correct=c) for q, a, c in asked]
    assert yes_no_by_presence(records, scored) == {"exact_match_yes/no_present": 50.0, "exact_match_yes/no_absent": 50.0}
