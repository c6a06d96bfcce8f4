"""Example encoding (chat template, placeholders, spans, loss mask) and the grain pipeline."""

import dataclasses
import inspect
import textwrap

import numpy as np
import pytest
import soundfile
from PIL import Image

from gemini_jax import batch as B
from gemini_jax.config import PRESETS
from gemini_jax.data import pipeline as P
from gemini_jax.data.encode import EncodeError, encode_document, encode_example
from gemini_jax.data.examples import Audio, Content, Example, Part, text_document
from gemini_jax.data.tokenizer import train_tokenizer

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=500)  # test preset, a vocabulary the tokenizer fits


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    return train_tokenizer(corpus, vocab_size=500, path=tmp_path_factory.mktemp("tok") / "t.model")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / "wide.png")
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    frames[0].save(root / "clip.gif", save_all=True, append_images=frames[1:], duration=40)
    soundfile.write(root / "speech.wav", np.zeros(4000, np.float32), 16_000)  # 0.25 s
    return root


def chat(*turns, **kwargs):
    return Example(contents=[Content(role, parts) for role, parts in turns], **kwargs)


def test_template_tokens_and_loss_mask(tok):
    ex = chat(("user", [Part(text="Hi")]), ("model", [Part(text="A red circle.")]))
    row = encode_example(ex, tokenizer=tok, config=CONFIG)
    e = tok.encode
    sot, eot = tok.start_of_turn_id, tok.end_of_turn_id
    rendered = [tok.bos_id, sot, *e("user\n"), *e("Hi"), eot, *e("\n"),
                sot, *e("model\n"), *e("A red circle."), eot, *e("\n")]
    np.testing.assert_array_equal(row["tokens"], rendered[:-1])
    np.testing.assert_array_equal(row["targets"], rendered[1:])
    # Loss exactly on the model's words and its stop token.
    counted = row["targets"][row["loss_mask"] == 1]
    np.testing.assert_array_equal(counted, [*e("A red circle."), eot])
    np.testing.assert_array_equal(row["positions"], np.arange(len(rendered) - 1))
    assert row["segment_ids"].tolist() == [1] * (len(rendered) - 1)
    assert not row["media_spans"].any()
    assert set(row) == set(B.TEXT_KEYS)


def test_multi_turn_masks_score_the_model_turns_or_the_last_one(tok, files):
    ex = chat(("user", [Part(image=str(files / "wide.png")), Part(text="Hi")]), ("model", [Part(text="A red circle.")]),
              ("user", [Part(text="And?")]), ("model", [Part(text="A blue square.")]))
    e, eot = tok.encode, tok.end_of_turn_id
    row = encode_example(ex, tokenizer=tok, config=CONFIG)
    np.testing.assert_array_equal(row["targets"][row["loss_mask"] == 1], [*e("A red circle."), eot, *e("A blue square."), eot])
    assert not row["loss_mask"][row["tokens"] == CONFIG.image_token_id].any()  # media is read, never scored
    last = encode_example(dataclasses.replace(ex, train_on="last"), tokenizer=tok, config=CONFIG)
    np.testing.assert_array_equal(last["tokens"], row["tokens"])
    np.testing.assert_array_equal(last["targets"][last["loss_mask"] == 1], [*e("A blue square."), eot])
    # The golden mask: 1 from the last reply's first token to its <end_of_turn>, 0 elsewhere.
    start = len(row["targets"]) - 1 - len(e("A blue square.")) - 1  # then <end_of_turn>, then "\n" (unscored)
    expected = np.zeros(len(row["targets"]), np.float32)
    expected[start:start + len(e("A blue square.")) + 1] = 1
    np.testing.assert_array_equal(last["loss_mask"], expected)


def test_train_on_all_and_raw_text(tok):
    ex = chat(("user", [Part(text="Hi")]), ("model", [Part(text="Yo")]), train_on="all")
    row = encode_example(ex, tokenizer=tok, config=CONFIG)
    assert row["loss_mask"].all()
    doc = encode_example(text_document("a blue square"), tokenizer=tok, config=CONFIG)
    np.testing.assert_array_equal(doc["tokens"], [tok.bos_id, *tok.encode("a blue square")])
    np.testing.assert_array_equal(doc["targets"], [*tok.encode("a blue square"), tok.eos_id])
    assert doc["loss_mask"].all()
    packed_doc = encode_document("a blue square", tokenizer=tok)
    np.testing.assert_array_equal(packed_doc["targets"], doc["targets"])


