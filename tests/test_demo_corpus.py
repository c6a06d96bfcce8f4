"""The demo corpus: a tiny build, held-out splits, determinism, caching, and the moving shapes."""

import json
import os

import numpy as np
import pytest

from gemini_jax.data.corpora import demo, demo_tasks, shapes, speech, stdlib_text
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.examples import Example

TINY = DemoSizes.tiny()
# Smaller still, for the tests that build more than once.
MICRO = DemoSizes(vqa_train=3, vqa_test=2, asr_train=4, asr_test=2, video_train=3, video_test=3, text_bytes=20_000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return DemoCorpus.build(tmp_path_factory.mktemp("cache"), sizes=TINY, progress=False)


def test_counts_match_sizes(corpus):
    expected = {
        ("vqa", "train"): TINY.vqa_train, ("vqa", "test"): TINY.vqa_test,
        ("asr", "train"): TINY.asr_train, ("asr", "test"): TINY.asr_test,
        ("video", "train"): TINY.video_train, ("video", "test"): TINY.video_test,
    }
    for (task, split), count in expected.items():
        examples = corpus.examples(task, split)
        if split == "train":  # the train file holds train and validation
            examples = examples + corpus.examples(task, "validation")
        assert len(examples) == count, (task, split)
        assert all(isinstance(e, Example) and e.task == task for e in examples)
        assert corpus.manifest["counts"][task][split] == count
    assert corpus.examples("text", "train") and corpus.examples("text", "test")
    assert set(corpus.manifest["timings_s"]) == set(demo.TASKS)


def test_vqa_examples_use_disjoint_images_of_the_wheel(corpus):
    images = {}
    for split in demo.READ_SPLITS:
        images[split] = set()
        for example in corpus.examples("vqa", split):
            user, model = example.contents
            assert user.role == "user" and [p.kind for p in user.parts] == ["image", "text"]
            assert model.parts[0].text in {"yes", "no", "circle", "rectangle", "triangle", "red", "green", "blue",
                                           "gray", "teal", "black", "yellow", "brown"}
            assert os.path.isfile(user.parts[0].image) and "easy_vqa" in user.parts[0].image
            images[split].add(os.path.realpath(user.parts[0].image))
    assert images["train"] and images["test"] and not images["train"] & images["test"]
    assert not images["validation"] & (images["train"] | images["test"])


def test_asr_test_texts_and_voice_are_held_out(corpus):
    train, test = corpus.records("asr", "train"), corpus.records("asr", "test")
    assert not {r.meta["answer"] for r in train} & {r.meta["answer"] for r in test}
    train_voices = {r.meta["voice"] for r in train}
    held_out = [r for r in test if r.meta["voice"] not in train_voices]
    assert held_out and set(demo_tasks.ASR_VOICES_HELD_OUT) & {r.meta["voice"] for r in held_out}
    assert len(held_out) < len(test)  # some unseen texts in voices train has heard
    assert {r.kind for r in train} == {"number", "digits", "phrase"}
    for record in train + test:
        user, model = record.example.contents
        assert [p.kind for p in user.parts] == ["audio", "text"] and user.parts[1].text == demo_tasks.ASR_PROMPT
        assert model.parts[0].text == record.meta["answer"] == record.meta["answer"].lower()
        samples, rate = speech.read_wav(user.parts[0].audio)
        assert rate == 16_000 and 0.2 < len(samples) / rate < 3.5


def test_asr_numbers_are_spoken_as_words(corpus):
    words_to_number = {speech.number_words(n): n for n in range(10_000)}
    numbers = [r for s in demo.READ_SPLITS for r in corpus.records("asr", s) if r.kind == "number"]
    assert numbers and all(r.meta["answer"] in words_to_number for r in numbers)
    for r in numbers:  # each number's split is the one its hash names
        split = "test" if demo.is_test(f"number:{words_to_number[r.meta['answer']]}") else "train"
        assert r in corpus.records("asr", split)


def test_asr_build_is_bit_identical_run_to_run(corpus, tmp_path):
    again = DemoCorpus.build(tmp_path, sizes=TINY, progress=False)
    assert again.root != corpus.root
    for split in demo.READ_SPLITS:
        for a, b in zip(corpus.examples("asr", split), again.examples("asr", split), strict=True):
            with open(a.contents[0].parts[0].audio, "rb") as fa, open(b.contents[0].parts[0].audio, "rb") as fb:
                assert fa.read() == fb.read()


def test_video_parameters_are_held_out_and_clips_reload(corpus):
    keys = {s: {json.dumps([r.meta["clip"], r.meta["params"]], sort_keys=True) for r in corpus.records("video", s)}
            for s in demo.READ_SPLITS}
    assert len(keys["train"]) + len(keys["validation"]) == TINY.video_train  # no duplicates
    assert len(keys["test"]) == TINY.video_test
    assert not keys["train"] & keys["test"] and not keys["validation"] & (keys["train"] | keys["test"])
    records = corpus.records("video", "test")
    kinds = {r.kind for r in records}
    assert {"direction", "size"} <= kinds <= {"direction", "order_first", "order_last", "size"}
    assert kinds & {"order_first", "order_last"}
    for r in records:  # order questions are labelled by what they ask
        if r.meta["clip"] == "Order":
            assert r.kind == "order_" + r.meta["prompt"].split()[-1].rstrip("?")
    record = corpus.records("video", "test")[0]
    frames = shapes.load_gif(record.example.contents[0].parts[0].video)
    assert frames.shape == (TINY.video_frames, TINY.video_size, TINY.video_size, 3)


def test_text_files_are_split_by_path(corpus):
    paths = {s: {r.meta["path"] for r in corpus.records("text", s)} for s in demo.READ_SPLITS}
    assert not paths["train"] & paths["test"] and not paths["validation"] & (paths["train"] | paths["test"])
    example = corpus.examples("text", "train")[0]
    assert example.raw_text and example.train_on == "all" and example.task == "text"
    for record in corpus.records("text", "train"):  # only a single over-long line may exceed the limit
        assert len(record.meta["text"]) <= stdlib_text.TEXT_CHUNK_CHARS or record.meta["text"].count("\n") <= 1


def test_validation_is_carved_from_train_by_hash(corpus):
    for task in demo.TASKS:
        train, validation = corpus.records(task, "train"), corpus.records(task, "validation")
        ids = {id(r.meta) for r in train}
        assert not any(id(r.meta) in ids for r in validation)
    # Every question about one image falls on the same side; so does every clip of one transcript.
    assert not {r.meta["image_id"] for r in corpus.records("vqa", "train")} & {
        r.meta["image_id"] for r in corpus.records("vqa", "validation")}
    assert not {r.meta["answer"] for r in corpus.records("asr", "train")} & {
        r.meta["answer"] for r in corpus.records("asr", "validation")}
    big = DemoCorpus.build(corpus.root.parent, sizes=TINY, progress=False)
    assert [r.meta for r in big.records("asr", "validation")] == [r.meta for r in corpus.records("asr", "validation")]


def test_tokenizer_corpus_reads_train_only(corpus):
    lines = list(corpus.tokenizer_corpus())
    text = "\n".join(lines)
    words = set(text.split())
    for task in ("vqa", "asr", "video"):
        for example in corpus.examples(task, "train"):
            assert set(example.contents[1].parts[0].text.split()) <= words
    held_out = [r for task in ("asr",) for split in ("validation", "test") for r in corpus.records(task, split)]
    assert held_out and not any(r.meta["prompt"] + r.meta["answer"] in lines for r in held_out)
    assert not any(r.meta["answer"] in lines for r in corpus.records("asr", "test"))
    assert corpus.records("text", "train")[0].meta["text"] in lines
    assert corpus.records("text", "test")[0].meta["text"] not in lines
    assert not any(r.meta["text"] in lines for r in corpus.records("text", "validation"))


def test_unknown_task_or_split_names_the_accepted_values(corpus):
    with pytest.raises(ValueError, match="vqa, asr, video, text"):
        corpus.examples("speech", "train")
    with pytest.raises(ValueError, match="train, validation, test"):
        corpus.examples("vqa", "dev")


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="asr_train"):
        DemoSizes(asr_train=-1)


