"""Sampling: top-k / top-p masks, seeds, and cached generation equal to full forward passes."""

import dataclasses
import inspect
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gemini_jax.config import PRESETS
from gemini_jax.data.encode import EncodeError, encode_example
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.sample.buckets import LENGTH_BUCKET, batch_bucket, length_bucket
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams, filter_logits, sample_tokens

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    return train_tokenizer(corpus, vocab_size=400, path=tmp_path_factory.mktemp("tok") / "t.model")


def test_top_k_and_top_p_masks_match_hand_computed_sets():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]], np.float32)
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, top_k=jnp.array(k), top_p=jnp.array(p))))
    # top-k 2: the two most likely of each row.
    np.testing.assert_array_equal(kept([2, 2], [1.0, 1.0]), [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]])
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the third (0.15) is needed too; p = 0.5 keeps one.
    np.testing.assert_array_equal(kept([0, 0], [0.8, 0.5]), [[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]])
    # Both: the smaller set wins; no limit keeps everything.
    np.testing.assert_array_equal(kept([1, 0], [0.8, 1.0]), [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


def test_sampling_follows_the_distribution_and_its_seed():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.1, 1e-9]] * 4000, jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    settings = dict(temperature=jnp.ones(4000), top_k=jnp.zeros(4000, jnp.int32), top_p=jnp.ones(4000))
    draws = np.asarray(sample_tokens(logits, keys, **settings))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.6, 0.3, 0.1, 0.0], atol=0.03)
    again = np.asarray(sample_tokens(logits, keys, **settings))
    np.testing.assert_array_equal(draws, again)
    greedy = np.asarray(sample_tokens(logits, keys, **{**settings, "temperature": jnp.zeros(4000)}))
    assert (greedy == 0).all()


def test_greedy_and_sampled_rows_in_one_batch_answer_as_alone():
    logits = jax.random.normal(jax.random.key(1), (64, 50))
    keys = jax.random.split(jax.random.key(2), 64)
    sampled = dict(temperature=jnp.ones(64), top_k=jnp.zeros(64, jnp.int32), top_p=jnp.ones(64))
    mixed = {**sampled, "temperature": jnp.where(jnp.arange(64) % 2 == 0, 0.0, 1.0)}
    all_sampled = np.asarray(sample_tokens(logits, keys, **sampled))
    all_greedy = np.asarray(sample_tokens(logits, keys, **{**sampled, "temperature": jnp.zeros(64)}))
    both = np.asarray(sample_tokens(logits, keys, **mixed))
    argmax = np.asarray(logits).argmax(-1)
    np.testing.assert_array_equal(all_greedy, argmax)
    np.testing.assert_array_equal(both[0::2], argmax[0::2])
    np.testing.assert_array_equal(both[1::2], all_sampled[1::2])
    assert (all_sampled != argmax).sum() > 10  # the sampled rows did draw


def prompts(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 36, 3), np.uint8)).save(tmp_path / "a.png")
    return [
        Example(contents=[Content("user", [Part(text="What colour is the shape?")])]),
        Example(contents=[Content("user", [Part(image=str(tmp_path / "a.png")), Part(text="A red circle. A blue")])]),
        Example(contents=[Content("user", [Part(text="A")])]),
    ]


def test_lengths_round_up_to_a_bucket_within_the_context_and_batches_to_a_power_of_two():
    assert LENGTH_BUCKET == 32  # the buckets compiled programs are keyed on: changing it recompiles everything
    assert [length_bucket(n, limit=512) for n in (1, 31, 32, 33, 64, 65)] == [32, 32, 32, 64, 64, 96]
    assert length_bucket(100, limit=80) == 80 and length_bucket(500, limit=512) == 512
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 16]


def test_greedy_generation_equals_repeated_full_forward_passes(build_model, tok, tmp_path):
    model = build_model(CONFIG)
    sampler = Sampler(model, tok)
    examples = prompts(tmp_path)
    params = [SamplingParams(max_new_tokens=n) for n in (6, 4, 5)]
    generated = sampler.generate_ids(examples, params)
    # One compiled forward pass at a fixed length: the row is right-padded (segment id 0), and
    # causal attention keeps the padding out of the logits read at its last real token.
    length = 48
    logits_at = nnx.jit(lambda m, batch, t: m(batch).logits[0, t - 1])
    for example, p, ids in zip(examples, params, generated):
        row = encode_example(example, tokenizer=tok, config=CONFIG, for_generation=True)
        tokens = list(row["tokens"])
        expected = []
        for _ in range(p.max_new_tokens):
            t = len(tokens)
            batch = {k: v[None] for k, v in row.items() if k not in ("targets", "loss_mask")}
            batch.update(tokens=np.array([tokens + [0] * (length - t)], np.int32),
                         segment_ids=(np.arange(length) < t).astype(np.int32)[None],
                         positions=np.arange(length, dtype=np.int32)[None],
                         media_spans=np.pad(row["media_spans"], (0, length - len(row["media_spans"])))[None])
            next_id = int(np.argmax(np.asarray(logits_at(model, batch, t))))
            expected.append(next_id)
            if next_id in (tok.end_of_turn_id, tok.eos_id):
                expected.pop()
                break
            tokens.append(next_id)
        assert ids == expected


def test_seeded_sampling_is_reproducible_and_seed_dependent(build_model, tok, tmp_path):
    sampler = Sampler(build_model(CONFIG), tok)
    examples = prompts(tmp_path)[:1] * 2
    hot = lambda seed: SamplingParams(temperature=2.0, max_new_tokens=12, seed=seed)
    first = sampler.generate_ids(examples, [hot(1), hot(2)])
    second = sampler.generate_ids(examples, [hot(1), hot(2)])
    assert first == second
    assert first[0] != first[1]


def test_a_prompt_longer_than_the_context_is_refused(build_model, tok):
    sampler = Sampler(build_model(CONFIG), tok)
    long = Example(contents=[Content("user", [Part(text="A red circle. " * 400)])])
    with pytest.raises(EncodeError, match="context"):
        sampler.generate([long])
    short = Example(contents=[Content("user", [Part(text="A red circle.")])])
    with pytest.raises(EncodeError, match="exceeds the model's context"):
        sampler.generate([short], [SamplingParams(max_new_tokens=CONFIG.max_seq_len)])
