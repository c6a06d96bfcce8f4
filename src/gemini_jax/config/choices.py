"""The named choices of a model configuration, one `enum.StrEnum` each.

A member is its string ("float32" == DType.FLOAT32), so configs written as JSON, presets and
command-line overrides give plain strings, and `config.dtype == "float32"` keeps working.
"""

from __future__ import annotations

import enum


class DType(enum.StrEnum):
    """The compute dtype; parameters stay float32 whatever it is."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class PromptAttention(enum.StrEnum):
    """Who the tokens of a prompt see."""

    CAUSAL = "causal"  # only media spans are bidirectional
    # Each user turn that is not trained on (its text and media) sees itself in both
    # directions, a prefix LM as in PaliGemma; model turns stay causal.
    BIDIRECTIONAL = "bidirectional"


class PromptFormat(enum.StrEnum):
    """How data/encode.py renders a conversation."""

    CHAT = "chat"  # the Gemma chat template (our models)
    # PaliGemma's layout: `<image> x n <bos> prompt \n`, then the answer and <eos>, the whole
    # prompt one bidirectional span (what an imported PaliGemma was trained on; no turn markers).
    PREFIX = "prefix"


class AttentionImpl(enum.StrEnum):
    """How the decoder attends in training, scoring and prefill; a decode step attends over
    its cache with XLA unless CUDNN is forced."""

    # cuDNN's fused kernel on GPU (bfloat16, head_dim a multiple of 8), XLA elsewhere; given
    # each row's length when rows hold one document of a causal model, else the dense mask.
    AUTO = "auto"
    XLA = "xla"  # XLA's attention, forced
    CUDNN = "cudnn"  # cuDNN's fused kernel, forced (an error where it cannot run)
    # Never builds a [T, T] matrix (model/blockwise.py): memory linear in the length, the
    # choice for long contexts on CPU/TPU.
    BLOCKWISE = "blockwise"


class RematPolicy(enum.StrEnum):
    """What each decoder block keeps for the backward pass (training only); the rest is
    recomputed. The names are JAX's `checkpoint_policies`."""

    NONE = "none"  # keeps every activation: no recomputation
    FULL = "full"  # keeps only the block's input
    DOTS = "dots"  # keeps matmul outputs
    DOTS_NO_BATCH = "dots_no_batch"  # keeps the matmul outputs without a batch dimension


class Pooling(enum.StrEnum):
    """How the vision encoder turns an image's patch features into soft tokens."""

    # Learned queries pool the patches into a fixed number of soft tokens per image (and
    # per video frame: fewer, like the Gemini API's "media resolution").
    ATTENTION = "attention"
    # Every real patch becomes one soft token through a linear projector (PaliGemma's):
    # the count follows the image's grid.
    NONE = "none"


class FramePooling(enum.StrEnum):
    """Where a video frame's pooling queries look."""

    ATTENTION = "attention"  # every query attends over the whole frame
    # A square grid of frame_soft_tokens cells lies over the frame and each query attends
    # only to the patches under its own cell, so a frame token keeps where it looked.
    GRID = "grid"
    # The grid's cells, then one more query over the whole frame (frame_soft_tokens = a square
    # plus one): cells keep where things are, the whole-frame token what the frame shows.
    GRID_AND_FRAME = "grid+frame"


class VisionBlock(enum.StrEnum):
    """The vision encoder's block."""

    VIT = "vit"  # ours: RMSNorm blocks with a GeGLU MLP
    # SigLIP's (imported PaliGemma towers): LayerNorm with bias, attention with biases, a
    # fc1 -> tanh-GELU -> fc2 MLP, and a final LayerNorm.
    SIGLIP = "siglip"


class PositionEmbedding(enum.StrEnum):
    """The vision encoder's position embedding over the patch grid."""

    FACTORIZED = "factorized"  # a row table plus a column table
    # One table of max_grid * max_grid cells indexed by row * max_grid + column: for a fixed
    # square grid of max_grid rows, SigLIP's absolute table.
    LEARNED = "learned"