def test_second_build_reuses_the_cache(corpus, monkeypatch):
    def must_not_build(**_):
        raise AssertionError("rebuilt a complete corpus")

    monkeypatch.setattr(demo, "_build_into", must_not_build)
    again = DemoCorpus.build(corpus.root.parent, sizes=TINY, progress=False)
    assert again.root == corpus.root and again.manifest == corpus.manifest


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def broken(**_):
        raise OSError("disk full")

    monkeypatch.setenv("GEMINI_JAX_CACHE", str(tmp_path))
    with monkeypatch.context() as patch:
        patch.setitem(demo_tasks.BUILDERS, "text", broken)  # the last task: everything else was written
        with pytest.raises(OSError, match="disk full"):
            DemoCorpus.build(sizes=MICRO, progress=False)
    assert list(tmp_path.iterdir()) == []  # no manifest, no corpus, no partial directory

    # A corpus directory without a manifest (say, from an older crash) is rebuilt, not trusted.
    stale = tmp_path / demo._subdir(MICRO)
    stale.mkdir()
    (stale / "asr-train.jsonl").write_text("half written")
    corpus = DemoCorpus.build(sizes=MICRO, progress=False)
    assert corpus.root == stale and (stale / demo.MANIFEST).is_file()
    assert len(corpus.examples("asr", "train")) == MICRO.asr_train


