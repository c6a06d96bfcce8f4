"""The attention mask: the docstring's golden examples, a brute-force reference, decode queries."""

import jax.numpy as jnp
import numpy as np
import pytest

from gemini_jax.model.mask import attention_mask


def _mask(segment_ids, media_spans, **kw):
    out = attention_mask(
        segment_ids=jnp.asarray([segment_ids], jnp.int32), media_spans=jnp.asarray([media_spans], jnp.int32), **kw
    )
    return np.asarray(out[0]).astype(int)


GOLDEN = {
    "causal": ([1, 1, 1], [0, 0, 0], [
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ]),
    "two_segments_and_padding": ([1, 1, 2, 2, 0], [0, 0, 0, 0, 0], [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ]),
    "image_span": ([1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_docstring_examples(name):
    segment_ids, media_spans, expected = GOLDEN[name]
    np.testing.assert_array_equal(_mask(segment_ids, media_spans), np.array(expected))


def _reference(segment_ids, media_spans):
    n = len(segment_ids)
    out = np.zeros((n, n), int)
    for i in range(n):
        for j in range(n):
            same_segment = segment_ids[i] > 0 and segment_ids[i] == segment_ids[j]
            same_span = media_spans[i] > 0 and media_spans[i] == media_spans[j]
            out[i, j] = same_segment and (j <= i or same_span)
    return out


def test_matches_brute_force_on_packed_rows_with_spans():
    rng = np.random.default_rng(0)
    # Two packed documents, each with a media span, then padding.
    segment_ids = [1] * 7 + [2] * 6 + [0] * 3
    media_spans = [0, 1, 1, 1, 0, 2, 2] + [0, 3, 3, 0, 4, 4] + [0, 0, 0]
    np.testing.assert_array_equal(_mask(segment_ids, media_spans), _reference(segment_ids, media_spans))
    for _ in range(3):
        seg = rng.integers(0, 3, 11).tolist()
        spans = rng.integers(0, 3, 11).tolist()
        np.testing.assert_array_equal(_mask(seg, spans), _reference(seg, spans))


def test_decode_query_against_cache_keys():
    # A row whose cache holds 4 real tokens (slots 0-3, slot 2 was an image token) and
    # two empty slots; the new token is written at slot 4 and sees slots 0-4 only.
    valid = jnp.asarray([[1, 1, 1, 1, 1, 0]], jnp.int32)
    mask = attention_mask(
        segment_ids=jnp.ones((1, 1), jnp.int32), media_spans=jnp.zeros((1, 1), jnp.int32),
        kv_segment_ids=valid, q_indices=jnp.asarray([[4]], jnp.int32),
    )
    np.testing.assert_array_equal(np.asarray(mask).astype(int), [[[1, 1, 1, 1, 1, 0]]])
    # The same query at index 2 must not see slots 3 and 4, even though they are valid.
    mask = attention_mask(
        segment_ids=jnp.ones((1, 1), jnp.int32), media_spans=jnp.zeros((1, 1), jnp.int32),
        kv_segment_ids=valid, q_indices=jnp.asarray([[2]], jnp.int32),
    )
    np.testing.assert_array_equal(np.asarray(mask).astype(int), [[[1, 1, 1, 0, 0, 0]]])
