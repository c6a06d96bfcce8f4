"""The whole model: soft-token placement, causality with media spans, packing, cached
decoding against the full forward pass, bfloat16, parameter counts and input errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import get_preset, override
from gemini_jax.model import Gemini, attention_mask, count_params
from gemini_jax.model.layers import GeGLU, RMSNorm, apply_rope

CONFIG = get_preset("test")
PLACEHOLDER = {"image": CONFIG.image_token_id, "frame": CONFIG.frame_token_id, "audio": CONFIG.audio_token_id}
FIRST_TEXT_ID = 9  # ids below are reserved (padding, turn markers, placeholders)


def text_batch(rows: list[list[tuple[str, int]]], *, length: int, seed: int) -> dict[str, np.ndarray]:
    """Token arrays for rows of parts ("text" | "image" | "frame" | "audio", count): random
    text ids, placeholder ids for media, one media span per media part, right padding."""
    rng = np.random.default_rng(seed)
    batch = len(rows)
    tokens = np.zeros((batch, length), np.int32)
    spans = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    for b, parts in enumerate(rows):
        t, span = 0, 0
        for kind, count in parts:
            if kind == "text":
                tokens[b, t:t + count] = rng.integers(FIRST_TEXT_ID, CONFIG.vocab_size, count)
            else:
                span += 1
                tokens[b, t:t + count] = PLACEHOLDER[kind]
                spans[b, t:t + count] = span
            t += count
        segments[b, :t] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)) * (segments > 0)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions.astype(np.int32), "media_spans": spans}


def with_media(batch, *, images=None, frames=None, audio=None):
    batch = dict(batch)
    for family, arrays in (("image", images), ("frame", frames)):
        if arrays is not None:
            batch.update({f"{family}_patches": arrays["patches"], f"{family}_coords": arrays["coords"],
                          f"{family}_patch_mask": arrays["mask"]})
    if audio is not None:
        batch.update({"audio_mels": audio["mels"], "audio_mel_mask": audio["mask"]})
    return batch


def test_layers_match_hand_written_references():
    rng = np.random.default_rng(20)
    # RoPE, as in HF Gemma: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [7, 100, 3000, 5, 0]], np.int32)
    inv_freq = 1.0 / (10_000.0 ** (np.arange(0, 8, 2) / 8))
    angles = positions[..., None] * inv_freq  # [B, T, 4]
    cos = np.cos(np.concatenate([angles, angles], -1))[:, :, None]
    sin = np.sin(np.concatenate([angles, angles], -1))[:, :, None]
    rotate_half = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    got = apply_rope(jnp.asarray(x), positions=jnp.asarray(positions), base=10_000.0)
    np.testing.assert_allclose(np.asarray(got), x * cos + rotate_half * sin, atol=1e-4)

    # RMSNorm with the scale applied as (1 + w).
    norm = RMSNorm(8, eps=1e-6)
    w = rng.normal(size=8).astype(np.float32)
    norm.scale[...] = jnp.asarray(w)
    want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * (1 + w)
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)

    # GeGLU with the tanh approximation of gelu.
    mlp = GeGLU(8, 6, dtype=jnp.float32, rngs=nnx.Rngs(0))
    h = x[:, :, 0]  # [B, T, D]
    gate, up = h @ np.asarray(mlp.gate[...]), h @ np.asarray(mlp.up[...])
    gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(h))), (gelu * up) @ np.asarray(mlp.down[...]),
                               rtol=1e-4, atol=1e-5)


def test_geglu_gradients_equal_those_of_the_per_row_einsums():
    """GeGLU merges the token axes before its matmuls (a CPU speed-up); its weights' and input's
    gradients are those of the same MLP written over [B, T, D]."""
    graphdef, params = nnx.split(GeGLU(8, 12, dtype=jnp.float32, rngs=nnx.Rngs(1)))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 8)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(3, 5, 8)), jnp.float32)

    def per_row(x, p):
        hidden = jax.nn.gelu(jnp.einsum("BTD,DF->BTF", x, p["gate"]), approximate=True) * jnp.einsum(
            "BTD,DF->BTF", x, p["up"])
        return jnp.vdot(jnp.einsum("BTF,FD->BTD", hidden, p["down"]), cotangent)

    want = jax.grad(per_row, argnums=(0, 1))(x, nnx.to_pure_dict(params))
    got = jax.grad(lambda x, p: jnp.vdot(nnx.merge(graphdef, p)(x), cotangent), argnums=(0, 1))(x, params)
    got = (got[0], nnx.to_pure_dict(got[1]))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


@nnx.jit
def forward(model, batch):
    return model(batch)


@nnx.jit
def run_decoder(decoder, x, mask, positions):
    return decoder(x, mask=mask, positions=positions)[0]


@pytest.fixture(scope="module")
def model(build_model):
    return build_model(CONFIG)


def _mm_batch(media):
    """Row 0: images of two sizes, two audio clips of different lengths, two video frames.
    Row 1: one longer clip and one image (its other image, clip and frame slots are padding).
    Every clip is padded to 64 mel frames (8 soft tokens), so placing the tokens needs
    the valid ones of row 0's two clips compacted."""
    audio_cfg, vision = CONFIG.audio, CONFIG.vision
    samples = [[3_000, 7_000], [9_000]]
    clip_tokens = [[audio_cfg.num_soft_tokens(n) for n in row] for row in samples]  # [[3, 6], [8]]
    n_img, n_frame = vision.image_soft_tokens, vision.frame_soft_tokens
    rows = [
        [("text", 3), ("image", n_img), ("text", 2), ("audio", clip_tokens[0][0]), ("text", 1), ("image", n_img),
         ("audio", clip_tokens[0][1]), ("text", 2), ("frame", n_frame), ("frame", n_frame), ("text", 1)],
        [("text", 2), ("audio", clip_tokens[1][0]), ("text", 1), ("image", n_img), ("text", 1)],
    ]
    batch = text_batch(rows, length=36, seed=0)
    images = media.images(vision, [[(2, 3), (3, 4)], [(1, 5)]], num_patches=vision.max_patches, seed=1)
    frames = media.images(vision, [[(2, 3), (1, 4)], []], num_patches=vision.frame_max_patches, seed=2,
                          num_slots=2)
    mel_frames = [[audio_cfg.num_mel_frames(n) for n in row] for row in samples]
    audio = media.audio(audio_cfg.num_mels, mel_frames, max_frames=64, seed=3)
    return with_media(batch, images=images, frames=frames, audio=audio), clip_tokens


