"""A run that writes images: its config's reserved codes, its image tokenizer, replies split into
text and pictures, `generate_parts` and `generate --save-images`."""

import dataclasses
import inspect
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
from conftest import write_fresh_run
from flax import nnx
from PIL import Image

from gemini_jax import api
from gemini_jax.checkpoint import CheckpointError
from gemini_jax.cli import main
from gemini_jax.config import PRESETS, ConfigError, ImageOutputConfig, config_from_dict, config_to_dict
from gemini_jax.data.encode import EncodeError, check_compatible
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.model.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, save_image_tokenizer
from gemini_jax.sample.image_output import IMAGE_TOKENIZER_DIR, ImageWriter
from gemini_jax.sample.image_spans import split_reply
from gemini_jax.sample.image_spans import ImageSpans

TOKENIZER = ImageTokenizerConfig(image_size=16, factor=4, levels=(3, 3), widths=(8, 8))  # 9 codes, 16 an image


def test_a_reply_splits_into_text_and_images_in_order():
    spans = ImageSpans(start_id=9, end_id=10, first_code=100, num_codes=9, codes_per_image=2)
    pieces = split_reply([5, 6, 9, 103, 108, 10, 7, 9, 100, 101, 10, 9, 102], spans)
    assert [p if isinstance(p, list) else p.tolist() for p in pieces] == [[5, 6], [3, 8], [7], [0, 1]]


