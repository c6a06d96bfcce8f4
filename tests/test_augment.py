"""SpecAugment masks real frames only, reproducibly, without touching its input."""

import numpy as np

from gemini_jax.data import media
from gemini_jax.data.augment import ImageAugment, SpecAugment, _unpatchify, speed_perturbed
from gemini_jax.data.corpora import shapes


def test_spec_augment_masks_only_real_frames_and_follows_its_generator():
    mels = np.random.default_rng(1).normal(size=(1, 50, 16)).astype(np.float32) + 5.0
    mask = np.zeros((1, 50), bool)
    mask[0, :30] = True
    row = {"audio_mels": mels, "audio_mel_mask": mask}
    augment = SpecAugment(freq_masks=2, max_freq_width=4, time_masks=2, max_time_fraction=0.2)
    out = augment(row, np.random.default_rng(7))
    zeroed = out["audio_mels"] == 0.0
    assert zeroed[0, :30].any()  # something was masked in the clip ...
    np.testing.assert_array_equal(out["audio_mels"][0, 30:], mels[0, 30:])  # ... and nothing after it
    np.testing.assert_array_equal(out["audio_mels"], augment(row, np.random.default_rng(7))["audio_mels"])
    np.testing.assert_array_equal(row["audio_mels"], mels)  # the input row is not modified


# ---- ImageAugment -------------------------------------------------------------------------------


EVERYTHING = ImageAugment(scale_probability=1.0, recolour_probability=1.0, noise_probability=0.0)


def frames_row(clip) -> dict:
    frames = shapes.to_array(shapes.render(clip, frames=8, size=32))
    patches = [media.image_patches(f, patch_size=16, max_patches=16) for f in frames]
    return {"frame_patches": np.stack([p.patches for p in patches]), "frame_coords": np.stack([p.coords for p in patches]),
            "frame_patch_mask": np.ones((8, 16), bool)}


def pictures(row, family="frame"):
    return np.stack([_unpatchify(row[f"{family}_patches"][s], row[f"{family}_coords"][s], row[f"{family}_patch_mask"][s])
                     for s in range(row[f"{family}_patches"].shape[0])])


def shape_pixels(images, colour):
    """[F, H, W] where a frame shows `colour` (in [-1, 1] units)."""
    return np.linalg.norm(images - (np.asarray(colour) / 127.5 - 1.0), axis=-1) < 0.3


def test_augmented_clips_keep_what_their_questions_ask():
    red = shapes.COLOURS["red"]
    moving = shapes.Motion("square", "red", "ivory", "right", x=8, y=16, radius=5, speed=2)
    growing = shapes.Growth("circle", "red", "mint", x=16, y=16, dx=1, dy=0, radius_start=4, radius_end=9)
    for seed in range(8):
        for clip, check in ((moving, "right"), (growing, "bigger")):
            row = frames_row(clip)
            out = EVERYTHING(row, np.random.default_rng(seed))
            before, after = pictures(row), pictures(out)
            assert not np.allclose(before, after)
            shown = shape_pixels(after, red)
            assert shown.any(axis=(1, 2)).all()  # the shape stays in every frame
            if check == "right":
                columns = [np.nonzero(s)[1].mean() for s in shown]
                assert all(b > a for a, b in zip(columns, columns[1:]))
            else:
                areas = shown.sum(axis=(1, 2))
                assert areas[-1] > areas[0]
            # One background for every frame of a clip, not the ivory or mint one drawn.
            corners = after[:, 0, 0]
            assert np.allclose(corners, corners[0], atol=1e-5)
            assert np.linalg.norm(corners[0] - before[0, 0, 0]) > 0.05
    # Follows its generator, and leaves its input alone.
    row = frames_row(moving)
    copy = {k: v.copy() for k, v in row.items()}
    a, b = ImageAugment()(row, np.random.default_rng(3)), ImageAugment()(row, np.random.default_rng(3))
    np.testing.assert_array_equal(a["frame_patches"], b["frame_patches"])
    np.testing.assert_array_equal(row["frame_patches"], copy["frame_patches"])


def test_by_default_about_a_quarter_of_clips_change():
    row = frames_row(shapes.Motion("square", "red", "ivory", "right", x=8, y=16, radius=5, speed=2))
    changed = [not np.array_equal(ImageAugment()(row, np.random.default_rng(seed))["frame_patches"],
                                  row["frame_patches"]) for seed in range(400)]
    assert 0.2 < np.mean(changed) < 0.34  # 1 - 0.9 ** 3 = 0.27 drawn


def test_a_new_background_stays_far_from_the_shape_and_noise_stays_in_range():
    black = shapes.Motion("circle", "black", "ivory", "down", x=16, y=8, radius=6, speed=2)
    augment = ImageAugment(scale_probability=0.0, recolour_probability=1.0, noise_probability=1.0,
                           recolour=(-1.0, -0.6))  # only near-black backgrounds: none far enough from black
    out = pictures(augment(frames_row(black), np.random.default_rng(0)))
    before = pictures(frames_row(black))
    assert out.min() >= -1.0 and out.max() <= 1.0
    # No colour was far enough from the black shape: the light background stays (under noise).
    assert np.abs(out[:, 0, 0] - before[:, 0, 0]).max() < 0.6


def test_images_that_are_not_a_full_grid_are_left_alone():
    image = np.full((64, 64, 3), 240, np.uint8)
    image[20:40, 20:40] = (255, 0, 0)
    patches = media.image_patches(image, patch_size=16, max_patches=16)
    row = {"image_patches": np.concatenate([patches.patches[None], np.zeros((1, 16, 768), np.float32)]),
           "image_coords": np.concatenate([patches.coords[None], np.zeros((1, 16, 2), np.int32)]),
           "image_patch_mask": np.array([[True] * 16, [False] * 16])}
    row["image_patch_mask"][0, 5] = False  # a hole: not a grid this module can redraw
    out = EVERYTHING(row, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image_patches"], row["image_patches"])
    row["image_patch_mask"][0, 5] = True
    out = EVERYTHING(row, np.random.default_rng(0))
    assert not np.array_equal(out["image_patches"][0], row["image_patches"][0])
    np.testing.assert_array_equal(out["image_patches"][1], 0.0)  # an empty slot stays empty


def test_speed_perturbation_scales_duration_and_pitch_together():
    rate = 16_000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)  # 1 s at 440 Hz
    for speed in (0.8, 1.25):
        out = speed_perturbed(tone, speed)
        assert out.dtype == np.float32 and abs(len(out) - rate / speed) <= 2
        spectrum = np.abs(np.fft.rfft(out))
        peak_hz = np.argmax(spectrum) * rate / len(out)
        assert abs(peak_hz - 440 * speed) < 3