@nnx.jit
def embed(model, batch):
    return model.embed(batch)


@nnx.jit
def encode_all(model, batch):
    vision = model.vision
    return (
        vision.encode_images(batch["image_patches"], batch["image_coords"], batch["image_patch_mask"]),
        vision.encode_frames(batch["frame_patches"], batch["frame_coords"], batch["frame_patch_mask"]),
        model.audio(batch["audio_mels"], batch["audio_mel_mask"]),
    )


def test_soft_tokens_land_in_their_slots(model, media):
    batch, clip_tokens = _mm_batch(media)
    embedded = np.asarray(embed(model, batch))
    tokens = batch["tokens"]

    # Reference: the encoders run on their own, and the expected soft tokens of each row
    # written out by hand (slot order, real slots only, only a clip's valid tokens).
    images, frames, audio = encode_all(model, batch)
    expected = {
        ("image", 0): np.concatenate([images.tokens[0, 0], images.tokens[0, 1]]),
        ("image", 1): np.asarray(images.tokens[1, 0]),
        ("frame", 0): np.concatenate([frames.tokens[0, 0], frames.tokens[0, 1]]),
        ("audio", 0): np.concatenate([audio.tokens[0, 0, :clip_tokens[0][0]], audio.tokens[0, 1, :clip_tokens[0][1]]]),
        ("audio", 1): np.asarray(audio.tokens[1, 0, :clip_tokens[1][0]]),
    }
    for (family, row), want in expected.items():
        got = embedded[row, tokens[row] == PLACEHOLDER[family]]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{family} tokens of row {row}")
    assert not np.any(tokens[1] == PLACEHOLDER["frame"])

    text = ~np.isin(tokens, list(PLACEHOLDER.values()))
    table = np.asarray(model.embedder.table[...])
    np.testing.assert_allclose(embedded[text], table[tokens[text]] * math.sqrt(CONFIG.width), rtol=1e-6)


