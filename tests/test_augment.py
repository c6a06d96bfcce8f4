"""SpecAugment masks real frames only, reproducibly, without touching its input."""

import numpy as np

from gemini_jax.data.augment import SpecAugment


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
