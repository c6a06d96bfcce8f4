"""Model configurations: frozen dataclasses whose choices are enums, and the named presets.

`schema` holds the dataclasses (ModelConfig, VisionConfig, AudioConfig) and their plain-data
round trip, `choices` the enums of their named options, `presets` the presets as data. Every
name is importable from here: `from gemini_jax.config import ModelConfig, get_preset`.
"""

from gemini_jax.config.choices import (
    AttentionImpl,
    DType,
    FramePooling,
    Pooling,
    PositionEmbedding,
    PromptAttention,
    PromptFormat,
    RematPolicy,
    VisionBlock,
)
from gemini_jax.config.presets import PRESETS, REPORTED_PARAMS, get_preset
from gemini_jax.config.schema import (
    AUDIO_TOKEN_ID,
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    FRAME_TOKEN_ID,
    IMAGE_TOKEN_ID,
    PAD_ID,
    START_OF_TURN_ID,
    UNK_ID,
    AudioConfig,
    ConfigError,
    ImageOutputConfig,
    ModelConfig,
    VisionConfig,
    config_from_dict,
    config_to_dict,
    override,
)

# The accepted values as plain strings, for argparse `choices` (benchmarks/ use them).
REMAT_POLICIES = tuple(p.value for p in RematPolicy)
ATTENTION_IMPLS = tuple(a.value for a in AttentionImpl)
PROMPT_FORMATS = tuple(f.value for f in PromptFormat)

__all__ = [
    "ATTENTION_IMPLS", "AUDIO_TOKEN_ID", "BOS_ID", "END_OF_TURN_ID", "EOS_ID", "FRAME_TOKEN_ID",
    "IMAGE_TOKEN_ID", "PAD_ID", "PRESETS", "PROMPT_FORMATS", "REMAT_POLICIES", "REPORTED_PARAMS",
    "START_OF_TURN_ID", "UNK_ID", "AttentionImpl", "AudioConfig", "ConfigError", "DType", "FramePooling",
    "ImageOutputConfig", "ModelConfig", "Pooling", "PositionEmbedding", "PromptAttention", "PromptFormat", "RematPolicy",
    "VisionBlock", "VisionConfig", "config_from_dict", "config_to_dict", "get_preset", "override",
]
