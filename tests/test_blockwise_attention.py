"""Blockwise attention equals naive masked attention (values and gradients) under every
kind of mask, and the whole model gives the same logits and gradients with it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import PRESETS, AttentionImpl, ConfigError
from gemini_jax.model.attention import Attention, dot_product_attention
from gemini_jax.model.blockwise import blockwise_attention
from gemini_jax.model.mask import attention_mask


def naive_attention(q, k, v, mask):
    """The definition, written out: q[B, T, N, H], k/v [B, S, K, H], mask bool[B, T, S]."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # [B, S, N, H]
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) * jnp.float32(q.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None], scores, jnp.float32(-1e30))
    out = jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(scores, axis=-1), v)
    return jnp.where(mask.any(axis=-1)[:, :, None, None], out, jnp.float32(0))


def _ids(batch: int, length: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """segment_ids, media_spans int32[B, T] for one kind of mask."""
    segments = np.ones((batch, length), np.int32)
    spans = np.zeros((batch, length), np.int32)
    if kind in ("packed", "media"):
        # Row 0: three documents then padding; row 1: leading padding (no key at all for
        # those queries), then two documents.
        a, b = length // 3, (2 * length) // 3
        segments[0, a:b], segments[0, b:], segments[0, length - 3 :] = 2, 3, 0
        segments[1, :2], segments[1, length // 2 :] = 0, 2
    if kind == "media":
        # Spans that straddle block boundaries, one at a segment's start, one at the end.
        spans[0, 1:6], spans[0, length // 3 : length // 3 + 4] = 1, 2
        spans[1, length // 2 - 5 : length // 2] = 4
    return segments, spans


def _inputs(batch, length, heads, kv_heads, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, length, heads, head_dim))
    k, v = (rng.normal(size=(batch, length, kv_heads, head_dim)) for _ in range(2))
    w = rng.normal(size=(batch, length, heads, head_dim))  # a random cotangent for the gradients
    return tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v, w))


CASES = [
    # kind, length, heads N, kv heads K, (q_block, kv_block)
    ("causal", 32, 2, 2, (8, 8)),  # multi-head, exact multiples
    ("causal", 37, 4, 1, (8, 16)),  # MQA, odd length, unequal blocks
    ("packed", 29, 6, 2, (5, 7)),  # GQA, blocks that divide nothing
    ("packed", 40, 4, 2, (64, 64)),  # one block bigger than the sequence
    ("media", 41, 4, 1, (4, 8)),
    ("media", 33, 6, 3, (16, 3)),
]


@pytest.mark.parametrize("kind,length,heads,kv_heads,blocks", CASES)
def test_blockwise_matches_naive(kind, length, heads, kv_heads, blocks):
    q, k, v, w = _inputs(2, length, heads, kv_heads, head_dim=8)
    segments, spans = (jnp.asarray(a) for a in _ids(2, length, kind))
    mask = attention_mask(segment_ids=segments, media_spans=spans)
    q_block, kv_block = blocks

    @jax.jit  # one compilation instead of op-by-op dispatch inside the scans
    def blockwise(q, k, v):
        return blockwise_attention(q, k, v, segment_ids=segments, media_spans=spans, q_block=q_block,
                                   kv_block=kv_block)

    out = blockwise(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(out, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    if kind != "causal":
        assert not np.asarray(mask).any(axis=-1).all()  # some queries see nothing ...
        np.testing.assert_array_equal(np.asarray(out)[~np.asarray(mask).any(axis=-1)], 0)  # ... and get zeros

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)

    for got, want in zip(grads(blockwise), grads(lambda q, k, v: naive_attention(q, k, v, mask)), strict=True):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_blockwise_checkpointed_autodiff_matches():
    """The plain-autodiff variant (kept to measure memory) gives the same gradients."""
    q, k, v, w = _inputs(1, 23, 4, 2, head_dim=8)
    segments, spans = (jnp.asarray(a) for a in _ids(2, 23, "media"))
    segments, spans = segments[:1], spans[:1]

    def loss(q, k, v, checkpoint_steps):
        out = blockwise_attention(q, k, v, segment_ids=segments, media_spans=spans, q_block=4, kv_block=6,
                                  checkpoint_steps=checkpoint_steps)
        return jnp.sum(out * w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    for got, want in zip(grad(q, k, v, True), grad(q, k, v, False), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_blockwise_keys_other_than_queries():
    """Separate key ids and indices, as a chunk attending to a cache: T queries at indices
    5.., S keys of which the last are invalid (segment 0)."""
    q, _, _, _ = _inputs(2, 4, 4, 2, head_dim=8, seed=1)
    _, k, v, _ = _inputs(2, 11, 4, 2, head_dim=8, seed=2)
    segments = jnp.ones((2, 4), jnp.int32)
    kv_segments = jnp.asarray(np.arange(11)[None, :] < np.asarray([[9], [7]]), jnp.int32)  # [B, S]
    q_indices = jnp.asarray(np.arange(4)[None, :] + np.asarray([[5], [3]]), jnp.int32)  # [B, T]
    ids = {"segment_ids": segments, "media_spans": jnp.zeros_like(segments), "kv_segment_ids": kv_segments,
           "q_indices": q_indices}
    out = blockwise_attention(q, k, v, **ids, q_block=3, kv_block=4)
    np.testing.assert_allclose(out, naive_attention(q, k, v, attention_mask(**ids)), atol=1e-5, rtol=1e-5)


def test_blockwise_bfloat16():
    """bfloat16 inputs: bfloat16 output and gradients, float32 statistics inside."""
    q, k, v, w = _inputs(2, 30, 4, 1, head_dim=8)
    segments, spans = (jnp.asarray(a) for a in _ids(2, 30, "media"))
    mask = attention_mask(segment_ids=segments, media_spans=spans)
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]

    def loss(q, k, v):
        out = blockwise_attention(q, k, v, segment_ids=segments, media_spans=spans, q_block=8, kv_block=8)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*bf)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    want = naive_attention(*(a.astype(jnp.float32) for a in bf), mask)
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=3e-2, rtol=3e-2)


def test_blockwise_gradient_memory_is_linear():
    """Compiled (never run) gradient of blockwise attention: doubling the length about
    doubles its temporary memory, where the dense path's quadruples."""
    def temp_bytes(length: int, blockwise: bool) -> int:
        spec = jax.ShapeDtypeStruct
        q, kv, ids = spec((1, length, 4, 16), jnp.float32), spec((1, length, 1, 16), jnp.float32), spec(
            (1, length), jnp.int32)

        def loss(q, k, v, segments):
            if blockwise:
                out = blockwise_attention(q, k, v, segment_ids=segments, media_spans=segments, q_block=128,
                                          kv_block=128)
            else:
                out = naive_attention(q, k, v, attention_mask(segment_ids=segments, media_spans=segments))
            return jnp.sum(out * out)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, ids).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(2048, True) < 2.5 * temp_bytes(1024, True)
    assert temp_bytes(2048, False) > 3.5 * temp_bytes(1024, False)


