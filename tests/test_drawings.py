"""The drawing corpus: deterministic, its splits disjoint by content and by scene, its edits
changing exactly the one thing they ask for."""

import dataclasses

import numpy as np
import pytest

from gemini_jax.data.corpora import drawings
from gemini_jax.data.corpora.drawings import DrawingCorpus, DrawingSizes, Scene, load_png

SIZES = DrawingSizes(draw_train=60, edit_train=60, draw_validation=10, edit_validation=10, draw_test=20, edit_test=20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return DrawingCorpus.build(tmp_path_factory.mktemp("cache"), sizes=SIZES)


def test_every_split_has_its_sizes(corpus):
    for kind in drawings.KINDS:
        assert len(corpus.records(kind, "validation")) == SIZES.count(kind, "validation")
        assert len(corpus.records(kind, "test")) == SIZES.count(kind, "test")
        # Train loses only scenes equal to a held-out one (none at these sizes, at most a few ever).
        assert 0.9 * SIZES.count(kind, "train") <= len(corpus.records(kind, "train")) <= SIZES.count(kind, "train")


def test_splits_are_disjoint_by_content_and_by_scene(corpus):
    splits = ("train", "validation", "test")
    content = {s: {d.content_key for k in drawings.KINDS for d in corpus.records(k, s)} for s in splits}
    prompts = {s: {d.prompt for d in corpus.records("draw", s)} for s in splits}
    scenes = {s: {sc.key() for k in drawings.KINDS for d in corpus.records(k, s) for sc in (d.target, d.source) if sc}
              for s in splits}
    for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
        assert not content[a] & content[b] and not prompts[a] & prompts[b] and not scenes[a] & scenes[b]
    # The split is the hash's, not the order's: a held-out key is held out wherever it is drawn.
    assert all(drawings._split(key) == "test" for key in content["test"])


def test_no_training_picture_of_either_kind_is_a_held_out_one(monkeypatch):
    """With few possible scenes, pictures of the two kinds collide often; every train request with a
    picture (target or an edit's source) equal to any held-out picture is dropped."""
    monkeypatch.setattr(drawings, "BACKGROUNDS", drawings.BACKGROUNDS[:1])
    monkeypatch.setattr(drawings, "RADII", (16,))
    monkeypatch.setattr(drawings, "STEP", 16)  # 9 centres: 648 scenes in all
    planned = drawings.plan(DrawingSizes(draw_train=300, edit_train=300, draw_validation=20, edit_validation=20,
                                         draw_test=20, edit_test=20))
    scenes = {split: {scene.key() for r in planned[split] for scene in drawings._scenes(r)} for split in planned}
    assert not scenes["train"] & (scenes["validation"] | scenes["test"])
    assert 0 < len(planned["train"]) < 600  # some were dropped, not all


def test_the_build_is_deterministic(corpus, tmp_path):
    again = DrawingCorpus.build(tmp_path, sizes=SIZES)
    for split in ("train", "test"):
        first, second = corpus.records("edit", split)[:5], again.records("edit", split)[:5]
        assert [(d.prompt, d.target, d.source) for d in first] == [(d.prompt, d.target, d.source) for d in second]
        np.testing.assert_array_equal(corpus.images(split), again.images(split))


def test_edits_change_only_what_they_ask_for(corpus):
    for d in corpus.records("edit", "train") + corpus.records("edit", "test"):
        changed = {f.name for f in dataclasses.fields(Scene) if getattr(d.source, f.name) != getattr(d.target, f.name)}
        assert changed == {d.change}
        assert getattr(d.target, d.change) in d.prompt
        source, target = load_png(d.source_image), load_png(d.image)
        assert (source[0, 0] == target[0, 0]).all()  # the same background
    for d in corpus.records("draw", "test"):
        assert d.target.shape in d.prompt and d.target.colour in d.prompt and d.source is None


def test_an_edit_asks_for_its_source_in_a_training_prompt(corpus):
    """An edit's first request draws its source, in words a training drawing request uses: no
    held-out drawing prompt is ever part of a training conversation."""
    for d in corpus.records("edit", "train") + corpus.records("edit", "test"):
        assert d.source.shape in d.source_prompt and d.source.colour in d.source_prompt
        assert drawings._split(f"draw|{d.source_prompt}") == "train"


def test_examples_are_in_the_contents_format(corpus):
    draw, edit = corpus.records("draw", "test")[0], corpus.records("edit", "test")[0]
    user, model = draw.example.contents
    assert [p.kind for p in user.parts] == ["text"] and [p.kind for p in model.parts] == ["image"]
    first, source, request, model = edit.example.contents
    assert [t.role for t in edit.example.contents] == ["user", "model", "user", "model"]
    assert first.parts[0].text == edit.source_prompt and source.parts[0].image == str(edit.source_image)
    assert request.parts[0].text == edit.prompt and model.parts[0].image == str(edit.image)
    assert edit.example.train_on == "last"  # the conversation's first picture is context, not a target
    assert edit.request.contents == edit.example.contents[:3] and draw.request.contents == draw.example.contents[:1]
    assert edit.example.task == drawings.TASK and edit.example.group == edit.content_key
    assert load_png(edit.image).shape == (64, 64, 3)


def test_with_layout_each_reply_says_where_it_draws_before_its_picture(corpus):
    laid_out = DrawingCorpus(corpus.root, layout=True)
    draw = laid_out.records("draw", "test")[0]
    _, model = draw.example.contents
    assert [p.kind for p in model.parts] == ["text", "image"]
    assert model.parts[0].text == f"At {int(draw.target.x)}, {int(draw.target.y)}, size {draw.target.radius}."
    for split in ("validation", "test"):  # held out: the source reply as the model would have written it
        for d in laid_out.records("edit", split):
            first, source, request, reply = d.example.contents
            assert source.parts[0].text == drawings.layout_text(d.source) == reply.parts[0].text
            assert source.parts[1].image == str(d.source_image) and reply.parts[1].image == str(d.image)
    # In training a quarter of the sources come without it, chosen by the request, the same on every build.
    kept = [len(d.example.contents[1].parts) == 2 for d in laid_out.records("edit", "train")]
    assert 0.1 < 1 - np.mean(kept) < 0.45
    assert kept == [len(d.example.contents[1].parts) == 2
                    for d in DrawingCorpus(corpus.root, layout=True).records("edit", "train")]
    # Without layout the examples are as before.
    assert corpus.records("draw", "test")[0].example.contents[1].parts == (model.parts[1],)


def test_a_scene_draws_its_own_colour_and_refuses_unknown_names():
    scene = Scene("circle", "teal", (240, 240, 240), 32.0, 32.0, 10, 1.0)
    pixels = scene.pixels()
    assert tuple(pixels[32, 32]) == drawings.VQA_COLOURS["teal"] and tuple(pixels[2, 2]) == (240, 240, 240)
    with pytest.raises(ValueError, match="accepted shapes: circle, rectangle, triangle"):
        Scene("square", "teal", (240, 240, 240), 32.0, 32.0, 10, 1.0)