def test_media_placeholders_spans_and_arrays(tok, files):
    vision, audio = CONFIG.vision, CONFIG.audio
    ex = chat(
        ("user", [Part(image=str(files / "wide.png")), Part(text="and"), Part(video=str(files / "clip.gif")),
                  Part(audio=str(files / "speech.wav")), Part(image=np.zeros((4, 4, 3), np.uint8))]),
        ("model", [Part(text="A red circle.")]),
    )
    row = encode_example(ex, tokenizer=tok, config=CONFIG)
    tokens, spans = row["tokens"], row["media_spans"]
    num_frames = vision.num_frames  # the 5-frame GIF gives 3 sampled frames
    audio_tokens = audio.num_soft_tokens(4000)
    assert (tokens == CONFIG.image_token_id).sum() == 2 * vision.image_soft_tokens
    assert (tokens == CONFIG.frame_token_id).sum() == num_frames * vision.frame_soft_tokens
    assert (tokens == CONFIG.audio_token_id).sum() == audio_tokens
    # Spans: image, 3 frames, audio, image, numbered in order, each covering exactly its placeholders.
    sizes = [vision.image_soft_tokens, *[vision.frame_soft_tokens] * num_frames, audio_tokens, vision.image_soft_tokens]
    assert [int((spans == s).sum()) for s in range(1, 7)] == sizes
    assert spans.max() == 6
    placeholders = [CONFIG.image_token_id, CONFIG.frame_token_id, CONFIG.audio_token_id]
    np.testing.assert_array_equal(spans > 0, np.isin(tokens, placeholders))
    media_targets = np.isin(row["targets"], placeholders + list(range(9, 15)))  # placeholders and markers
    assert media_targets.sum() > 0 and row["loss_mask"][media_targets].sum() == 0
    # Arrays: 20x30 in 12 patches -> sqrt(8) = 2.8 rows x sqrt(18) = 4.2 columns -> 2x4; 4x4 -> 3x3; padded to 12.
    assert row["image_patches"].shape == (2, vision.max_patches, vision.patch_dim)
    assert row["image_patch_mask"].sum(axis=1).tolist() == [8, 9]
    assert row["frame_patches"].shape == (num_frames, vision.frame_max_patches, vision.patch_dim)
    assert row["audio_mels"].shape == (1, audio.num_mel_frames(4000), audio.num_mels)
    assert row["audio_mel_mask"].all()
    np.testing.assert_allclose(row["image_patches"][0, :8], 200 / 127.5 - 1, atol=1e-5)
    assert not row["image_patches"][0, 8:].any()


def test_generation_prompt(tok):
    ex = chat(("user", [Part(text="Hi")]))
    row = encode_example(ex, tokenizer=tok, config=CONFIG, for_generation=True)
    assert "targets" not in row and "loss_mask" not in row
    tail = [tok.start_of_turn_id, *tok.encode("model\n")]
    np.testing.assert_array_equal(row["tokens"][-len(tail):], tail)
    assert row["tokens"][-len(tail) - 2] == tok.end_of_turn_id


def test_too_long_and_unsupported_examples(tok):
    ex = chat(("user", [Part(text="word " * 100)]), task="vqa")
    with pytest.raises(EncodeError, match=r"task 'vqa'.*prompt is \d+ tokens; at most 20 fit here \(a row's length; the model's context is 256\)"):
        encode_example(ex, tokenizer=tok, config=CONFIG, max_len=20, for_generation=True)
    with pytest.raises(EncodeError, match=r"is \d+ tokens; the model's context is 256"):
        encode_example(chat(("user", [Part(text="word " * 300)])), tokenizer=tok, config=CONFIG)
    image = chat(("user", [Part(image=np.zeros((4, 4, 3), np.uint8))]))
    with pytest.raises(EncodeError, match="no vision encoder"):
        encode_example(image, tokenizer=tok, config=CONFIG.text_only)
    with pytest.raises(EncodeError, match="vocab_size is 97"):
        encode_example(image, tokenizer=tok, config=PRESETS["test"])


# --- pipeline ----------------------------------------------------------------------------------