def test_causal_across_text_bidirectional_inside_a_span(model, media):
    n_img = CONFIG.vision.image_soft_tokens
    batch = text_batch([[("text", 4), ("image", n_img), ("text", 6)]], length=15, seed=4)
    batch = with_media(batch, images=media.images(CONFIG.vision, [[(3, 3)]], num_patches=9, seed=5))
    base = forward(model, batch)

    # A later text token changes nothing before it: neither the image span nor earlier text.
    changed = dict(batch, tokens=batch["tokens"].copy())
    changed["tokens"][0, 11] = FIRST_TEXT_ID + (changed["tokens"][0, 11] - FIRST_TEXT_ID + 1) % 50
    after = forward(model, changed)
    np.testing.assert_array_equal(np.asarray(after.logits[0, :11]), np.asarray(base.logits[0, :11]))
    assert np.abs(np.asarray(after.logits[0, 11:] - base.logits[0, 11:])).max() > 1e-4

    # Inside the span (positions 4..8) the last soft token reaches the first one, but
    # not the text before the span; with the span removed from the mask it would not.
    x = np.asarray(base.intermediates["embedded"])
    bumped = x.copy()
    bumped[0, 8] += 1.0
    def hidden(inputs, spans):
        mask = attention_mask(segment_ids=jnp.asarray(batch["segment_ids"]), media_spans=jnp.asarray(spans))
        return np.asarray(run_decoder(model.decoder, jnp.asarray(inputs), mask, jnp.asarray(batch["positions"])))

    spans = batch["media_spans"]
    h, h_bumped = hidden(x, spans), hidden(bumped, spans)
    np.testing.assert_array_equal(h_bumped[0, :4], h[0, :4])
    assert np.abs(h_bumped[0, 4:9] - h[0, 4:9]).min(axis=-1).min() > 0  # every span token moved
    causal = np.zeros_like(spans)
    np.testing.assert_array_equal(hidden(bumped, causal)[0, :8], hidden(x, causal)[0, :8])


def test_packed_segments_do_not_interact(model):
    # Segment 2 packed after segment 1 gives the same logits as segment 2 alone.
    packed = text_batch([[("text", 6), ("text", 5)]], length=12, seed=6)
    packed["segment_ids"][0, 6:11] = 2
    packed["positions"][0, 6:11] = np.arange(5)
    alone = text_batch([[("text", 5)]], length=12, seed=7)
    alone["tokens"][0, :5] = packed["tokens"][0, 6:11]
    got = np.asarray(forward(model, packed).logits[0, 6:11])
    want = np.asarray(forward(model, alone).logits[0, :5])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_recomputes_without_changing_gradients(build_model, model, policy):
    rematted = build_model(override(CONFIG, remat=policy))  # same seed: the same parameters
    batch = text_batch([[("text", 7)], [("text", 4)]], length=8, seed=11)

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: jnp.mean(jnp.square(m(batch).hidden)))(m)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 nnx.state(grads(rematted), nnx.Param), nnx.state(grads(model), nnx.Param))


