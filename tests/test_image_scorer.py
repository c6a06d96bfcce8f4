"""The image scorer: its word features, its training batches' answers, training on a known
answer, choosing among samples, and its checkpoint."""

import numpy as np
import pytest
from flax import nnx

from gemini_jax.checkpoint import CheckpointError
from gemini_jax.config import ConfigError
from gemini_jax.data.corpora.drawings import DrawingCorpus, DrawingSizes
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.model.image_scorer import (ImageScorer, ImageScorerConfig, choose, hashed_words, load_image_scorer,
                                           request_of, save_image_scorer, words_and_pairs)
from gemini_jax.train import image_scorer as training

SMALL = ImageScorerConfig(word_buckets=256, widths=(8, 8), width=32)
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _solid(colour: str) -> np.ndarray:
    return np.broadcast_to(np.array(COLOURS[colour], np.uint8), (64, 64, 3)).copy()


def test_word_pairs_keep_the_order_of_a_change():
    assert words_and_pairs("Change the Circle into a triangle.")[-2:] == ["into a", "a triangle"]
    one, other = hashed_words(["circle into a triangle", "triangle into a circle"], 4096)
    assert one.sum() == other.sum() == 7 and not np.array_equal(one, other)
    assert np.array_equal(hashed_words(["Make it red"], 64), hashed_words(["make IT red!"], 64))


def test_a_bad_config_is_refused():
    with pytest.raises(ConfigError, match="multiple of pool"):
        ImageScorerConfig(image_size=60)
    with pytest.raises(ConfigError, match="widths"):
        ImageScorerConfig(widths=())


def test_training_batches_say_which_candidates_answer_which_request(tmp_path):
    corpus = DrawingCorpus.build(tmp_path, sizes=DrawingSizes(draw_train=40, edit_train=40, draw_validation=2,
                                                              edit_validation=2, draw_test=2, edit_test=2))
    pairs = training.corpus_pairs(corpus, "train")
    index = np.arange(len(pairs))[:32]
    index[16:] = np.flatnonzero(pairs.has_source)[:16]  # drawings, then edits
    batch = training._batch(pairs, index, np.random.default_rng(0), 64)
    answers, n = batch["answers"], len(index)
    assert answers.shape == (n, 3 * n) and answers[np.arange(n), np.arange(n)].all()  # its own target always
    edits = np.flatnonzero(batch["has_source"])
    assert len(edits) == 16
    assert not answers[edits, n + edits].any()  # the source picture: the edit not made
    assert not answers[edits, 2 * n + edits].any()  # the target moved: the place not kept
    assert not answers[:, n:][:, ~np.concatenate([batch["has_source"]] * 2)].any()  # no drawing's columns there
    kinds = pairs.target_shown.kind[index]
    drawings = np.flatnonzero(~batch["has_source"])
    for i in drawings:  # a drawing is answered by any target of its shape and colour, wherever it is
        assert np.array_equal(answers[i, :n], kinds == kinds[i])


def test_a_scorer_learns_colours_and_chooses_the_asked_one(tmp_path):
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    asked = [names[i] for i in rng.integers(0, 3, 96)]
    pairs = training.Pairs(
        instructions=[f"Draw a {c} circle." for c in asked], sources=np.zeros((96, 64, 64, 3), np.uint8),
        has_source=np.zeros(96, bool), targets=np.stack([_solid(c) for c in asked]),
        target_shown=training.Shown(np.array([names.index(c) for c in asked]), np.zeros((96, 3), int)),
        source_shown=training.Shown(np.full(96, -1), np.full((96, 3), -1)))
    model = ImageScorer(SMALL, rngs=nnx.Rngs(0))
    history = training.train(model, pairs, training.ScorerSettings(steps=60, batch_size=16, learning_rate=3e-3,
                                                                   warmup_steps=5, progress=False))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    save_image_scorer(model, tmp_path / "scorer", report={"steps": 60})
    loaded = load_image_scorer(tmp_path / "scorer")
    candidates = [_solid(c) for c in names]
    picks = choose(loaded, [f"Draw a {c} circle." for c in names], [None] * 3, [candidates, candidates, candidates])
    assert picks == [0, 1, 2]
    # A missing picture is never chosen while there is one.
    assert choose(loaded, ["Draw a red circle."], [None], [[None, _solid("blue")]]) == [1]
    assert choose(loaded, ["Draw a red circle."], [None], [[None, None]]) == [0]


def test_a_saved_scorer_is_checked_when_loaded(tmp_path):
    with pytest.raises(CheckpointError, match="image-scorer train"):
        load_image_scorer(tmp_path)
    save_image_scorer(ImageScorer(SMALL, rngs=nnx.Rngs(0)), tmp_path / "s")
    (tmp_path / "s" / "image_scorer.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_image_scorer(tmp_path / "s")


def test_what_the_scorer_reads_of_a_request():
    picture = _solid("green")
    edit = Example(contents=(Content("user", (Part(text="Draw a green circle."),)),
                             Content("model", (Part(image=picture),)),
                             Content("user", (Part(text="Make the shape red."),))))
    text, source = request_of(edit)
    assert text == "Make the shape red." and np.array_equal(source, picture)
    assert request_of(Example(contents=(Content("user", (Part(text="Draw a red circle."),)),))) == (
        "Draw a red circle.", None)


def test_a_run_made_from_another_keeps_its_image_scorer(tmp_path):
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR, IMAGE_TOKENIZER_DIR, copy_image_tokenizer

    source, out = tmp_path / "run", tmp_path / "quantized"
    (source / IMAGE_TOKENIZER_DIR).mkdir(parents=True)
    (source / IMAGE_TOKENIZER_DIR / "image_tokenizer.json").write_text("{}")
    copy_image_tokenizer(source, out)
    assert not (out / IMAGE_SCORER_DIR).exists()  # a run without one
    save_image_scorer(ImageScorer(SMALL, rngs=nnx.Rngs(0)), source / IMAGE_SCORER_DIR)
    copy_image_tokenizer(source, out)
    assert load_image_scorer(out / IMAGE_SCORER_DIR).config == SMALL
    assert (out / IMAGE_TOKENIZER_DIR / "image_tokenizer.json").is_file()


def test_the_command_explains_itself_and_refuses_what_is_not_a_run(tmp_path, capsys):
    from gemini_jax.cli import main

    assert main(["image-scorer", "train", "--help"]) == 0
    assert "RUN/image_scorer/" in capsys.readouterr().out
    assert main(["image-scorer", "train", "--run", str(tmp_path / "nowhere")]) == 2
    assert "gemini-jax image-scorer: error:" in capsys.readouterr().err