def qa_examples(files, n=12):
    out = []
    for i in range(n):
        parts = [Part(text=f"question {i}")] if i % 3 else [Part(image=str(files / "wide.png")), Part(text=f"q{i}")]
        out.append(chat(("user", parts), ("model", [Part(text=f"answer {i}")]), task="qa"))
    return out


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def make_batches(tok, files, seed, **kwargs):
    source = P.encoded_source(qa_examples(files), tokenizer=tok, config=CONFIG, max_len=48)
    return P.batched(source, batch_size=4, seq_len=48, seed=seed, config=CONFIG, max_images=1, **kwargs)


def test_batches_have_fixed_shapes(tok, files):
    batches = take(iter(make_batches(tok, files, seed=0)), 5)
    vision = CONFIG.vision
    for batch in batches:
        assert {k: v.shape for k, v in batch.items()} == {
            **{k: (4, 48) for k in B.TEXT_KEYS},
            "image_patches": (4, 1, vision.max_patches, vision.patch_dim),
            "image_coords": (4, 1, vision.max_patches, 2),
            "image_patch_mask": (4, 1, vision.max_patches),
        }
        real = batch["segment_ids"] > 0
        assert not batch["loss_mask"][~real].any() and not batch["tokens"][~real].any()
        # A row holds an image exactly when its tokens hold image placeholders.
        has_image = (batch["tokens"] == CONFIG.image_token_id).any(axis=1)
        np.testing.assert_array_equal(batch["image_patch_mask"].any(axis=(1, 2)), has_image)


def test_batches_are_deterministic_and_resumable(tok, files):
    first = take(iter(make_batches(tok, files, seed=7)), 6)
    assert_same_batches(first, take(iter(make_batches(tok, files, seed=7)), 6))
    other = take(iter(make_batches(tok, files, seed=8)), 6)
    assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))

    it = iter(make_batches(tok, files, seed=7))
    take(it, 4)  # beyond the first epoch of 12 examples
    state = it.get_state()
    expected = take(it, 3)
    resumed = iter(make_batches(tok, files, seed=7))
    resumed.set_state(state)
    assert_same_batches(take(resumed, 3), expected)


def test_one_epoch_keeps_every_example_in_a_fixed_shape(tok, files):
    batches = list(make_batches(tok, files, seed=0, shuffle=False, num_epochs=1, drop_remainder=False))
    assert [b["tokens"].shape for b in batches] == [(4, 48)] * 3
    source = P.encoded_source(qa_examples(files, n=10), tokenizer=tok, config=CONFIG, max_len=48)
    batches = list(P.batched(source, batch_size=4, seq_len=48, seed=0, shuffle=False, num_epochs=1,
                             drop_remainder=False, config=CONFIG, max_images=1))
    assert [b["tokens"].shape for b in batches] == [(4, 48)] * 3
    assert (batches[-1]["segment_ids"].any(axis=1)).tolist() == [True, True, False, False]
    np.testing.assert_array_equal(batches[0]["tokens"][0, :20], source[0]["tokens"][:20])


def test_a_transform_runs_once_per_record_from_its_index(tok, files):
    calls = []

    def mark(row, rng):
        calls.append(1)
        return {**row, "mark": np.float32(rng.random())}

    for cache in (True, False):
        calls.clear()
        source = P.encoded_source(qa_examples(files, n=4), tokenizer=tok, config=CONFIG, max_len=48,
                                  cache_rows=cache, transform=mark, seed=3)
        first, again = [source[i]["mark"] for i in range(4)], [source[i]["mark"] for i in range(4)]
        assert len(calls) == (4 if cache else 8)
        assert first == again and len(set(first)) == 4  # the same on every read; each record its own draw
        other = P.encoded_source(qa_examples(files, n=4), tokenizer=tok, config=CONFIG, max_len=48,
                                 transform=mark, seed=4)
        assert [other[i]["mark"] for i in range(4)] != first


