"""Code places (ImageOutputConfig.code_positions): each image code's place in its picture,
embedded beside its token, the same whether a sequence runs in one pass or through the KV cache."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import PRESETS, ImageOutputConfig, config_from_dict, config_to_dict
from gemini_jax.model import Gemini
from gemini_jax.model.gemini import code_runs

TEXT, CODES, PER_IMAGE = 90, 12, 4  # ids 90..101 are codes


def config(code_positions: bool):
    return dataclasses.replace(PRESETS["test"], vocab_size=TEXT + CODES, vision=None, audio=None,
                               image_output=ImageOutputConfig(codebook_size=CODES, codes_per_image=PER_IMAGE,
                                                              code_positions=code_positions))


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


# prompts that end before a picture, inside the first, inside the second
@pytest.mark.parametrize("code_positions, prompt_len", [(False, 6), (True, 3), (True, 6), (True, 10)])
def test_decoding_through_the_cache_equals_one_forward_pass(code_positions, prompt_len):
    model = Gemini(config(code_positions), rngs=nnx.Rngs(1))
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