def test_attention_impl_is_validated():
    with pytest.raises(ConfigError, match="attention_impl must be one of"):
        dataclasses.replace(PRESETS["test"], attention_impl="flash")
    with pytest.raises(ConfigError, match="attention_block"):
        dataclasses.replace(PRESETS["test"], attention_block=0)
    assert PRESETS["test"].attention_impl == "auto"


@pytest.mark.parametrize("given, decode_step, dense_prefill", [
    ("auto", AttentionImpl.XLA, AttentionImpl.AUTO),
    ("blockwise", AttentionImpl.XLA, AttentionImpl.AUTO),  # blockwise has no dense-mask path
    ("xla", AttentionImpl.XLA, AttentionImpl.XLA),
    ("cudnn", AttentionImpl.CUDNN, AttentionImpl.CUDNN),  # forced means forced, decode steps too
])
def test_attention_takes_its_implementation_as_a_string_and_routes_dense_masks(given, decode_step, dense_prefill):
    attention = Attention(width=8, num_heads=2, num_kv_heads=1, head_dim=4, rope_base=None, dtype=jnp.float32,
                          rngs=nnx.Rngs(0), implementation=given)
    assert attention.implementation is AttentionImpl(given)
    assert attention._dense_implementation(cached=True) is decode_step
    assert attention._dense_implementation(cached=False) is dense_prefill
    with pytest.raises(ValueError, match="'flash' is not a valid AttentionImpl"):
        Attention(width=8, num_heads=2, num_kv_heads=1, head_dim=4, rope_base=None, dtype=jnp.float32,
                  rngs=nnx.Rngs(0), implementation="flash")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the error is for machines without cuDNN")
