"""The robustness suite: each kind asks what its plain set asks, changed only in the way it
names, and its media lie outside the training ranges."""

import numpy as np
import pytest
from PIL import Image

from gemini_jax.data.corpora import question_forms as qf
from gemini_jax.data.corpora import shapes, speech
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.corpora.held_out import is_test
from gemini_jax.data.corpora.robustness import (KINDS, PRESENT_SHARE, TEXT_KINDS, VQA_COLOURS, RobustnessSuite,
                                                scene_question)

SIZES = {"images": 24, "clips": 9, "speech": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return DemoCorpus.build(tmp_path_factory.mktemp("cache"), sizes=DemoSizes.tiny(), progress=False)


@pytest.fixture(scope="module")
def suite(corpus):
    return RobustnessSuite.build(corpus, "test", sizes=SIZES)


def question(record):
    return record.meta["prompt"]


def answer(record):
    return record.meta["answer"]


def test_text_kinds_change_only_the_question(suite):
    for kind in TEXT_KINDS:
        changed, plain = suite.records(kind), suite.plain(kind)
        assert len(changed) == len(plain) > 0
        for c, p in zip(changed, plain):
            assert answer(c) == answer(p) and c.kind == p.kind and c.example.task == p.example.task
            assert [x for x in c.example.contents[0].parts if x.text is None] == \
                [x for x in p.example.contents[0].parts if x.text is None]
            assert c.example.contents[0].parts[-1].text == question(c) != question(p)
    case = suite.records("case")
    assert all(question(c) == qf.flip_first_case(question(p)) for c, p in zip(case, suite.plain("case")))
    assert all(not question(c).endswith("?") for c in suite.records("punctuation"))
    assert all("color" not in question(c) and "gray" not in question(c) for c in suite.records("spelling"))
    held_out = {t for options in qf.HELD_OUT[suite.split].values() for t in options}
    for c, p in zip(suite.records("paraphrase"), suite.plain("paraphrase")):
        m = qf.meaning(question(p))
        assert any(question(c) == t.format(thing=m.shape or (f"{m.colour} shape" if m.ask == "exists" else "shape"),
                                           shape=m.shape, colour=m.colour) for t in held_out)


def test_drawn_images_answer_their_questions_and_lie_outside_easy_vqa(suite):
    records = suite.records("images")
    assert len(records) == SIZES["images"] and {r.kind for r in records} <= {"yes/no", "shape", "color"}
    for r in records:
        shape, colour = r.meta["shape"], r.meta["colour"]
        m = qf.meaning(question(r))
        if m.ask == "colour":
            assert answer(r) == colour
        elif m.ask == "shape":
            assert answer(r) == shape
        else:
            there = (m.shape or shape) == shape and (m.colour or colour) == colour
            assert answer(r) == ("yes" if there != m.negated else "no")
        pixels = np.asarray(Image.open(r.example.contents[0].parts[0].image).convert("RGB")).astype(int)
        assert pixels.shape == (64, 64, 3)
        # Darker than easy-VQA's backgrounds (every channel >= 230), and the shape's colour is there.
        assert np.median(pixels[0], axis=0).max() < 200
        near = np.linalg.norm(pixels - VQA_COLOURS[colour], axis=-1) < 60
        area = near.sum()
        # Smaller than 95% of easy-VQA's shapes (38 pixels) or larger than all (961).
        assert area < 40 or area > 900, (question(r), area)


def test_drawn_clips_are_outside_the_training_ranges(suite):
    records = suite.records("clips")
    assert len(records) == SIZES["clips"]
    assert {r.kind for r in records} >= {"direction", "size"}
    for r in records:
        params = r.meta["params"]
        radii = [params[k] for k in ("radius", "radius_start", "radius_end") if k in params]
        # Training radii at 32 pixels: direction 5-8, order 4-5, growth 4-5 and 8-10.
        assert all(x < 4 or x > 10 for x in radii) or (r.kind == "direction" and all(x < 5 for x in radii))
        frames = shapes.load_gif(r.example.contents[0].parts[0].video)
        assert frames.shape == (8, 32, 32, 3)
        assert max(r.meta["background"]) <= 160
        assert answer(r) in {"left", "right", "up", "down", "bigger", "smaller", *shapes.SHAPES}


def test_spoken_numbers_are_test_numbers_at_unheard_rates_and_pitches(suite):
    records = suite.records("speech")
    assert len(records) == SIZES["speech"]
    words = {speech.number_words(n): n for n in range(10_000)}
    for r in records:
        assert is_test(f"number:{words[answer(r)]}")
        assert not 140 <= r.meta["rate"] <= 210 and not 35 <= r.meta["pitch"] <= 65
        samples, rate = speech.read_wav(r.example.contents[0].parts[0].audio)
        assert rate == speech.SAMPLE_RATE and len(samples) > 1000
    assert all(p.kind == "number" for p in suite.plain("speech"))


def test_the_suite_is_built_once_and_validation_is_apart(corpus, suite):
    again = RobustnessSuite.build(corpus, "test", sizes=SIZES)
    assert [question(r) for r in again.records("images")] == [question(r) for r in suite.records("images")]
    validation = RobustnessSuite.build(corpus, "validation", sizes=SIZES)
    assert validation.root != suite.root
    assert [answer(r) for r in validation.plain("paraphrase")] == \
        [answer(r) for r in corpus.records("vqa", "validation") + corpus.records("video", "validation")]
    # Each split asks its own held-out templates: no paraphrase of validation is worded as test's.
    assert not {question(r) for r in validation.records("paraphrase")} & {question(r) for r in suite.records("paraphrase")}
    with pytest.raises(ValueError, match="splits"):
        RobustnessSuite.build(corpus, "train")
    with pytest.raises(ValueError, match="accepted: case, punctuation"):
        suite.records("colour")
    assert set(KINDS) == {"case", "punctuation", "spelling", "paraphrase", "images", "clips", "speech"}


def test_drawn_images_are_asked_in_the_plain_sets_mix_of_questions():
    rng = np.random.default_rng(0)
    asked = [scene_question(rng, "circle", "red") for _ in range(4000)]
    kinds = [kind for _, _, kind in asked]
    assert abs(kinds.count("yes/no") / len(kinds) - 2 / 3) < 0.03
    present = [qf.about_present(q, a) for q, a, kind in asked if kind == "yes/no"]
    assert abs(sum(present) / len(present) - PRESENT_SHARE) < 0.03
    half = [qf.about_present(q, a) for q, a, kind in (scene_question(rng, "circle", "red", present_share=0.5)
                                                     for _ in range(2000)) if kind == "yes/no"]
    assert abs(sum(half) / len(half) - 0.5) < 0.05