def test_bad_records_are_skipped_and_counted(tok, files):
    examples = qa_examples(files, n=8)
    examples[2] = chat(("user", [Part(image=str(files / "missing.png"))]), ("model", [Part(text="x")]))
    examples[5] = chat(("user", [Part(text="word " * 200)]), ("model", [Part(text="x")]))  # too long
    examples[6] = chat(("user", [Part(text="Hi")]), ("model", [Part(text="x")]), ("user", [Part(text="And?")]))
    source = P.encoded_source(examples, tokenizer=tok, config=CONFIG, max_len=48, error_budget=3)
    batches = list(P.batched(source, batch_size=2, seq_len=48, seed=0, shuffle=False, num_epochs=2, config=CONFIG,
                             max_images=1))
    assert len(batches) == 8  # 8 records x 2 epochs, 2 a batch
    real_rows = sum(int(b["segment_ids"].any(axis=1).sum()) for b in batches)
    assert real_rows == 10  # each epoch, the 3 bad records are padding rows (no tokens, no loss)
    assert all(b["loss_mask"][~b["segment_ids"].any(axis=1)].sum() == 0 for b in batches)
    assert source.errors.count == 3  # distinct records, not visits
    assert any("missing.png" in m for m in source.errors.first)
    assert any("at most 48 fit here" in m for m in source.errors.first)
    assert any("ends on a user turn" in m for m in source.errors.first)  # nothing to train on

    strict = P.encoded_source(examples, tokenizer=tok, config=CONFIG, max_len=48, error_budget=1)
    # Grain reads records in threads: the budget trips at the second or the third bad record.
    with pytest.raises(P.DataError, match=r"[23] bad records exceed error_budget=1.*missing.png"):
        list(P.batched(strict, batch_size=2, seq_len=48, seed=0, shuffle=False, num_epochs=1, config=CONFIG,
                       max_images=1))


def test_rows_beyond_the_declared_slots_are_refused(tok, files):
    source = P.encoded_source(qa_examples(files), tokenizer=tok, config=CONFIG, max_len=48)
    with pytest.raises(P.DataError, match="set max_images"):
        list(P.batched(source, batch_size=2, seq_len=48, seed=0, shuffle=False, num_epochs=1))


def test_cached_rows_are_reused(tok, files):
    source = P.encoded_source(qa_examples(files), tokenizer=tok, config=CONFIG, cache_rows=True)
    assert source[0] is source[0]
    plain = P.encoded_source(qa_examples(files), tokenizer=tok, config=CONFIG)
    np.testing.assert_array_equal(plain[0]["image_patches"], source[0]["image_patches"])


DOCS = ["a red circle. " * 9, "a blue square", "What colour is the shape? " * 3, "short", "x = 1\n" * 12]


def test_packed_text_keeps_documents_apart(tok):
    seq_len = 32
    batches = take(iter(P.packed_text(DOCS, tokenizer=tok, seq_len=seq_len, batch_size=2, seed=0)), 6)
    encoded = [encode_document(d, tokenizer=tok) for d in DOCS]
    starts_seen = continued = 0
    for batch in batches:
        assert batch["tokens"].shape == (2, seq_len)
        rows = zip(batch["tokens"], batch["targets"], batch["segment_ids"], batch["positions"])
        for tokens, targets, segs, pos in rows:
            assert segs.min() >= 1  # an infinite stream packs without padding
            for s in np.unique(segs):
                where = np.flatnonzero(segs == s)
                np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
                np.testing.assert_array_equal(pos[where], np.arange(where.size))  # positions restart
                # Within a segment the next input is this target; never across segments.
                np.testing.assert_array_equal(tokens[where][1:], targets[where][:-1])
                # Each segment is a piece of one document's own (tokens, targets).
                piece = (tokens[where], targets[where])
                owners = [i for i, e in enumerate(encoded) if any(
                    np.array_equal(e["tokens"][o : o + where.size], piece[0])
                    and np.array_equal(e["targets"][o : o + where.size], piece[1])
                    for o in range(len(e["tokens"]) - where.size + 1))]
                assert owners
                starts_seen += int(tokens[where][0] == tok.bos_id)
                continued += int(tokens[where][0] != tok.bos_id)  # a document split across rows
    assert starts_seen >= len(DOCS) and continued > 0


def test_packed_text_resumes_exactly(tok):
    def stream():
        return iter(P.packed_text(DOCS, tokenizer=tok, seq_len=16, batch_size=2, seed=3))

    it = stream()
    take(it, 5)
    state = it.get_state()
    expected = take(it, 4)
    again = stream()
    again.set_state(state)
    assert_same_batches(take(again, 4), expected)
    assert_same_batches(take(stream(), 3), take(stream(), 3))


