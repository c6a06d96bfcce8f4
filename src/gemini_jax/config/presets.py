"""The named presets, as data: the tiny test and demo models, and the Gemini family at the
report's sizes (docs/presets.md says how each size was chosen)."""

from __future__ import annotations

import dataclasses

from gemini_jax.config.choices import DType, FramePooling
from gemini_jax.config.schema import AudioConfig, ConfigError, ModelConfig, VisionConfig

PRESETS: dict[str, ModelConfig] = {
    # Tiny, with distinct dimensions everywhere so that a wrong axis cannot hide.
    "test": ModelConfig(
        vocab_size=97,
        width=24,
        depth=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=10,
        mlp_dim=40,
        max_seq_len=256,
        vision=VisionConfig(
            patch_size=4, max_patches=12, frame_max_patches=6, max_grid=8, width=20, depth=1,
            num_heads=2, mlp_dim=36, image_soft_tokens=5, frame_soft_tokens=3, num_frames=3,
        ),
        audio=AudioConfig(num_mels=16, width=28, depth=1, num_heads=2, mlp_dim=44, conv_kernel=5),
    ),
    # The model the embedded demo trains on 2 CPU cores in minutes. Its 32-pixel video frames
    # are upscaled to 4 x 4 patches, where their shapes are as large as easy-VQA's, so what the
    # encoder learns about shapes from images reads them in frames too; four of a frame's tokens
    # each pool one quarter of it, which motion questions need, and a fifth the whole frame, which
    # names the shapes that order questions ask about ("grid+frame", docs/vision.md).
    "demo": ModelConfig(
        vocab_size=1024,
        width=64,
        depth=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        mlp_dim=192,
        max_seq_len=512,
        vision=VisionConfig(
            patch_size=16, max_patches=16, frame_max_patches=16, max_grid=16, width=64, depth=1,
            num_heads=4, mlp_dim=128, image_soft_tokens=16, frame_soft_tokens=5, num_frames=8,
            frame_pooling=FramePooling.GRID_AND_FRAME,
        ),
        audio=AudioConfig(num_mels=64, width=64, depth=2, num_heads=4, mlp_dim=128, conv_kernel=15,
                          max_seconds=8.0),
    ),
}
# The decoder of the image-generation demo (`gemini-jax train --task image_generation`): `demo`'s
# blocks at three times its depth and no encoders, since every picture it reads is one it could
# have written, as codes. Two layers drew shapes as blobs; six, trained 2,400 steps in the recipe's
# 20 minutes on 2 CPU cores, drew better than four trained 3,500 (docs/image-output.md, "Six layers").
PRESETS["demo-draw"] = dataclasses.replace(PRESETS["demo"], depth=6, vision=None, audio=None)
# A student for `gemini-jax distill --teacher runs/demo`: `demo` with every width 64 -> 40
# (decoder 2 heads x 20; every MLP keeps its ratio to its width) at the same depth, since two
# layers are already few. Everything the data pipeline reads (vocabulary, patches, soft tokens,
# mel frames) stays `demo`'s, so both models read the very same batches.
PRESETS["demo-half"] = dataclasses.replace(
    PRESETS["demo"], width=40, head_dim=20, mlp_dim=120,
    vision=dataclasses.replace(PRESETS["demo"].vision, width=40, mlp_dim=80),
    audio=dataclasses.replace(PRESETS["demo"].audio, width=40, mlp_dim=80),
)

# -- The Gemini family at the report's sizes -----------------------------------------------
#
# The report gives Nano-1 1.8B and Nano-2 3.25B parameters, a 32K context, multi-query
# attention and a 256k SentencePiece vocabulary; these presets hit those totals within 1%
# (encoders included, counted by `gemini-jax presets`). It gives no sizes for Pro and Ultra.
# We take two reference points of the same era: Pro at the compute-optimal 70B of
# Chinchilla (Hoffmann et al. 2022: 80 layers of width 8,192), Ultra at the 540B layout of
# PaLM (Chowdhery et al. 2022: 118 layers of width 18,432, multi-query, head dimension 256),
# Google's largest dense decoder before Gemini. Their encoders are a SigLIP-So400m-shaped
# ViT and a 1.8B Conformer (USM, which the report cites, has 2B).

_NANO_VISION = VisionConfig(
    patch_size=16, max_patches=1024, frame_max_patches=256, max_grid=64, width=768, depth=12, num_heads=12,
    mlp_dim=3072, image_soft_tokens=256, frame_soft_tokens=64, num_frames=16,
)
_NANO_AUDIO = AudioConfig(num_mels=128, width=512, depth=12, num_heads=8, mlp_dim=2048, conv_kernel=31)
_LARGE_VISION = VisionConfig(
    patch_size=14, max_patches=1024, frame_max_patches=256, max_grid=64, width=1152, depth=27, num_heads=16,
    mlp_dim=4304, image_soft_tokens=256, frame_soft_tokens=64, num_frames=16,
)
_LARGE_AUDIO = AudioConfig(num_mels=128, width=1536, depth=32, num_heads=16, mlp_dim=6144, conv_kernel=31)
_FAMILY = dict(vocab_size=256_000, num_kv_heads=1, max_seq_len=32_768, dtype=DType.BFLOAT16)

PRESETS |= {
    "nano-1": ModelConfig(width=2048, depth=18, num_heads=8, head_dim=256, mlp_dim=8192,
                          vision=_NANO_VISION, audio=_NANO_AUDIO, **_FAMILY),
    "nano-2": ModelConfig(width=2560, depth=26, num_heads=10, head_dim=256, mlp_dim=10240,
                          vision=_NANO_VISION, audio=_NANO_AUDIO, **_FAMILY),
    "pro": ModelConfig(width=8192, depth=80, num_heads=64, head_dim=128, mlp_dim=28672,
                       vision=_LARGE_VISION, audio=_LARGE_AUDIO, **_FAMILY),
    "ultra": ModelConfig(width=18432, depth=118, num_heads=48, head_dim=256, mlp_dim=73728,
                         vision=_LARGE_VISION, audio=_LARGE_AUDIO, **_FAMILY),
}
# The sizes the report states, which the presets must match within 3% (a test checks).
REPORTED_PARAMS = {"nano-1": 1.8e9, "nano-2": 3.25e9}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
