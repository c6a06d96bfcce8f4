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
from gemini_jax.sample.image_output import IMAGE_TOKENIZER_DIR, ImageWriter, split_reply
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


def test_save_images_writes_pngs_and_prints_their_paths(run_dir, drawn, tmp_path, capsys):
    run = api.load(run_dir)
    seed, _ = drawn
    parts = api.generate_parts(run, "Draw a red circle.", seed=seed, **OPTIONS)
    out = tmp_path / "images"
    assert main(["generate", "--checkpoint", str(run_dir), "--save-images", str(out), "--seed", str(seed),
                 "--max-new-tokens", "24", "--temperature", "30", "Draw a red circle."]) == 0
    printed = capsys.readouterr().out
    saved = sorted(out.glob("reply-*.png"))
    assert saved and all(str(p) in printed for p in saved)
    first = next(p for p in parts if isinstance(p, np.ndarray))
    np.testing.assert_array_equal(np.asarray(Image.open(saved[0])), first)


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