@pytest.mark.parametrize("policy", ["none", "full"])
def test_scanned_layers_equal_the_unrolled_stack(build_model, policy):
    """scan_layers runs the same blocks on the same parameters: logits, parameter gradients and
    the keys/values a prefill writes into the cache all match the unrolled decoder's."""
    config = override(CONFIG.text_only, depth=3, remat=policy)
    unrolled = build_model(config)
    scanned = build_model(override(config, scan_layers=True))  # same seed: same parameters
    batch = text_batch([[("text", 9)], [("text", 6)]], length=10, seed=12)
    np.testing.assert_allclose(np.asarray(forward(scanned, batch).logits), np.asarray(forward(unrolled, batch).logits),
                               rtol=1e-5, atol=1e-5)

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: jnp.mean(jnp.square(m(batch).hidden)))(m)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 nnx.state(grads(scanned), nnx.Param), nnx.state(grads(unrolled), nnx.Param))

    prefill = nnx.jit(lambda m, b: m.prefill(b, m.init_cache(batch_size=2, max_len=16))[1])
    for ours, theirs in zip(prefill(scanned, batch).layers, prefill(unrolled, batch).layers, strict=True):
        np.testing.assert_allclose(np.asarray(ours.k), np.asarray(theirs.k), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ours.v), np.asarray(theirs.v), rtol=1e-5, atol=1e-5)