def test_mixture_draws_whole_batches_by_weight_and_resumes(tok, files):
    def mixed():
        text = P.packed_text(DOCS, tokenizer=tok, seq_len=16, batch_size=2, seed=0)
        return iter(P.mixture({"qa": make_batches(tok, files, seed=0), "text": text}, weights={"qa": 3, "text": 1}))

    batches = take(mixed(), 40)
    kinds = ["qa" if "image_patches" in b else "text" for b in batches]
    assert kinds.count("qa") == 30 and kinds.count("text") == 10
    assert all(b["tokens"].shape == ((4, 48) if k == "qa" else (2, 16)) for b, k in zip(batches, kinds))
    it = mixed()
    take(it, 13)
    state = it.get_state()
    expected = take(it, 5)
    again = mixed()
    again.set_state(state)
    assert_same_batches(take(again, 5), expected)
    with pytest.raises(P.DataError, match="weights must name the same tasks"):
        P.mixture({"qa": make_batches(tok, files, seed=0)}, weights={"other": 1})


def test_staged_stream_gives_each_stage_its_count_and_resumes_across_the_switch(tok, files):
    def run():
        text = P.packed_text(DOCS, tokenizer=tok, seq_len=16, batch_size=2, seed=0)
        return iter(P.staged([(text, 3), (make_batches(tok, files, seed=0), None)]))

    batches = take(run(), 8)
    assert ["image_patches" in b for b in batches] == [False] * 3 + [True] * 5
    for stop in (2, 3, 5):  # before, at and after the switch
        it = run()
        take(it, stop)
        state = it.get_state()
        again = run()
        again.set_state(state)
        assert_same_batches(take(again, 8 - stop), batches[stop:])
    with pytest.raises(P.DataError, match="the last None"):
        P.staged([(make_batches(tok, files, seed=0), 2)])


def test_audio_slots_pad_to_the_declared_clip_length(tok, files):
    examples = [
        chat(("user", [Part(audio=str(files / "speech.wav"))]), ("model", [Part(text="ok")])),
        chat(("user", [Part(audio=Audio(np.zeros(1600, np.float32), 16_000))]), ("model", [Part(text="ok")])),
    ]
    source = P.encoded_source(examples, tokenizer=tok, config=CONFIG, max_len=64)
    (batch,) = list(P.batched(source, batch_size=2, seq_len=64, seed=0, shuffle=False, num_epochs=1, config=CONFIG,
                              max_audio_clips=1, max_mel_frames=40))
    assert batch["audio_mels"].shape == (2, 1, 40, CONFIG.audio.num_mels)
    assert batch["audio_mel_mask"].sum(axis=(1, 2)).tolist() == [25, 10]  # 4000 and 1600 samples / hop 160

def test_collate_rounds_mel_frames_up_to_a_multiple(tok, files):
    rows = [encode_example(chat(("user", [Part(audio=str(files / "speech.wav"))])), tokenizer=tok, config=CONFIG,
                           for_generation=True)]
    assert rows[0]["audio_mels"].shape[1] == 25
    exact = P.collate(rows, seq_len=64, config=CONFIG)
    rounded = P.collate(rows, seq_len=64, config=CONFIG, batch_size=2, mel_frames_multiple=16)
    assert exact["audio_mels"].shape[2] == 25
    assert rounded["audio_mels"].shape == (2, 1, 32, CONFIG.audio.num_mels)
    np.testing.assert_array_equal(rounded["audio_mel_mask"][0, 0], np.arange(32) < 25)
    np.testing.assert_array_equal(rounded["audio_mels"][0, :, :25], exact["audio_mels"][0])