def test_image_output_config_round_trips_and_checks():
    config = dataclasses.replace(PRESETS["test"], vocab_size=400,
                                 image_output=ImageOutputConfig(codebook_size=16, codes_per_image=4))
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    assert config.first_image_code == 384
    with pytest.raises(ConfigError, match="codebook_size.*leaves no text"):
        dataclasses.replace(config, image_output=ImageOutputConfig(codebook_size=400, codes_per_image=4))
    with pytest.raises(ConfigError, match="codes_per_image must be a positive integer"):
        ImageOutputConfig(codebook_size=16, codes_per_image=0)


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer([inspect.getsource(textwrap), "Draw a red circle. Here it is.\n" * 30], vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok_file):
    """A fresh run reserving the image tokenizer's 9 codes after its 400 text pieces, with that tokenizer."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=400 + TOKENIZER.codebook_size,
                                 image_output=ImageOutputConfig(codebook_size=TOKENIZER.codebook_size,
                                                                codes_per_image=TOKENIZER.codes_per_image))
    run = write_fresh_run(tmp_path_factory.mktemp("run"), config=config, tokenizer_path=tok_file)
    save_image_tokenizer(ImageTokenizer(TOKENIZER, rngs=nnx.Rngs(0)), run / IMAGE_TOKENIZER_DIR)
    return run


def test_a_tokenizer_overlapping_the_codes_is_refused(run_dir):
    run = api.load(run_dir)
    check_compatible(run.tokenizer, run.config)  # 400 pieces, codes from 400
    small = dataclasses.replace(run.config, vocab_size=405)
    with pytest.raises(EncodeError, match="overlap the model's image codes, ids 396 to 404"):
        check_compatible(run.tokenizer, small)


OPTIONS = dict(max_new_tokens=24, temperature=30.0)


@pytest.fixture(scope="module")
def drawn(run_dir):
    """(seed, reply ids) of the first of 256 seeds whose reply holds an image: a random model
    opens a span rarely, but at temperature 30 some of them do. A request samples the same
    alone or in a batch, so `generate` with that seed gives this reply."""
    from gemini_jax.sample.sampler import Sampler
    from gemini_jax.sample.token_choice import SamplingParams

    run = api.load(run_dir)
    sampler = Sampler(run.model, run.tokenizer)
    seeds = range(256)
    replies = sampler.generate_ids([api.user_turn("Draw a red circle.")] * len(seeds),
                                   [SamplingParams(seed=s, **OPTIONS) for s in seeds])
    start = sampler.image_spans.start_id
    return next((s, ids) for s, ids in zip(seeds, replies) if start in ids)


def test_generate_parts_gives_text_and_the_decoded_images(run_dir, drawn):
    run = api.load(run_dir)
    writer = ImageWriter.for_run(run)
    seed, ids = drawn
    parts = api.generate_parts(run, "Draw a red circle.", seed=seed, **OPTIONS)
    images = [p for p in parts if isinstance(p, np.ndarray)]
    assert images and all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p in images)
    # The reply's ids decoded by hand: the parts are its text and its codes' pixels, in order.
    pieces = split_reply(ids, writer.spans)
    assert len(pieces) == len(parts)
    for piece, part in zip(pieces, parts):
        if isinstance(piece, list):
            assert part == run.tokenizer.decode(piece)
        else:
            expected = np.asarray(writer.image_tokenizer.decode(piece.reshape(1, 4, 4)))[0]
            np.testing.assert_array_equal(part, np.clip(np.round(expected * 255), 0, 255).astype(np.uint8))
    # generate's text keeps the markers and leaves the codes out.
    text = api.generate(run, "Draw a red circle.", seed=seed, **OPTIONS)
    assert text.count("<start_of_image>") == len(images)


def test_the_api_leaves_room_for_an_image_by_default(run_dir):
    from gemini_jax.sample.image_output import default_max_new_tokens
    from gemini_jax.sample.sampler import Sampler
    from gemini_jax.sample.token_choice import SamplingParams

    run = api.load(run_dir)
    room = 64 + TOKENIZER.codes_per_image + 2
    assert default_max_new_tokens(ImageWriter.for_run(run)) == room and default_max_new_tokens(None) == 64
    # A seed whose reply, given that room, runs past 64 tokens: by default the API gives all of it.
    sampler = Sampler(run.model, run.tokenizer)
    seeds = range(16)
    replies = sampler.generate_ids([api.user_turn("Draw a red circle.")] * len(seeds),
                                   [SamplingParams(seed=s, max_new_tokens=room, temperature=30.0) for s in seeds])
    seed, ids = next((s, ids) for s, ids in zip(seeds, replies) if len(ids) > 64)
    assert api.generate(run, "Draw a red circle.", seed=seed, temperature=30.0) == sampler.text(ids)


def test_save_images_writes_pngs_and_prints_their_paths(run_dir, drawn, tmp_path, capsys):
    run = api.load(run_dir)
    seed, _ = drawn
    parts = api.generate_parts(run, "Draw a red circle.", seed=seed, **OPTIONS)
    out = tmp_path / "images"
    assert main(["generate", "--checkpoint", str(run_dir), "--save-images", str(out), "--seed", str(seed),
                 "--max-new-tokens", "24", "--temperature", "30", "Draw a red circle."]) == 0
    printed = capsys.readouterr().out
    saved = sorted(out.glob("reply-*.png"))
    # By default a run that draws gets room for an image beyond the usual 64 tokens.
    from gemini_jax.cli import build_parser

    assert build_parser().parse_args(["generate", "x"]).max_new_tokens is None
    assert saved and all(str(p) in printed for p in saved)
    first = next(p for p in parts if isinstance(p, np.ndarray))
    np.testing.assert_array_equal(np.asarray(Image.open(saved[0])), first)


def test_saved_paths_stand_apart_from_the_text_before_them(tmp_path):
    picture = np.zeros((4, 4, 3), np.uint8)
    text = ImageWriter.save(["At 40, 20, size 12.", picture, "Here: ", picture, ""], tmp_path, stem="r")
    assert text == f"At 40, 20, size 12. {tmp_path / 'r-1.png'}Here: {tmp_path / 'r-2.png'}"
    assert ImageWriter.save([picture], tmp_path, stem="s") == str(tmp_path / "s-1.png")


def test_bad_image_output_setups_get_clear_errors(run_dir, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    assert main(["generate", "--checkpoint", str(run_dir), "--save-images", str(file), "hi"]) == 2
    assert "--save-images" in (err := capsys.readouterr().err) and "not a directory" in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["generate", "--checkpoint", str(run_dir), "--save-images", str(locked), "hi"]) == 2
        assert "not writable" in capsys.readouterr().err
    # A run whose image tokenizer is missing, then one whose codes do not fill the reserved range.
    other = tmp_path / "other-run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns(IMAGE_TOKENIZER_DIR))
    with pytest.raises(CheckpointError, match="has no image_tokenizer/"):
        ImageWriter.for_run(api.load(other))
    save_image_tokenizer(ImageTokenizer(dataclasses.replace(TOKENIZER, levels=(3, 5)), rngs=nnx.Rngs(0)),
                         other / IMAGE_TOKENIZER_DIR)
    with pytest.raises(CheckpointError, match="has 15 codes, 16 an image, but the run reserves 9 codes"):
        ImageWriter.for_run(api.load(other))


# --- training data: an image in a model turn is written as its codes ------------------------------


def drawing(colour=(200, 30, 30)) -> np.ndarray:
    image = np.full((16, 16, 3), 235, np.uint8)
    image[4:12, 5:11] = colour
    return image


def drawing_example(image):
    from gemini_jax.data.examples import Content, Example, Part

    return Example(contents=(Content("user", (Part(text="Draw a red rectangle."),)),
                             Content("model", (Part(text="Here: "), Part(image=image)))))


def test_a_model_turn_image_is_written_as_targets_and_round_trips(run_dir, tmp_path):
    from gemini_jax.data.encode import encode_example
    from gemini_jax.data.image_codes import ImageCoder
    from gemini_jax.data.media_cache import MediaCache

    run = api.load(run_dir)
    coder = ImageCoder.load(run_dir / IMAGE_TOKENIZER_DIR)
    path = tmp_path / "red.png"
    Image.fromarray(drawing()).save(path)
    row = encode_example(drawing_example(str(path)), tokenizer=run.tokenizer, config=run.config, image_codes=coder)
    spans = ImageWriter.for_run(run).spans
    targets, mask = row["targets"].tolist(), row["loss_mask"]
    start = targets.index(spans.start_id)
    written = targets[start: start + TOKENIZER.codes_per_image + 2]
    # <start_of_image>, 16 codes from the run's first code, <end_of_image>, then <end_of_turn>: all targets.
    codes = np.asarray(coder(str(path)))
    assert written == [spans.start_id, *(codes + run.config.first_image_code).tolist(), spans.end_id]
    assert mask[start: start + TOKENIZER.codes_per_image + 3].all()
    assert targets[start + TOKENIZER.codes_per_image + 2] == run.tokenizer.end_of_turn_id
    assert "image_patches" not in row  # written, not read: the vision encoder never sees it
    # The codes in the row decode to what the image tokenizer makes of the picture.
    [text, pixels] = ImageWriter.for_run(run).parts(targets[start - 3: start + TOKENIZER.codes_per_image + 2])
    again = np.asarray(coder.image_tokenizer.decode(codes.reshape(1, 4, 4)))[0]
    np.testing.assert_array_equal(pixels, np.clip(np.round(again * 255), 0, 255).astype(np.uint8))
    # The same file twice: its codes are computed once (the media cache keeps them).
    calls = []

    class Counting:
        key = coder.key

        def __call__(self, source):
            calls.append(source)
            return coder(source)

    cache = MediaCache(max_bytes=1 << 20)
    for _ in range(2):
        encode_example(drawing_example(str(path)), tokenizer=run.tokenizer, config=run.config, image_codes=Counting(),
                       media_cache=cache)
    assert calls == [str(path)]


def test_model_turn_images_without_image_output_are_refused(run_dir):
    from gemini_jax.data.encode import encode_example

    run = api.load(run_dir)
    with pytest.raises(EncodeError, match="needs the run's image tokenizer"):
        encode_example(drawing_example(drawing()), tokenizer=run.tokenizer, config=run.config)
    text_only = dataclasses.replace(run.config, image_output=None)
    with pytest.raises(EncodeError, match="a model turn holds an image, but this model writes text only"):
        encode_example(drawing_example(drawing()), tokenizer=run.tokenizer, config=text_only)


def test_wrong_code_counts_from_the_coder_are_refused(run_dir):
    from gemini_jax.data.encode import encode_example

    run = api.load(run_dir)

    class Short:
        key = "short"

        def __call__(self, source):
            return np.zeros(3, np.int32)

    with pytest.raises(EncodeError, match="gave 3 codes.*takes 16"):
        encode_example(drawing_example(drawing()), tokenizer=run.tokenizer, config=run.config, image_codes=Short())


# --- serving: the engine keeps spans whole; the server sends images as PNG data URLs -------------


def test_the_engine_writes_the_samplers_images(run_dir, drawn):
    from gemini_jax.sample.engine import Engine
    from gemini_jax.sample.token_choice import SamplingParams

    run = api.load(run_dir)
    seed, ids = drawn
    engine = Engine(run.model, run.tokenizer, slots=2, max_len=128)
    events = []
    request = engine.submit(api.user_turn("Draw a red circle."), SamplingParams(seed=seed, **OPTIONS),
                            on_event=events.append)
    other = engine.submit(api.user_turn("Here it is."), SamplingParams(seed=seed + 1, **OPTIONS))
    engine.run_until_idle()
    assert request.result().token_ids == [t for t in ids if t not in engine.stop_ids]
    assert other.result() is not None
    spans = engine.image_spans
    # Events: each image's codes after the text before it; the text leaves markers and codes out.
    images = [e.image for e in events if e.image is not None]
    expected = [p for p in split_reply(request.result().token_ids, spans) if isinstance(p, np.ndarray)]
    assert images and all(np.array_equal(a, b) for a, b in zip(images, expected, strict=True))
    text = "".join(e.delta for e in events)
    assert text == request.result().text and "<start_of_image>" not in text


def png_of_url(url: str) -> bytes:
    import base64

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix):])


def test_the_server_sends_the_same_png_bytes_as_save_images(run_dir, drawn, tmp_path, capsys):
    from starlette.testclient import TestClient

    from gemini_jax.sample.engine import Engine
    from gemini_jax.sample.server import ChatServer, ServerConfig

    run = api.load(run_dir)
    seed, _ = drawn
    engine = Engine(run.model, run.tokenizer, slots=2, max_len=128)
    server = ChatServer(engine, ServerConfig(), images=ImageWriter.for_run(run))
    ask = {"messages": [{"role": "user", "content": "Draw a red circle."}], "seed": seed,
           "temperature": OPTIONS["temperature"], "max_tokens": OPTIONS["max_new_tokens"]}
    out = tmp_path / "saved"
    assert main(["generate", "--checkpoint", str(run_dir), "--save-images", str(out), "--seed", str(seed),
                 "--max-new-tokens", str(OPTIONS["max_new_tokens"]), "--temperature", str(OPTIONS["temperature"]),
                 "Draw a red circle."]) == 0
    capsys.readouterr()
    saved = [p.read_bytes() for p in sorted(out.glob("reply-*.png"))]
    with TestClient(server.app) as http:
        content = http.post("/v1/chat/completions", json=ask).json()["choices"][0]["message"]["content"]
        streamed = http.post("/v1/chat/completions", json={**ask, "stream": True}).text
    assert isinstance(content, list)
    sent = [png_of_url(p["image_url"]["url"]) for p in content if p["type"] == "image_url"]
    assert sent == saved
    chunks = [json.loads(line[6:]) for line in streamed.split("\n") if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks]
    streamed_images = [png_of_url(p["image_url"]["url"]) for d in deltas if isinstance(d, list) for p in d]
    assert streamed_images == saved
    # The stream's text equals the reply's text parts, in the same order around the images.
    stream_order = [("image" if isinstance(d, list) else d) for d in deltas if d]
    body_order = ["image" if p["type"] == "image_url" else p["text"] for p in content]
    joined = lambda order: [x for x in "".join(x if x != "image" else "\0" for x in order).split("\0")]  # noqa: E731
    assert joined(stream_order) == joined(body_order)


def test_decoding_past_an_image_span_equals_the_full_forward_pass(run_dir, drawn):
    """The reply with its image span fed back through the KV cache, one token at a time, gives the
    logits one forward pass over prompt and reply gives at every reply position."""
    from gemini_jax.data.encode import encode_example

    run = api.load(run_dir)
    seed, ids = drawn
    model = run.model
    row = encode_example(api.user_turn("Draw a red circle."), tokenizer=run.tokenizer, config=run.config,
                         for_generation=True)
    prompt = row["tokens"].tolist()
    full = prompt + ids
    batch = {"tokens": np.array([full], np.int32), "segment_ids": np.ones((1, len(full)), np.int32),
             "positions": np.arange(len(full), dtype=np.int32)[None],
             "media_spans": np.zeros((1, len(full)), np.int32)}
    expected = np.asarray(model(batch).logits[0, len(prompt) - 1: -1])  # the logits that chose each reply token
    cache = model.init_cache(batch_size=1, max_len=len(full) + 8)
    out, cache = model.prefill({k: v[:, : len(prompt)] for k, v in batch.items()}, cache)
    got = [np.asarray(out.logits[0, len(prompt) - 1])]
    for token in ids[:-1]:
        logits, cache = model.decode_step(np.array([token], np.int32), cache)
        got.append(np.asarray(logits[0]))
    assert any(t >= run.config.first_image_code for t in ids)
    np.testing.assert_allclose(np.stack(got), expected, atol=2e-4, rtol=2e-4)


def test_a_prompt_may_hold_images_the_model_wrote_before(run_dir, tmp_path):
    """Multi-turn: an earlier model turn's image is read back as the codes it was written as."""
    from gemini_jax.data.examples import Content, Example, Part

    run = api.load(run_dir)
    history = Example(contents=(*drawing_example(drawing()).contents,
                                Content("user", (Part(text="Now make it blue."),))))
    parts = api.generate_parts(run, history, max_new_tokens=8)
    assert parts and all(isinstance(p, (str, np.ndarray)) for p in parts)
    text = api.generate(run, history, max_new_tokens=8)
    assert isinstance(text, str)


