"""Training-time augmentation of encoded rows (numpy, seeded per row by Grain).

SpecAugment (Park et al., 2019): zero a few random bands of mel bins and spans of frames
in each audio clip. A small speech corpus is memorised within minutes; masking makes the
model rely on more than one cue per word, which is what carries to unseen voices.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Row = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecAugment:
    freq_masks: int = 2
    max_freq_width: int = 8
    time_masks: int = 2
    max_time_fraction: float = 0.08  # of the clip's real frames, per mask

    def __call__(self, row: Row, rng: np.random.Generator) -> Row:
        if "audio_mels" not in row:
            return row
        mels = row["audio_mels"].copy()  # [C, M, F]
        lengths = row["audio_mel_mask"].sum(axis=1)  # [C]
        num_mels = mels.shape[2]
        for clip, length in enumerate(lengths):
            if length == 0:
                continue
            for _ in range(self.freq_masks):
                width = int(rng.integers(0, self.max_freq_width + 1))
                start = int(rng.integers(0, max(1, num_mels - width)))
                mels[clip, :length, start : start + width] = 0.0
            max_width = int(self.max_time_fraction * length)
            for _ in range(self.time_masks):
                width = int(rng.integers(0, max_width + 1))
                start = int(rng.integers(0, max(1, length - width)))
                mels[clip, start : start + width, :] = 0.0
        return {**row, "audio_mels": mels}
