"""Code places (ImageOutputConfig.code_positions): each image code's place in its picture,
embedded beside its token, the same whether a sequence runs in one pass or through the KV cache."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import PRESETS, ConfigError, ImageOutputConfig, config_from_dict, config_to_dict
from gemini_jax.model import Gemini
from gemini_jax.model.gemini import code_runs, previous_picture_codes

TEXT, CODES, PER_IMAGE = 90, 12, 4  # ids 90..101 are codes


def config(code_positions: bool, previous_picture: bool = False):
    output = ImageOutputConfig(codebook_size=CODES, codes_per_image=PER_IMAGE, code_positions=code_positions,
                               previous_picture=previous_picture)
    return dataclasses.replace(PRESETS["test"], vocab_size=TEXT + CODES, vision=None, audio=None, image_output=output)


def test_code_runs_count_consecutive_codes_and_continue_a_cached_run():
    c = TEXT  # a code
    tokens = jnp.array([[5, c, c + 3, c, 7, c, c + 1], [c, c, 6, 6, c, c, c]])
    runs = code_runs(tokens, first_code=TEXT, num_codes=CODES, run_before=jnp.array([0, 2]))
    assert runs.tolist() == [[0, 1, 2, 3, 0, 1, 2], [3, 4, 0, 0, 1, 2, 3]]


def test_the_setting_round_trips_and_old_configs_read_as_off():
    on = config(True)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(on)))) == on
    old = config_to_dict(on)
    del old["image_output"]["code_positions"]  # a run saved before the setting existed
    assert config_from_dict(old).image_output.code_positions is False
    both = config(True, previous_picture=True)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(both)))) == both


def test_the_previous_picture_needs_code_places():
    with pytest.raises(ConfigError, match="previous_picture needs code_positions"):
        ImageOutputConfig(codebook_size=CODES, codes_per_image=PER_IMAGE, previous_picture=True)


def test_each_code_reads_the_previous_pictures_code_at_the_place_it_predicts():
    c = TEXT
    # picture A = codes 1 2 3 4, text, picture B = 5 6 7 8, then a cut-short picture C = 9 10 and, in a
    # second segment, picture D = 11 11 11 11 (no picture before it in its segment).
    tokens = jnp.array([[c + 1, c + 2, c + 3, c + 4, 7, c + 5, c + 6, c + 7, c + 8, 7, c + 9, c + 10,
                         c + 11, c + 11, c + 11, c + 11]])
    segments = jnp.array([[1] * 12 + [2] * 4])
    runs = code_runs(tokens, first_code=TEXT, num_codes=CODES, run_before=jnp.zeros((1,), jnp.int32))
    runs = jnp.where(jnp.arange(16)[None] >= 12, runs - 2, runs)  # picture D starts its own run (segment 2)
    got = previous_picture_codes(tokens, runs, segments, first_code=TEXT, codes_per_image=PER_IMAGE).tolist()[0]
    # A has no picture before it; B's codes at places 0, 1, 2 predict places 1, 2, 3 and read A's 2, 3, 4;
    # C reads B's 6 and 7; a picture's last code predicts no place; D is alone in its segment.
    assert got == [-1, -1, -1, -1, -1, 2, 3, 4, -1, -1, 6, 7, -1, -1, -1, -1]


def test_the_previous_picture_changes_an_edits_inputs_only():
    model = Gemini(config(True, previous_picture=True), rngs=nnx.Rngs(0))
    c = TEXT
    tokens = np.array([[30, c + 5, c + 6, c + 7, c + 8, 40, c + 1, c + 2, c + 3, c + 4]], np.int32)
    got = np.asarray(model.embed({"tokens": tokens}))
    alone = np.asarray(model.embed({"tokens": tokens[:, :5]}))
    np.testing.assert_allclose(got[0, :5], alone[0], rtol=1e-6, atol=1e-6)  # the first picture: nothing added
    table = np.asarray(model.previous_code[...])
    places = np.asarray(model.code_position[...])
    plain = np.asarray(model.embedder.encode(jnp.asarray(tokens)))
    # code p of the second picture predicts place p + 1, and reads the first picture's code there
    for t, (place, hint) in zip(range(6, 10), [(0, 6), (1, 7), (2, 8), (3, None)], strict=True):
        extra = places[place] + (table[hint] if hint is not None else 0.0)
        np.testing.assert_allclose(got[0, t], plain[0, t] + extra, rtol=1e-6, atol=1e-6)


def test_codes_are_rotated_by_their_place_and_text_by_its_position():
    model = Gemini(config(True), rngs=nnx.Rngs(0))
    runs = jnp.array([[0, 1, 2, 0, 1]])
    positions = jnp.arange(5, dtype=jnp.int32)[None]
    limit = model.config.max_seq_len
    assert model._rope_positions(positions, runs).tolist() == [[0, limit, limit + 1, 3, limit]]
    assert Gemini(config(False), rngs=nnx.Rngs(0))._rope_positions(positions, None) is positions


def test_codes_get_their_place_embedding_and_text_does_not():
    model = Gemini(config(True), rngs=nnx.Rngs(0))
    c = TEXT
    tokens = np.array([[30, c + 5, c + 5, c + 5, 40, c + 5]], np.int32)  # ids under 20 hold special pieces
    got = np.asarray(model.embed({"tokens": tokens}))
    plain = np.asarray(model.embedder.encode(jnp.asarray(tokens)))
    table = np.asarray(model.code_position[...])
    places = {1: 0, 2: 1, 3: 2, 5: 0}
    for t in range(tokens.shape[1]):
        extra = table[places[t]] if t in places else 0.0
        np.testing.assert_allclose(got[0, t], plain[0, t] + extra, rtol=1e-6, atol=1e-6)
    # The same code in three places is three different inputs.
    assert not np.allclose(got[0, 1], got[0, 2])


# prompts that end before a picture, inside the first, between the two, inside the second
@pytest.mark.parametrize("code_positions, previous_picture, prompt_len", [
    (False, False, 6), (True, False, 3), (True, False, 6), (True, False, 10),
    (True, True, 3), (True, True, 5), (True, True, 8), (True, True, 10)])
def test_decoding_through_the_cache_equals_one_forward_pass(code_positions, previous_picture, prompt_len):
    model = Gemini(config(code_positions, previous_picture), rngs=nnx.Rngs(1))
    c = TEXT
    # text, a picture of 4 codes, text, a second picture (its codes repeated: only places tell them apart)
    full = [2, 27, 29, c + 1, c + 1, c + 4, c + 2, 31, 32, c + 3, c + 3, c + 3, c + 3, 25]
    length = len(full)
    batch = {"tokens": np.array([full], np.int32), "segment_ids": np.ones((1, length), np.int32),
             "positions": np.arange(length, dtype=np.int32)[None], "media_spans": np.zeros((1, length), np.int32)}
    expected = np.asarray(model(batch).logits[0, prompt_len - 1: -1])
    cache = model.init_cache(batch_size=1, max_len=length + 4)
    out, cache = model.prefill({k: v[:, :prompt_len] for k, v in batch.items()}, cache)
    got = [np.asarray(out.logits[0, prompt_len - 1])]
    for token in full[prompt_len:-1]:
        logits, cache = model.decode_step(np.array([token], np.int32), cache)
        got.append(np.asarray(logits[0]))
    np.testing.assert_allclose(np.stack(got), expected, atol=2e-5, rtol=2e-5)
    assert int(cache.code_run[0]) == (4 if code_positions else 0)  # it ends with the second picture's 4 codes
