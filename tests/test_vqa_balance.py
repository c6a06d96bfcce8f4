"""Balanced yes/no training questions: a picture's colour is read from its pixels and its shape
from its questions; a share of the questions about something absent is asked about what the
picture holds, and every answer stays true of the picture."""

import collections

import easy_vqa
import numpy as np
import pytest
from PIL import Image

from gemini_jax.data.corpora import question_forms as qf
from gemini_jax.data.corpora import vqa_balance
from gemini_jax.data.corpora.demo import DemoRecord
from gemini_jax.data.corpora.demo_tasks import easy_vqa_data_dir
from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES, draw_scene
from gemini_jax.data.examples import Content, Example, Part


def record(question: str, answer: str, media: str = "a.png") -> DemoRecord:
    example = Example(contents=(Content("user", (Part(text=question),)), Content("model", (Part(text=answer),))))
    kind = "yes/no" if answer in ("yes", "no") else "shape" if answer in VQA_SHAPES else "color"
    return DemoRecord(example, kind, {"prompt": question, "answer": answer, "media": media})


@pytest.mark.parametrize("colour", list(VQA_COLOURS))
def test_a_drawn_shape_has_its_colour_read_back(colour):
    pixels = draw_scene(shape="triangle", fill=VQA_COLOURS[colour], background=(240, 235, 250), x=30, y=34, radius=9)
    assert vqa_balance.picture_colour(pixels) == colour


def test_the_colour_agrees_with_easy_vqa_answers():
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    pairs = [(paths[i], a) for q, a, i in zip(questions, answers, image_ids) if a in VQA_COLOURS][:200]
    assert len(pairs) == 200
    for path, answer in pairs:
        assert vqa_balance.picture_colour(np.asarray(Image.open(path).convert("RGB"))) == answer


def test_a_blank_picture_is_refused():
    with pytest.raises(ValueError, match="no pixel unlike its background"):
        vqa_balance.picture_colour(np.full((64, 64, 3), 200, np.uint8))


@pytest.mark.parametrize(("questions", "expected"), [
    ([("what shape is in the image?", "circle")], "circle"),
    ([("is there a triangle?", "yes")], "triangle"),
    ([("is there not a rectangle?", "no")], "rectangle"),
    ([("is there a circle?", "no"), ("does the image not contain a triangle?", "yes")], "rectangle"),
    ([("is there a circle?", "no")], None),  # two shapes left
    ([("is there a red shape?", "yes"), ("what color is the shape?", "red")], None),
])
def test_the_shape_its_questions_tell(questions, expected):
    assert vqa_balance.known_shape([record(q, a) for q, a in questions]) == expected


def test_scenes_read_every_picture_once():
    root = easy_vqa_data_dir()
    paths = sorted(p.relative_to(root).as_posix() for p in (root / "train" / "images").glob("*.png"))[:3]
    records = [record("what shape is in the image?", "circle", paths[0]), record("is there a red shape?", "no", paths[0]),
               record("is there a triangle?", "yes", paths[1]), record("is there a blue shape?", "no", paths[2])]
    scenes = vqa_balance.scenes(records, root)
    assert list(scenes) == paths
    assert [s.shape for s in scenes.values()] == ["circle", "triangle", None]
    assert all(s.colour in VQA_COLOURS for s in scenes.values())


def truth(question: str, scene: vqa_balance.Scene) -> str:
    m = qf.meaning(question)
    present = m.shape == scene.shape if m.shape is not None else m.colour == scene.colour
    return "yes" if present != m.negated else "no"


def test_absent_things_are_asked_about_as_often_as_present_ones_and_answers_stay_true():
    rng = np.random.default_rng(0)
    counts, changed = collections.Counter(), 0
    for i in range(4000):
        scene = vqa_balance.Scene(colour=str(rng.choice(list(VQA_COLOURS))), shape=str(rng.choice(VQA_SHAPES)))
        m = qf.Meaning("exists", negated=bool(rng.random() < 0.5),
                       **({"shape": str(rng.choice(VQA_SHAPES))} if rng.random() < 0.5
                          else {"colour": str(rng.choice(list(VQA_COLOURS)))}))
        if (m.shape or m.colour) in (scene.shape, scene.colour) and rng.random() < 0.75:
            continue  # about easy-VQA's share: four in five questions are about something absent
        question = qf.ask(m, qf.ORIGINAL, rng)
        asked, answer = vqa_balance.asked_about_present(question, truth(question, scene), scene,
                                                        np.random.default_rng([1, i]))
        assert answer == truth(asked, scene)
        assert qf.meaning(asked).negated == m.negated
        m2 = qf.meaning(asked)
        counts["present" if (answer == "yes") != m2.negated else "absent"] += 1
        changed += asked != question
    share = counts["present"] / counts.total()
    assert 0.4 < share < 0.6, counts
    assert changed > 0.25 * counts.total()


def test_other_questions_are_kept():
    scene = vqa_balance.Scene(colour="red", shape=None)
    rng = np.random.default_rng(0)
    for question, answer in [("what color is the shape?", "red"), ("what shape is present?", "circle"),
                             ("is there a red shape?", "yes"), ("is no red shape present?", "no")]:
        assert vqa_balance.asked_about_present(question, answer, scene, rng) == (question, answer)
    # A shape question is kept when the picture's shape is not known.
    for _ in range(20):
        assert vqa_balance.asked_about_present("is there a circle?", "no", scene, rng) == ("is there a circle?", "no")


@pytest.mark.parametrize(("question", "answer", "expected"), [
    ("is there a red shape?", "yes", True), ("is there a red shape?", "no", False),
    ("is no circle present?", "no", True), ("is no circle present?", "yes", False),
    ("what color is the shape?", "red", None), ("Is there a red shape?", "yes", None),  # not a template
])
def test_about_present(question, answer, expected):
    assert vqa_balance.about_present(question, answer) is expected


def test_the_vqa_metrics_report_yes_no_apart_by_presence():
    from gemini_jax.evals.tasks.demo import Record, yes_no_by_presence

    asked = [("is there a red shape?", "yes", True), ("is there a blue shape?", "no", True),
             ("is there a green shape?", "no", False), ("is no circle present?", "no", False),
             ("what shape is present?", "circle", True)]
    records = [record(q, a) for q, a, _ in asked]
    scored = [Record(task="vqa", prompt=q, output="", reference=a, correct=c) for q, a, c in asked]
    assert yes_no_by_presence(records, scored) == {"exact_match_yes/no_present": 50.0, "exact_match_yes/no_absent": 50.0}