def test_a_quantized_image_run_draws_with_its_sources_image_tokenizer(run_dir, drawn, tmp_path):
    from gemini_jax.sample.quantize import quantize_run

    quantize_run(run_dir, tmp_path / "int4", group_size=2)  # the test preset: head_dim 10
    int4 = api.load(tmp_path / "int4")
    assert int4.config.image_output == api.load(run_dir).config.image_output
    writer = ImageWriter.for_run(int4)
    assert (tmp_path / "int4" / IMAGE_TOKENIZER_DIR / "image_tokenizer.safetensors").read_bytes() == \
        (run_dir / IMAGE_TOKENIZER_DIR / "image_tokenizer.safetensors").read_bytes()
    parts = api.generate_parts(int4, "Draw a red circle.", seed=drawn[0], **OPTIONS)
    assert all(isinstance(p, (str, np.ndarray)) for p in parts) and writer.spans.codes_per_image == 16


def test_generate_edit_asks_the_conversation_and_refuses_what_does_not_fit(run_dir, tmp_path, capsys):
    """`generate --edit PICTURE PROMPT` is the conversation `edit_request` builds (the picture as the
    reply to the run's unconditional prompt), sampled as the library samples it."""
    from gemini_jax.sample.image_output import edit_request, unconditional_prompt, write_unconditional_prompt

    picture = tmp_path / "picture.png"
    Image.fromarray(drawing()).save(picture)
    args = ["--max-new-tokens", "8", "--temperature", "30", "--seed", "3"]
    # Without an unconditional prompt the run has no way to ask for a picture it did not draw.
    assert main(["generate", "--checkpoint", str(run_dir), "--edit", str(picture), "Make it blue."]) == 2
    assert "--edit" in (err := capsys.readouterr().err) and "guidance.json" in err
    guided = tmp_path / "guided-run"
    shutil.copytree(run_dir, guided)
    write_unconditional_prompt(guided, "Draw a picture.")
    assert main(["generate", "--checkpoint", str(guided), "--edit", str(picture), *args, "Make it blue."]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    request = edit_request(str(picture), "Make it blue.", first_request=unconditional_prompt(guided))
    assert [t.role for t in request.contents] == ["user", "model", "user"]
    assert printed == api.generate(api.load(guided), request, max_new_tokens=8, temperature=30.0, seed=3)
    for bad, message in ((["--edit", str(tmp_path / "missing.png")], "no such file"),
                         (["--edit", str(picture), "--image", str(picture)], "do not go with it")):
        assert main(["generate", "--checkpoint", str(guided), *bad, "Make it blue."]) == 2
        assert message in capsys.readouterr().err


def test_best_of_keeps_the_reply_whose_picture_the_scorer_rates_highest(run_dir, drawn):
    from gemini_jax.model.image_scorer import ImageScorer, ImageScorerConfig, choose, save_image_scorer
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR, SAMPLE_SEED_STRIDE

    run = api.load(run_dir)
    with pytest.raises(ConfigError, match="image-scorer train"):
        api.generate_parts(run, "Draw a red circle.", best_of=2, **OPTIONS)
    with pytest.raises(ConfigError, match="positive integer"):
        api.generate(run, "Draw a red circle.", best_of=0, **OPTIONS)
    scorer = ImageScorer(ImageScorerConfig(image_size=16, word_buckets=64, widths=(4, 4), width=8), rngs=nnx.Rngs(3))
    save_image_scorer(scorer, run_dir / IMAGE_SCORER_DIR)
    try:
        seed, _ = drawn
        singles = [api.generate_parts(run, "Draw a red circle.", seed=seed + k * SAMPLE_SEED_STRIDE, **OPTIONS)
                   for k in range(3)]
        best = api.generate_parts(run, "Draw a red circle.", seed=seed, best_of=3, **OPTIONS)
    finally:
        shutil.rmtree(run_dir / IMAGE_SCORER_DIR)
    pictures = [next((p for p in parts if isinstance(p, np.ndarray)), None) for parts in singles]
    [k] = choose(scorer, ["Draw a red circle."], [None], [pictures])
    assert pictures[k] is not None  # the drawn seed's reply holds one, so the chosen reply does too

    def comparable(parts):
        return [p.tolist() if isinstance(p, np.ndarray) else p for p in parts]

    assert comparable(best) == comparable(singles[k])