def test_scanned_blockwise_training_memory_grows_linearly_with_length():
    """Blockwise attention inside the layer scan keeps its memory linear in the length when
    differentiated: no block-pair masks or scores for the whole sequence are computed ahead
    of the loop and held through the step (they would grow with its square)."""
    config = override(CONFIG.text_only, depth=2, remat="full", scan_layers=True, attention_impl="blockwise",
                      attention_block=32, max_seq_len=2048)

    def temp_bytes(length):
        model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
        batch = {k: jax.ShapeDtypeStruct((2, length), jnp.int32)
                 for k in ("tokens", "segment_ids", "positions", "media_spans")}
        graphdef, state = nnx.split(model)

        def loss(state, batch):
            return jnp.mean(jnp.square(nnx.merge(graphdef, state)(batch).hidden))

        compiled = jax.jit(jax.grad(loss)).lower(state, batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    # 4x the tokens: about 4x the memory if linear, 16x if the block pairs were held.
    assert temp_bytes(1024) < 8 * temp_bytes(256)


@pytest.mark.parametrize("num_kv_heads,prefix_lm", [(2, False), (1, False), (1, True)], ids=["gqa", "mqa", "prefix-lm"])
def test_cached_decoding_matches_full_forward(build_model, media, num_kv_heads, prefix_lm):
    config = override(CONFIG, num_kv_heads=num_kv_heads)
    model = build_model(config)
    n_img = CONFIG.vision.image_soft_tokens
    prompt_parts = [[("text", 2), ("image", n_img), ("text", 2)], [("text", 4)]]
    prompt_lengths = [9, 4]
    steps = 4
    images = media.images(CONFIG.vision, [[(2, 3)], []], num_patches=6, seed=8, num_slots=1)
    prompt = with_media(text_batch(prompt_parts, length=max(prompt_lengths), seed=9), images=images)
    new_tokens = np.random.default_rng(10).integers(FIRST_TEXT_ID, CONFIG.vocab_size, (2, steps)).astype(np.int32)

    # The full sequences: each row's prompt followed by its generated tokens.
    full_len = max(prompt_lengths) + steps
    full = text_batch(
        [parts + [("text", steps)] for parts in prompt_parts], length=full_len, seed=0
    )
    for b, n in enumerate(prompt_lengths):
        full["tokens"][b, :n] = prompt["tokens"][b, :n]
        full["tokens"][b, n:n + steps] = new_tokens[b]
        if prefix_lm:  # the prompt is one bidirectional span (prompt_attention="bidirectional")
            prompt["media_spans"][b, :n] = full["media_spans"][b, :n] = 1
    reference = np.asarray(forward(model, with_media(full, images=images)).logits)

    cache = model.init_cache(batch_size=2, max_len=16)
    out, cache = nnx.jit(lambda m, b, c: m.prefill(b, c))(model, prompt, cache)
    np.testing.assert_array_equal(np.asarray(cache.index), prompt_lengths)
    for b, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(np.asarray(out.logits[b, :n]), reference[b, :n], atol=1e-4)

    step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
    for s in range(steps):
        logits, cache = step(model, jnp.asarray(new_tokens[:, s]), cache)
        assert logits.shape == (2, CONFIG.vocab_size) and logits.dtype == jnp.float32
        for b, n in enumerate(prompt_lengths):
            np.testing.assert_allclose(np.asarray(logits[b]), reference[b, n + s], atol=1e-4,
                                       err_msg=f"row {b}, decode step {s}")
    np.testing.assert_array_equal(np.asarray(cache.index), np.array(prompt_lengths) + steps)


def test_bfloat16_runs_and_is_close_to_float32(build_model, model, media):
    bf16 = build_model(override(CONFIG, dtype="bfloat16"))  # same seed: the same float32 parameters
    np.testing.assert_array_equal(np.asarray(bf16.embedder.table[...]), np.asarray(model.embedder.table[...]))
    batch, _ = _mm_batch(media)
    ref, out = forward(model, batch), forward(bf16, batch)
    assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
    real = batch["segment_ids"] > 0
    got, want = np.asarray(out.logits)[real], np.asarray(ref.logits)[real]
    assert np.all(np.isfinite(got))
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert np.mean(got.argmax(-1) == want.argmax(-1)) > 0.8


def test_count_params_against_built_models_and_formula(model, decoder_params):
    counts = count_params(CONFIG)
    sizes = {
        name: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
        for name, module in (("vision", model.vision), ("audio", model.audio))
    }
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert counts == {"decoder": decoder_params(CONFIG), **sizes, "total": total}

    demo = get_preset("demo")
    demo_counts = count_params(demo)
    assert demo_counts["decoder"] == decoder_params(demo)
    assert demo_counts["total"] == sum(demo_counts[k] for k in ("decoder", "vision", "audio"))
    assert min(demo_counts["vision"], demo_counts["audio"]) > 0

    # One model with the real initialisers (a one-layer text model keeps compiling short).
    small = override(CONFIG.text_only, depth=1)
    built = Gemini(small, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(built, nnx.Param))
    assert count_params(small) == {"decoder": sum(p.size for p in params), "vision": 0, "audio": 0,
                                   "total": sum(p.size for p in params)}
    assert not np.any(np.asarray(built.decoder.final_norm.scale[...]))  # 1 + w starts at 1
    # Counts come from one- and two-block models: deeper stacks of each kind are counted exactly.
    deep = override(CONFIG, depth=3, vision=dataclasses.replace(CONFIG.vision, depth=4),
                    audio=dataclasses.replace(CONFIG.audio, depth=3))
    deep_model = Gemini(deep, rngs=nnx.Rngs(0))
    deep_sizes = {name: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
                  for name, module in (("vision", deep_model.vision), ("audio", deep_model.audio))}
    assert count_params(deep) == {"decoder": decoder_params(deep), **deep_sizes,
                                  "total": sum(x.size for x in jax.tree.leaves(nnx.state(deep_model, nnx.Param)))}
    table_std = float(np.std(np.asarray(built.embedder.table[...])))
    assert abs(table_std * math.sqrt(small.width) - 1.0) < 0.1


def test_bad_batches_raise_clear_errors(build_model, media):
    text_only = build_model(CONFIG.text_only)
    n_img = CONFIG.vision.image_soft_tokens
    batch = text_batch([[("text", 2), ("image", n_img)]], length=8, seed=11)
    images = media.images(CONFIG.vision, [[(2, 2)]], num_patches=4, seed=12)
    with pytest.raises(ValueError, match="no vision encoder"):
        text_only(with_media(batch, images=images))
    with pytest.raises(ValueError, match="lacks"):
        text_only({"tokens": batch["tokens"]})
    full = build_model(CONFIG)
    two_images = media.images(CONFIG.vision, [[(2, 2), (1, 2)]], num_patches=4, seed=13)
    with pytest.raises(ValueError, match="row 0 has 5 image placeholder tokens .* 10 soft tokens"):
        full(with_media(batch, images=two_images))