def test_cudnn_without_gpu_is_a_clear_error():
    q, k, v, _ = _inputs(1, 8, 2, 1, head_dim=8)
    mask = attention_mask(segment_ids=jnp.ones((1, 8), jnp.int32), media_spans=jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _text_batch(config, length: int) -> dict[str, jnp.ndarray]:
    """Two rows: packed documents with padding and a bidirectional span (as a prefix-LM
    prompt gives), so that every mask rule is in play."""
    rng = np.random.default_rng(0)
    segments, spans = _ids(2, length, "media")
    positions = np.zeros_like(segments)
    for b in range(2):
        for s in np.unique(segments[b]):
            where = segments[b] == s
            positions[b, where] = np.arange(where.sum())
    tokens = rng.integers(10, config.vocab_size, (2, length)).astype(np.int32)
    targets = rng.integers(10, config.vocab_size, (2, length)).astype(np.int32)
    arrays = {"tokens": tokens, "targets": targets, "loss_mask": (segments > 0).astype(np.float32),
              "segment_ids": segments, "positions": positions, "media_spans": spans}
    return {k: jnp.asarray(a) for k, a in arrays.items()}


def _same_params(model, config):
    """`model`'s parameters in a model built from `config` (same parameter tree)."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def test_model_blockwise_matches_default(build_model):
    """Same logits and loss gradients with attention_impl="blockwise" (small blocks, so
    that the sequence spans several) as with the default dense path."""
    # Bidirectional prompts: a text-only model that honours the batch's spans.
    config = dataclasses.replace(PRESETS["test"].text_only, prompt_attention="bidirectional")
    dense = build_model(config)
    blockwise = _same_params(dense, dataclasses.replace(config, attention_impl="blockwise", attention_block=8))
    batch = _text_batch(config, 27)

    def loss_and_logits(model):
        def loss(model):
            logits = model(batch).logits  # [B, T, V]
            losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], axis=-1)[..., 0]
            return jnp.sum(losses * batch["loss_mask"]) / jnp.sum(batch["loss_mask"]), logits

        return nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)

    (loss_d, logits_d), grads_d = loss_and_logits(dense)
    (loss_b, logits_b), grads_b = loss_and_logits(blockwise)
    np.testing.assert_allclose(logits_b, logits_d, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_b, loss_d, rtol=1e-6)
    flat_d, flat_b = jax.tree.leaves(grads_d), jax.tree.leaves(grads_b)
    assert len(flat_d) == len(flat_b)
    for got, want in zip(flat_b, flat_d, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_prefill_blockwise_matches_default(build_model):
    """Prefill (blockwise over the prompt) fills the same cache; decode then continues densely."""
    config = PRESETS["test"].text_only
    dense = build_model(config)
    blockwise = _same_params(dense, dataclasses.replace(config, attention_impl="blockwise", attention_block=4))
    length = 11
    prompt_lengths = np.asarray([11, 6])
    segments = (np.arange(length)[None, :] < prompt_lengths[:, None]).astype(np.int32)
    tokens = np.random.default_rng(1).integers(10, config.vocab_size, (2, length)).astype(np.int32)
    arrays = {"tokens": tokens * segments, "segment_ids": segments, "media_spans": np.zeros_like(segments),
              "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (2, length))}
    batch = {k: jnp.asarray(a) for k, a in arrays.items()}

    @nnx.jit
    def prefill_and_step(model, batch):
        out, cache = model.prefill(batch, model.init_cache(batch_size=2, max_len=16))
        logits, cache = model.decode_step(jnp.asarray([11, 12], jnp.int32), cache)
        return out.logits * batch["segment_ids"][..., None].astype(jnp.float32), logits, cache

    results = [prefill_and_step(model, batch) for model in (dense, blockwise)]
    for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0]), strict=True):
        if jnp.issubdtype(want.dtype, jnp.floating):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        else:  # the cache's valid slots and write index
            np.testing.assert_array_equal(got, want)


def test_causal_model_ignores_spans_on_every_path(build_model):
    """A model with no encoders and causal prompts attends causally (`SegmentMask.causal`,
    which lets cuDNN skip the keys above the diagonal): spans in its batch are ignored alike
    by the dense and the blockwise path, and the logits equal the spanless batch's."""
    config = PRESETS["test"].text_only  # prompt_attention="causal"
    dense = build_model(config)
    blockwise = _same_params(dense, dataclasses.replace(config, attention_impl="blockwise", attention_block=8))
    batch = _text_batch(config, 27)  # packed, padded, with a bidirectional span
    spanless = {**batch, "media_spans": jnp.zeros_like(batch["media_spans"])}
    want = dense(spanless).logits
    np.testing.assert_allclose(dense(batch).logits, want, atol=1e-6)
    np.testing.assert_allclose(blockwise(batch).logits, want, atol=1e-5, rtol=1e-5)
    # The same model with bidirectional prompts honours the span: different logits.
    honouring = _same_params(dense, dataclasses.replace(config, prompt_attention="bidirectional"))
    assert not np.allclose(honouring(batch).logits, want, atol=1e-3)
    np.testing.assert_allclose(honouring(spanless).logits, want, atol=1e-6)


@pytest.mark.parametrize("rows", ["one_document", "packed"])
def test_causal_self_attention_matches_naive(rows):
    """Both branches of the causal path: rows of one document (attended by length, the
    mask-free kernel on GPU) and packed rows (attended under the mask), values and
    gradients; padding queries give zeros."""
    from gemini_jax.model.attention import causal_self_attention, one_document_per_row
    from gemini_jax.model.mask import SegmentMask

    q, k, v, w = _inputs(2, 13, 4, 1, head_dim=8)
    if rows == "one_document":
        segments = jnp.asarray([[3] * 13, [1] * 9 + [0] * 4], jnp.int32)
    else:
        segments = jnp.asarray([[1] * 6 + [2] * 7, [1] * 9 + [0] * 4], jnp.int32)
    assert bool(one_document_per_row(segments)) == (rows == "one_document")
    spans = jnp.zeros_like(segments)
    mask = attention_mask(segment_ids=segments, media_spans=spans)

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v) * w)

    def fast(q, k, v):
        return causal_self_attention(q, k, v, segments=SegmentMask(segments, spans, causal=True))

    got, got_grads = jax.value_and_grad(lambda *a: loss(fast, *a), argnums=(0, 1, 2))(q, k, v)
    want, want_grads = jax.value_and_grad(lambda *a: loss(lambda *b: naive_attention(*b, mask), *a),
                                          argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, r in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)
    out = fast(q, k, v)
    np.testing.assert_array_equal(out[1, 9:], 0.0)
