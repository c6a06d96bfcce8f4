"""Vision and audio encoders: variable sizes, soft-token counts, and padding invariance."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import ConfigError, get_preset
from gemini_jax.model import vision as vision_module

CONFIG = get_preset("test")


@nnx.jit
def _images(vision, patches, coords, mask):
    return vision.encode_images(patches, coords, mask)


@nnx.jit
def _frames(vision, patches, coords, mask):
    return vision.encode_frames(patches, coords, mask)


@nnx.jit
def _audio(audio, mels, mask):
    return audio(mels, mask)


@pytest.fixture(scope="module")
def model(build_model):
    return build_model(CONFIG)


def test_vision_variable_grids_ignore_padding(model, media):
    vision = CONFIG.vision
    grids = [[(2, 3), (3, 4)], [(1, 5)]]  # 6, 12 (= max_patches) and 5 patches; row 1 slot 1 is empty
    batch = media.images(vision, grids, num_patches=15, seed=1)
    out = _images(model.vision, batch["patches"], batch["coords"], batch["mask"])
    assert out.tokens.shape == (2, 2, vision.image_soft_tokens, CONFIG.width)
    np.testing.assert_array_equal(np.asarray(out.valid[:, :, 0]), [[True, True], [True, False]])
    assert np.all(np.asarray(out.valid) == np.asarray(out.valid[:, :, :1]))

    for b, i in [(0, 0), (0, 1), (1, 0)]:
        n = grids[b][i][0] * grids[b][i][1]
        alone = _images(
            model.vision, batch["patches"][b:b + 1, i:i + 1, :n], batch["coords"][b:b + 1, i:i + 1, :n],
            batch["mask"][b:b + 1, i:i + 1, :n],
        )
        np.testing.assert_allclose(np.asarray(out.tokens[b, i]), np.asarray(alone.tokens[0, 0]), atol=1e-5)
    # Different images give different tokens (the comparison above is not vacuous).
    assert np.abs(np.asarray(out.tokens[0, 0] - out.tokens[1, 0])).max() > 1e-2


def test_vision_reads_positions_from_coords(model, media):
    vision = CONFIG.vision
    batch = media.images(vision, [[(2, 3)]], num_patches=6, seed=2)
    base = _images(model.vision, batch["patches"], batch["coords"], batch["mask"]).tokens
    # The patches are a set located by their coordinates: shuffling them together
    # with their coordinates changes nothing.
    perm = np.random.default_rng(0).permutation(6)
    shuffled = _images(model.vision, batch["patches"][:, :, perm], batch["coords"][:, :, perm], batch["mask"]).tokens
    np.testing.assert_allclose(np.asarray(shuffled), np.asarray(base), atol=1e-5)
    # The same patches laid out as a 3 x 2 grid (row and column swapped) are another image.
    swapped = _images(model.vision, batch["patches"], batch["coords"][..., ::-1], batch["mask"]).tokens
    assert np.abs(np.asarray(swapped - base)).max() > 1e-3
    # Both tables matter: shifting the grid by one row, or by one column, changes the image.
    for shift in ([1, 0], [0, 1]):
        moved = _images(model.vision, batch["patches"], batch["coords"] + np.int32(shift), batch["mask"]).tokens
        assert np.abs(np.asarray(moved - base)).max() > 1e-3


def test_video_frames_use_their_own_token_count(model, media):
    vision = CONFIG.vision
    batch = media.images(vision, [[(2, 3), (2, 3), (2, 2)]], num_patches=vision.frame_max_patches, seed=3)
    frames = _frames(model.vision, batch["patches"], batch["coords"], batch["mask"])
    images = _images(model.vision, batch["patches"], batch["coords"], batch["mask"])
    assert frames.tokens.shape == (1, 3, vision.frame_soft_tokens, CONFIG.width)
    # Shared encoder, different queries: the frame tokens are not a prefix of the image tokens.
    n = vision.frame_soft_tokens
    assert np.abs(np.asarray(frames.tokens - images.tokens[:, :, :n])).max() > 1e-3


def test_audio_durations_token_counts_and_padding(model, media):
    audio = CONFIG.audio
    samples = [[800, 12_345], [16_000, 5_000]]  # 0.05 s to 1 s
    frames = [[audio.num_mel_frames(n) for n in row] for row in samples]
    max_frames = max(max(row) for row in frames) + 7  # every clip has junk padding after it
    batch = media.audio(audio.num_mels, frames, max_frames=max_frames, seed=4)
    out = _audio(model.audio, batch["mels"], batch["mask"])
    per_token = audio.subsampling * audio.pooling
    assert out.tokens.shape == (2, 2, math.ceil(max_frames / per_token), CONFIG.width)

    for b in range(2):
        for c in range(2):
            count = int(np.sum(np.asarray(out.valid[b, c])))
            assert count == audio.num_soft_tokens(samples[b][c])
            assert np.all(np.asarray(out.valid[b, c, :count]))  # the valid tokens are a prefix
            m = frames[b][c]
            alone = _audio(model.audio, batch["mels"][b:b + 1, c:c + 1, :m], batch["mask"][b:b + 1, c:c + 1, :m])
            assert alone.tokens.shape[2] == count
            np.testing.assert_allclose(
                np.asarray(out.tokens[b, c, :count]), np.asarray(alone.tokens[0, 0]), atol=1e-5
            )


def test_audio_clip_without_frames_is_padding(model, media):
    audio = CONFIG.audio
    batch = media.audio(audio.num_mels, [[24, 0]], max_frames=24, seed=5)
    out = _audio(model.audio, batch["mels"], batch["mask"])
    np.testing.assert_array_equal(np.asarray(out.valid.sum(axis=-1)), [[3, 0]])
    assert np.all(np.isfinite(np.asarray(out.tokens)))


def test_encoders_reject_wrong_feature_sizes(model):
    with pytest.raises(ValueError, match="num_mels"):
        model.audio(jnp.zeros((1, 1, 8, CONFIG.audio.num_mels + 1)), jnp.ones((1, 1, 8), bool))
    with pytest.raises(ValueError, match="patch_size"):
        model.vision.encode_images(
            jnp.zeros((1, 1, 4, 5)), jnp.zeros((1, 1, 4, 2), jnp.int32), jnp.ones((1, 1, 4), bool)
        )


def test_vision_without_pooling_gives_one_token_per_real_patch(build_model, media):
    config = dataclasses.replace(CONFIG, vision=dataclasses.replace(CONFIG.vision, pooling="none"))
    model = build_model(config)
    vision = config.vision
    assert not hasattr(model.vision, "pool")  # no unused pooling parameters
    grids = [[(2, 3), (3, 4)], [(1, 5)]]
    batch = media.images(vision, grids, num_patches=vision.max_patches, seed=6)
    out = _images(model.vision, batch["patches"], batch["coords"], batch["mask"])
    assert out.tokens.shape == (2, 2, vision.max_patches, config.width)
    np.testing.assert_array_equal(np.asarray(out.valid), batch["mask"])
    assert [vision.num_soft_tokens(r * c) for r, c in grids[0]] == [6, 12]
    # A real patch's token does not depend on the padding after it.
    alone = _images(model.vision, batch["patches"][1:, :1, :5], batch["coords"][1:, :1, :5], batch["mask"][1:, :1, :5])
    np.testing.assert_allclose(np.asarray(out.tokens[1, 0, :5]), np.asarray(alone.tokens[0, 0]), atol=1e-5)
    # Frames go through the same projection: the same patches give the same tokens.
    frames = _frames(model.vision, batch["patches"], batch["coords"], batch["mask"])
    np.testing.assert_allclose(np.asarray(frames.tokens), np.asarray(out.tokens), atol=1e-6)


def _conv_stride2_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 stride-2 'SAME' convolution of x[N, S, S, C] written out (S even: pad one row/column at the end)."""
    n, s, _, _ = x.shape
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    out = np.zeros((n, s // 2, s // 2, kernel.shape[-1]), np.float64)
    for i in range(s // 2):
        for j in range(s // 2):
            window = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # [N, 3, 3, C]
            out[:, i, j] = np.einsum("nabc,abco->no", window, kernel)
    return out + bias


def test_patch_stem_matches_a_written_out_convolution(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, stem_channels=(5,))  # patch 4 -> 2x2x5
    config = dataclasses.replace(CONFIG, vision=vision)
    model = build_model(config)
    batch = media.images(vision, [[(2, 3)]], num_patches=6, seed=7)
    stem = model.vision.patch_embed
    patches = batch["patches"][0, 0]  # [6, 48]: each patch flattened (row, column, channel)
    pixels = patches.reshape(6, vision.patch_size, vision.patch_size, 3).astype(np.float64)
    conv = stem.convs[0]
    hidden = _conv_stride2_reference(pixels, np.asarray(conv.kernel[...]), np.asarray(conv.bias[...]))
    hidden = np.asarray(jax.nn.gelu(jnp.asarray(hidden, jnp.float32)))
    want = hidden.reshape(6, -1) @ np.asarray(stem.proj.kernel[...]) + np.asarray(stem.proj.bias[...])
    np.testing.assert_allclose(np.asarray(stem(jnp.asarray(patches))), want, atol=1e-4)
    # Convolutions stay inside their patch: shuffling patches with their coordinates changes nothing.
    perm = np.random.default_rng(1).permutation(6)
    base = _images(model.vision, batch["patches"], batch["coords"], batch["mask"]).tokens
    shuffled = _images(model.vision, batch["patches"][:, :, perm], batch["coords"][:, :, perm], batch["mask"]).tokens
    np.testing.assert_allclose(np.asarray(shuffled), np.asarray(base), atol=1e-5)


def test_stem_pixels_adds_a_linear_map_of_the_raw_patch(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, stem_channels=(5,), stem_pixels=True)
    model = build_model(dataclasses.replace(CONFIG, vision=vision))
    stem = model.vision.patch_embed
    patches = jnp.asarray(media.images(vision, [[(2, 3)]], num_patches=6, seed=5)["patches"][0, 0])
    kernel = np.asarray(stem.pixels.kernel[...])
    both = np.asarray(stem(patches))
    stem.pixels.kernel[...] = jnp.zeros_like(stem.pixels.kernel[...])
    convolved = np.asarray(stem(patches))  # the stem alone, as without stem_pixels
    pixels = np.asarray(patches, np.float64) @ kernel
    assert np.abs(pixels).max() > 0.1
    np.testing.assert_allclose(both - convolved, pixels, atol=1e-4)
    with pytest.raises(ConfigError, match="stem_pixels"):
        dataclasses.replace(CONFIG.vision, stem_pixels=True)  # no stem to add the pixels to


def test_background_contrast_sees_a_scene_alike_on_any_background(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, background_contrast=True)
    model = build_model(dataclasses.replace(CONFIG, vision=vision))
    # One image of 2 x 3 patches, a second slot of padding only (no real patch: no NaN from it).
    batch = media.images(vision, [[(2, 3)]], num_patches=8, seed=3, num_slots=2)
    patches = batch["patches"].copy()
    patches[0, 0, :6] = -0.8  # a plain background ...
    patches[0, 0, 2, :12] = 0.6  # ... and a shape over part of one patch
    model.vision.patch_embed.kernel[...] = jnp.zeros_like(model.vision.patch_embed.kernel[...])
    model.vision.patch_embed.bias[...] = jnp.zeros_like(model.vision.patch_embed.bias[...])
    base = _images(model.vision, patches, batch["coords"], batch["mask"]).tokens
    assert np.isfinite(np.asarray(base)).all()
    shifted = patches.copy()
    shifted[0, 0, :6] += np.array([0.5, -0.3, 0.2] * (vision.patch_dim // 3), np.float32)  # another colour
    moved = _images(model.vision, shifted, batch["coords"], batch["mask"]).tokens
    np.testing.assert_allclose(np.asarray(moved[0, 0]), np.asarray(base[0, 0]), atol=1e-5)
    # The median is over the image's real patches only: padding junk does not move it.
    junk = patches.copy()
    junk[0, 0, 6:] = 5.0
    np.testing.assert_allclose(np.asarray(_images(model.vision, junk, batch["coords"], batch["mask"]).tokens[0, 0]),
                               np.asarray(base[0, 0]), atol=1e-5)
    with pytest.raises(ConfigError, match="background_contrast"):
        dataclasses.replace(CONFIG.vision, background_contrast=1)


def test_frames_with_their_own_stem_leave_images_alone(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, frame_stem_channels=(5,))
    model = build_model(dataclasses.replace(CONFIG, vision=vision))
    batch = media.images(vision, [[(2, 3)]], num_patches=6, seed=3)
    args = (batch["patches"], batch["coords"], batch["mask"])
    images, frames = _images(model.vision, *args).tokens, _frames(model.vision, *args).tokens
    # Frames read the frame stem, images the shared linear embedding: perturbing the stem's
    # weights changes frame tokens only.
    stem = model.vision.frame_patch_embed
    assert isinstance(stem, vision_module.PatchStem) and not isinstance(model.vision.patch_embed, vision_module.PatchStem)
    stem.proj.kernel[...] = stem.proj.kernel[...] + 0.5
    np.testing.assert_allclose(np.asarray(_images(model.vision, *args).tokens), np.asarray(images), atol=1e-6)
    assert not np.allclose(np.asarray(_frames(model.vision, *args).tokens), np.asarray(frames), atol=1e-3)
    with pytest.raises(ConfigError, match="frame_stem_channels"):
        dataclasses.replace(CONFIG.vision, frame_stem_channels=(4, 4, 4))  # patch 4 halves twice at most


def _grid_cells_reference(coords, mask, side):
    cells = np.zeros((coords.shape[0], side * side, coords.shape[1]), bool)
    for b in range(coords.shape[0]):
        real = np.flatnonzero(mask[b])
        rows, cols = coords[b, real, 0].max() + 1, coords[b, real, 1].max() + 1
        for p in real:
            row, col = coords[b, p, 0] * side // rows, coords[b, p, 1] * side // cols
            cells[b, row * side + col, p] = True
    return cells


def test_grid_cells_cover_each_frame_once(media):
    vision = CONFIG.vision
    grids = [[(4, 4)], [(3, 5)], [(2, 1)], [(1, 1)]]  # a cell may hold 1 to 4 patches, or none
    batch = media.images(vision, grids, num_patches=16, seed=8)
    coords, mask = batch["coords"][:, 0], batch["mask"][:, 0]  # padding has junk coordinates
    for side in (1, 2, 3):
        got = np.asarray(vision_module.grid_cells(jnp.asarray(coords), jnp.asarray(mask), side=side))
        np.testing.assert_array_equal(got, _grid_cells_reference(coords, mask, side))
        np.testing.assert_array_equal(got.sum(axis=1), mask)  # every real patch in one cell, padding in none
    # The 4 x 4 grid in 2 x 2 cells: the top-left cell holds patches 0, 1, 4 and 5.
    top_left = vision_module.grid_cells(jnp.asarray(coords[:1]), jnp.asarray(mask[:1]), side=2)[0, 0]
    assert np.flatnonzero(np.asarray(top_left)).tolist() == [0, 1, 4, 5]


def test_grid_pooled_frames_keep_their_layout(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, frame_pooling="grid", frame_soft_tokens=4)
    config = dataclasses.replace(CONFIG, vision=vision)
    model = build_model(config)
    grids = [[(2, 3), (1, 1)], [(2, 2)]]
    batch = media.images(vision, grids, num_patches=vision.frame_max_patches, seed=9)
    args = (batch["patches"], batch["coords"], batch["mask"])
    frames = _frames(model.vision, *args)
    assert frames.tokens.shape == (2, 2, 4, config.width)
    np.testing.assert_array_equal(np.asarray(frames.valid[:, :, 0]), [[True, True], [True, False]])
    # A frame's tokens do not depend on the padding after it or on the other frames.
    alone = _frames(model.vision, batch["patches"][:1, :1, :6], batch["coords"][:1, :1, :6], batch["mask"][:1, :1, :6])
    np.testing.assert_allclose(np.asarray(frames.tokens[0, 0]), np.asarray(alone.tokens[0, 0]), atol=1e-5)
    # A 1 x 1 frame fills only the first cell; the other three queries see no patch (zero tokens).
    assert np.abs(np.asarray(frames.tokens[0, 1, 0])).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(frames.tokens[0, 1, 1:]), 0)
    # Each frame query reads only its own cell: the same parameters pooling whole frames (the
    # same seed builds the same weights) give other frame tokens and the same image tokens.
    whole = build_model(dataclasses.replace(config, vision=dataclasses.replace(vision, frame_pooling="attention")))
    assert np.abs(np.asarray(frames.tokens[0, 0] - _frames(whole.vision, *args).tokens[0, 0])).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(_images(model.vision, *args).tokens),
                                  np.asarray(_images(whole.vision, *args).tokens))


def test_grid_and_frame_pooling_adds_one_whole_frame_token(build_model, media):
    vision = dataclasses.replace(CONFIG.vision, frame_pooling="grid+frame", frame_soft_tokens=5)
    config = dataclasses.replace(CONFIG, vision=vision)
    model = build_model(config)
    batch = media.images(vision, [[(2, 3), (1, 1)], [(2, 2)]], num_patches=vision.frame_max_patches, seed=9)
    args = (batch["patches"], batch["coords"], batch["mask"])
    frames = _frames(model.vision, *args)
    assert frames.tokens.shape == (2, 2, 5, config.width)
    # The same parameters pooling whole frames with every query: the last query is the same
    # whole-frame token, the first four read only their cells and differ.
    whole = _frames(build_model(dataclasses.replace(config, vision=dataclasses.replace(vision, frame_pooling="attention"))).vision, *args)
    np.testing.assert_allclose(np.asarray(frames.tokens[..., 4, :]), np.asarray(whole.tokens[..., 4, :]), atol=1e-5)
    assert np.abs(np.asarray(frames.tokens[0, 0, :4] - whole.tokens[0, 0, :4])).max() > 1e-3
    # A 1 x 1 frame fills the first cell and the whole-frame token; the other cells are empty.
    np.testing.assert_array_equal(np.asarray(frames.tokens[0, 1, 1:4]), 0)
    assert np.abs(np.asarray(frames.tokens[0, 1, 4])).max() > 1e-3


@pytest.mark.parametrize("fields, match", [
    ({"frame_pooling": "mean"}, "frame_pooling must be"),
    ({"frame_pooling": "grid", "frame_soft_tokens": 3}, "square"),
    ({"frame_pooling": "grid+frame", "frame_soft_tokens": 4}, "square plus one"),
    ({"frame_pooling": "grid", "frame_soft_tokens": 4, "pooling": "none"}, "pooling='attention'"),
])
def test_grid_pooling_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(CONFIG.vision, **fields)