def test_bidirectional_prompts_make_each_unscored_user_turn_one_span(tok, files):
    config = dataclasses.replace(CONFIG, prompt_attention="bidirectional")
    ex = chat(("user", [Part(image=str(files / "wide.png")), Part(text="Hi")]), ("model", [Part(text="Yo")]),
              ("user", [Part(text="and?")]), ("model", [Part(text="A red circle.")]))
    row = encode_example(ex, tokenizer=tok, config=config)
    causal = encode_example(ex, tokenizer=tok, config=CONFIG)
    np.testing.assert_array_equal(row["tokens"], causal["tokens"])
    np.testing.assert_array_equal(row["loss_mask"], causal["loss_mask"])
    tokens, spans = row["tokens"], row["media_spans"]
    sot = np.flatnonzero(tokens == tok.start_of_turn_id)  # the four turns start here
    # Turn 1 (with its image) is span 1 up to the start of turn 2; turn 3 is span 2; model turns are causal.
    assert spans[:sot[0]].tolist() == [0]  # <bos>
    assert set(spans[sot[0]:sot[1]].tolist()) == {1}
    assert not spans[sot[1]:sot[2]].any() and not spans[sot[3]:].any()
    assert set(spans[sot[2]:sot[3]].tolist()) == {2}
    # No scored target is predicted from inside a span that could see it.
    assert row["loss_mask"][spans > 0].sum() == 0
    # A template trained on everything stays causal: its user turns are targets too.
    every = encode_example(dataclasses.replace(ex, train_on="all"), tokenizer=tok, config=config)
    np.testing.assert_array_equal(every["media_spans"], encode_example(
        dataclasses.replace(ex, train_on="all"), tokenizer=tok, config=CONFIG)["media_spans"])
    # Without pooling, an image takes one placeholder per real patch (20x30 -> 2x4 grid).
    unpooled = dataclasses.replace(config, vision=dataclasses.replace(config.vision, pooling="none"))
    row = encode_example(ex, tokenizer=tok, config=unpooled)
    assert (row["tokens"] == CONFIG.image_token_id).sum() == 8 == row["image_patch_mask"].sum()


def test_rows_are_padded_straight_into_the_batch():
    from gemini_jax.data.row_shapes import RowShapes, pad_row, padded_batches

    shapes = RowShapes(seq_len=5, images=2, image_patches=4, patch_dim=3)
    row = {k: np.arange(1, 4, dtype=np.int32) for k in B.TEXT_KEYS}
    row["loss_mask"] = np.ones(3, np.float32)
    row["image_patches"] = np.full((1, 2, 3), 7.0, np.float32)
    row["image_coords"] = np.ones((1, 2, 2), np.int32)
    row["image_patch_mask"] = np.ones((1, 2), bool)
    text_only = {k: np.full(2, 9, np.int32) for k in B.TEXT_KEYS}
    batch = padded_batches(3, shapes)([None, row, text_only])
    assert {k: v.shape for k, v in batch.items()} == {
        **{k: (3, 5) for k in B.TEXT_KEYS}, "image_patches": (3, 2, 4, 3), "image_coords": (3, 2, 4, 2),
        "image_patch_mask": (3, 2, 4)}
    assert batch["loss_mask"].dtype == np.float32 and batch["image_patch_mask"].dtype == bool
    np.testing.assert_array_equal(batch["tokens"], [[1, 2, 3, 0, 0], [9, 9, 0, 0, 0], [0] * 5])  # None: last row pads
    assert batch["image_patches"][0].sum() == 7.0 * 6 and batch["image_patches"][0, 0, :2].min() == 7.0
    assert batch["image_patch_mask"].sum() == 2 and not batch["image_patches"][1:].any()
    one = pad_row(row, shapes)
    for k in batch:
        np.testing.assert_array_equal(one[k], batch[k][0])

    with pytest.raises(P.DataError, match=r"tokens of shape \(6,\), more than .* \(5,\).*raise seq_len"):
        pad_row({**row, "tokens": np.zeros(6, np.int32)}, shapes)
    with pytest.raises(P.DataError, match=r"images of shape \(3, 2, 3\).*raise max_images"):
        pad_row({**row, "image_patches": np.zeros((3, 2, 3), np.float32)}, shapes)
    with pytest.raises(P.DataError, match=r"audios but this task's batches hold none \(set max_audio_clips\)"):
        pad_row({**row, "audio_mels": np.zeros((1, 4, 2), np.float32)}, shapes)


def test_embedded_media_are_decoded_once_per_content(tok, files):
    from gemini_jax.data.media_cache import MediaCache

    png = (files / "wide.png").read_bytes()
    cache = MediaCache()
    rows = [encode_example(chat(("user", [Part(image=png), Part(text=f"question {i}?")]),
                                ("model", [Part(text="grey")])), tokenizer=tok, config=CONFIG, media_cache=cache)
            for i in range(3)]
    assert (cache.misses, cache.hits) == (1, 2)
    np.testing.assert_array_equal(rows[0]["image_patches"], rows[2]["image_patches"])