def test_default_sizes_live_in_demo_v1():
    assert demo._subdir(DemoSizes()) == f"demo-v{demo.VERSION}"
    assert demo._subdir(TINY).startswith(f"demo-v{demo.VERSION}-") and demo._subdir(TINY) != demo._subdir(MICRO)


# ---- shapes -------------------------------------------------------------------------------------


def test_gif_round_trip_keeps_every_frame_and_colour(tmp_path):
    clip = shapes.Order(
        first="circle", first_colour="red", second="square", second_colour="yellow", background="mint",
        ask_last=False, first_frame=1, second_frame=4, x1=8, y1=8, x2=20, y2=20, dx=1, dy=0, radius=3,
    )
    images = shapes.render(clip, frames=8, size=32)
    shapes.save_gif(tmp_path / "clip.gif", images)
    frames = shapes.load_gif(tmp_path / "clip.gif")
    assert frames.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(frames, shapes.to_array(images))
    mint, red, yellow = shapes.BACKGROUNDS["mint"], shapes.COLOURS["red"], shapes.COLOURS["yellow"]
    colours = [{tuple(c) for c in frame.reshape(-1, 3)} for frame in frames]
    assert colours[0] == {mint}  # frame 0 is empty, then one shape, then both
    assert colours[1] == colours[3] == {mint, red}
    assert colours[4] == colours[7] == {mint, red, yellow}
    # A square of radius 3 covers 7 x 7 pixels.
    assert int(np.all(frames[7] == yellow, axis=-1).sum()) == 49
    # On a background of any colour the clip draws the same shapes in the same places.
    dark = (20, 30, 40)
    on_dark = shapes.to_array(shapes.render(clip, frames=8, size=32, background=dark))
    np.testing.assert_array_equal(np.all(on_dark == dark, axis=-1), np.all(frames == mint, axis=-1))
    np.testing.assert_array_equal(on_dark[np.any(on_dark != dark, axis=-1)], frames[np.any(frames != mint, axis=-1)])


def _centre_and_area(frame: np.ndarray, background: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    ys, xs = np.nonzero(np.any(frame != background, axis=-1))
    return np.array([xs.mean(), ys.mean()]), len(xs)


@pytest.mark.parametrize("kind", ["direction", "size"])
def test_answers_agree_with_the_pixels(kind):
    rng = np.random.default_rng(1)
    for _ in range(60):
        clip = shapes.sample(rng, kind=kind, frames=8, size=32)
        frames = shapes.to_array(shapes.render(clip, frames=8, size=32))
        background = shapes.BACKGROUNDS[clip.background]
        (start, area_start), (end, area_end) = (_centre_and_area(frames[i], background) for i in (0, -1))
        if kind == "direction":
            dx, dy = end - start
            seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        else:
            seen = "bigger" if area_end > area_start else "smaller"
        assert seen == clip.answer(), clip
