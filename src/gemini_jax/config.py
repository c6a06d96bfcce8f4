"""Model configurations: frozen dataclasses, and the named presets as data.

Every number the model uses is a field here. Derived values are properties, so a
config can never disagree with itself. The data pipeline reads the same config to
know how many placeholder slots each image, video frame or audio clip takes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

DType = Literal["float32", "bfloat16"]
Pooling = Literal["attention", "none"]
FramePooling = Literal["attention", "grid"]
PromptAttention = Literal["causal", "bidirectional"]
AttentionImpl = Literal["auto", "xla", "cudnn", "blockwise"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blockwise")
PromptFormat = Literal["chat", "prefix"]
PROMPT_FORMATS = ("chat", "prefix")
VisionBlock = Literal["vit", "siglip"]
PositionEmbedding = Literal["factorized", "learned"]

# Token ids the tokenizer reserves (see data/tokenizer.py). The model only needs
# the three placeholder ids; the rest are listed so the layout lives in one place.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 4, 5
IMAGE_TOKEN_ID, FRAME_TOKEN_ID, AUDIO_TOKEN_ID = 6, 7, 8


class ConfigError(ValueError):
    """A configuration (preset name, field name or value) that cannot be used."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A ViT over square patches, for images and for video frames.

    An image is resized, keeping its aspect ratio, to the largest size whose patch
    grid fits in `max_patches` (variable resolution). With `pooling="attention"`,
    learned queries pool the patch features into a fixed number of soft tokens:
    `image_soft_tokens` per image and `frame_soft_tokens` per video frame (video frames
    are many, so they get fewer, like the "media resolution" setting of the Gemini API).
    With `pooling="none"` every real patch becomes one soft token (a linear projector,
    as in PaliGemma), so the count follows the image's grid and the `*_soft_tokens`
    fields are unused. `frame_pooling="grid"` lays a square grid of `frame_soft_tokens` cells
    over each frame and lets each frame query attend only to the patches under its own cell,
    so a frame token keeps where in the frame it looked: in a 10,000-step demo run on clips
    with light backgrounds and frames upscaled to 4 x 4 patches, learned queries over whole
    frames answered which shape appears first (100%) or last (88%) but not which way a shape
    moves (26%, chance); queries per cell answered all three (90%, 63%, 99.5%).
    `stem_channels` puts stride-2 3x3 convolutions (one per entry,
    with that many channels) inside each patch before its linear embedding, an early
    convolutional stem (Xiao et al. 2021); () embeds raw pixels. `frame_stem_channels` None
    embeds video frames with the images' patch embedding; a tuple gives frames a patch
    embedding of their own with that stem (() a linear one), the rest of the encoder shared:
    small objects inside the patches of low-resolution frames need other first-layer features
    than the large shapes of images (trained on video alone, 800 steps of "which shape appears
    first?" on 6,000 clips: 84% held-out with a 32-channel stem, 57% with a linear embedding).

    The remaining options describe imported SigLIP towers (PaliGemma) and keep our own
    ViT when left at their defaults. `block="siglip"`: LayerNorm (with bias) blocks,
    attention with biases and a fc1 -> tanh-GELU -> fc2 MLP, and a final LayerNorm,
    instead of RMSNorm blocks with a GeGLU MLP. `position_embedding="learned"`: one table
    of max_grid * max_grid entries indexed by row * max_grid + column (for a fixed square
    grid of max_grid rows this is SigLIP's absolute table) instead of row + column tables.
    `norm_eps` None uses the decoder's; `projector_bias` adds a bias to the projection
    to the decoder width (PaliGemma's multi_modal_projector has one).
    `keep_aspect_ratio=False` stretches every image (and frame) to the full square grid of
    min(max_grid, floor(sqrt(max_patches))) patches a side, as PaliGemma's processor resizes
    to its square image_size: a SigLIP tower with a fixed grid was never shown anything else.
    """

    patch_size: int = 16
    max_patches: int = 16
    frame_max_patches: int = 16
    max_grid: int = 32  # rows (and columns) the 2-D position tables cover
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    image_soft_tokens: int = 16
    frame_soft_tokens: int = 4
    num_frames: int = 8  # frames sampled uniformly from a video
    pooling: Pooling = "attention"
    frame_pooling: FramePooling = "attention"
    stem_channels: tuple[int, ...] = ()
    frame_stem_channels: tuple[int, ...] | None = None
    block: VisionBlock = "vit"
    position_embedding: PositionEmbedding = "factorized"
    norm_eps: float | None = None
    projector_bias: bool = False
    keep_aspect_ratio: bool = True

    def __post_init__(self):
        if not isinstance(self.keep_aspect_ratio, bool):
            raise ConfigError(f"vision.keep_aspect_ratio must be true or false, got {self.keep_aspect_ratio!r}")
        if self.pooling not in ("attention", "none"):
            raise ConfigError(f"vision.pooling must be 'attention' or 'none', got {self.pooling!r}")
        if self.frame_pooling not in ("attention", "grid"):
            raise ConfigError(f"vision.frame_pooling must be 'attention' or 'grid', got {self.frame_pooling!r}")
        tokens = self.frame_soft_tokens
        square = isinstance(tokens, int) and tokens > 0 and math.isqrt(tokens) ** 2 == tokens
        if self.frame_pooling == "grid" and (self.pooling != "attention" or not square):
            raise ConfigError(
                f"vision.frame_pooling='grid' needs pooling='attention' (pooled soft tokens) and a square "
                f"frame_soft_tokens (1, 4, 9, ...), got pooling={self.pooling!r}, frame_soft_tokens={self.frame_soft_tokens}"
            )
        if self.block not in ("vit", "siglip"):
            raise ConfigError(f"vision.block must be 'vit' or 'siglip', got {self.block!r}")
        if self.position_embedding not in ("factorized", "learned"):
            raise ConfigError(f"vision.position_embedding must be 'factorized' or 'learned', "
                              f"got {self.position_embedding!r}")
        if self.norm_eps is not None and not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ConfigError(f"vision.norm_eps must be a positive number or None, got {self.norm_eps!r}")
        if not isinstance(self.projector_bias, bool):
            raise ConfigError(f"vision.projector_bias must be true or false, got {self.projector_bias!r}")
        if self.block == "siglip" and self.width % self.num_heads:
            raise ConfigError(f"vision.width ({self.width}) must be a multiple of vision.num_heads "
                              f"({self.num_heads}) for block='siglip' (head dimension = width / heads)")
        object.__setattr__(self, "stem_channels", tuple(self.stem_channels))  # JSON gives a list
        if self.frame_stem_channels is not None:
            object.__setattr__(self, "frame_stem_channels", tuple(self.frame_stem_channels))
        for name in ("stem_channels", "frame_stem_channels"):
            stem = getattr(self, name)
            if stem is not None and self.patch_size % (1 << len(stem)):
                raise ConfigError(f"vision.patch_size {self.patch_size} must be divisible by 2 per stem convolution "
                                  f"({name}={list(stem)})")

    def num_soft_tokens(self, num_patches: int, *, frame: bool = False) -> int:
        """Soft tokens for one image (or video frame) of `num_patches` real patches."""
        if self.pooling == "none":
            return num_patches
        return self.frame_soft_tokens if frame else self.image_soft_tokens

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class AudioConfig:
    """A USM-style encoder: log-mel -> 2 stride-2 convolutions -> Conformer -> pooling.

    Soft tokens come at a fixed rate: one per `samples_per_token` input samples
    (hop 160 x subsampling 4 x pooling 2 = 1,280 samples = 80 ms, 12.5 per second).
    """

    sample_rate: int = 16_000
    num_mels: int = 64
    window_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    subsampling: int = 4  # two stride-2 convolutions
    pooling: int = 2  # frames averaged into one soft token after the Conformer
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    conv_kernel: int = 15
    max_seconds: float = 30.0

    def __post_init__(self):
        if self.subsampling != 4:
            raise ConfigError(f"audio.subsampling must be 4 (two stride-2 convolutions), got {self.subsampling}")

    @property
    def samples_per_token(self) -> int:
        return self.hop_length * self.subsampling * self.pooling

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / self.samples_per_token

    @property
    def max_samples(self) -> int:
        return int(self.max_seconds * self.sample_rate)

    def num_mel_frames(self, num_samples: int) -> int:
        """Log-mel frames for a clip: one per hop (the waveform is padded at the end)."""
        return max(1, math.ceil(num_samples / self.hop_length))

    def num_soft_tokens(self, num_samples: int) -> int:
        """Soft tokens for a clip: ceil of its mel frames over subsampling x pooling."""
        return math.ceil(self.num_mel_frames(num_samples) / (self.subsampling * self.pooling))

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A Gemini decoder (the public Gemma-1 layout) with optional media encoders.

    `prompt_attention="bidirectional"` lets the tokens of each user turn that is not
    trained on (its text and media) see each other in both directions, a prefix LM as in
    PaliGemma; model turns stay causal. "causal" keeps only media spans bidirectional.

    `prompt_format` is how data/encode.py renders a conversation: "chat" is the Gemma chat
    template (our models); "prefix" is PaliGemma's layout, `<image> x n <bos> prompt \\n`
    then the answer and <eos>, with the whole prompt one bidirectional span (the layout an
    imported PaliGemma checkpoint was trained on; it knows no turn markers).

    `attention_impl` is how the decoder attends in training, scoring and prefill: "auto"
    takes cuDNN's fused kernel on GPU (bfloat16, head_dim a multiple of 8) and XLA
    elsewhere, given each row's length when rows hold one document of a causal model (no
    mask read), else the dense [B, T, T] mask; "xla" and "cudnn" force one of those two;
    "blockwise" never builds a [T, T] matrix (model/blockwise.py), so memory grows
    linearly with the length: the choice for long contexts on CPU/TPU. A decode step
    attends over its cache with XLA unless "cudnn" is forced.
    `attention_block` is its query and key block size (shorter sequences are one block).

    `remat` recomputes each decoder block's activations in the backward pass instead of
    keeping them (training only): "none" keeps all, "full" keeps only the block's input,
    "dots" keeps matmul outputs, "dots_no_batch" keeps those without a batch dimension
    (weights-shaped products), JAX's `checkpoint_policies` of those names.

    `scan_layers` runs the decoder blocks of training, scoring and prefill as one `lax.scan`
    over their stacked parameters, so the step compiles one block rather than `depth` of them
    (decode steps stay unrolled); the parameters and checkpoints are the same either way.
    `benchmarks/compile_time.py` measures both: for nano-1 on a CPU the scanned step compiled
    1.5-1.7x faster, with 41% more temporary memory without remat and 27% less with "full".
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int = 1  # 1 = multi-query attention, the report's choice
    head_dim: int
    mlp_dim: int
    max_seq_len: int = 32_768
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    dtype: DType = "float32"  # compute dtype; parameters stay float32
    prompt_attention: PromptAttention = "causal"
    prompt_format: PromptFormat = "chat"
    attention_impl: AttentionImpl = "auto"
    attention_block: int = 512
    remat: RematPolicy = "none"
    scan_layers: bool = False
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    image_token_id: int = IMAGE_TOKEN_ID
    frame_token_id: int = FRAME_TOKEN_ID
    audio_token_id: int = AUDIO_TOKEN_ID

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.prompt_attention not in ("causal", "bidirectional"):
            raise ConfigError(f"prompt_attention must be 'causal' or 'bidirectional', got {self.prompt_attention!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl must be one of {list(ATTENTION_IMPLS)}, got {self.attention_impl!r}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat must be one of {list(REMAT_POLICIES)}, got {self.remat!r}")
        if not isinstance(self.scan_layers, bool):
            raise ConfigError(f"scan_layers must be true or false, got {self.scan_layers!r}")
        if not (isinstance(self.attention_block, int) and self.attention_block > 0):
            raise ConfigError(f"attention_block must be a positive integer, got {self.attention_block!r}")

    @property
    def text_only(self) -> ModelConfig:
        return dataclasses.replace(self, vision=None, audio=None)


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
    # encoder learns about shapes from images reads them in frames too (a linear probe on frame
    # tokens: 94% of the shapes named, against 78% at 2 x 2 patches); each frame token pools
    # one quarter of its frame ("grid"), which motion questions need.
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
            num_heads=4, mlp_dim=128, image_soft_tokens=16, frame_soft_tokens=4, num_frames=8,
            frame_pooling="grid",
        ),
        audio=AudioConfig(num_mels=64, width=64, depth=2, num_heads=4, mlp_dim=128, conv_kernel=15,
                          max_seconds=8.0),
    ),
}
# A student for `gemini-jax distill --teacher runs/demo`: `demo` with every width 64 -> 40
# (decoder 2 heads x 20; every MLP keeps its ratio to its width) at the same depth, since two
# layers are already few: 203k parameters against 438k (decoder with its embedding 79.6k of
# 164k, vision 57.0k of 114k, audio 66.3k of 160k, as `gemini-jax presets` counts them).
# Everything the data pipeline reads (vocabulary, patches, soft tokens, mel frames) stays
# `demo`'s, so both models read the very same batches.
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
_FAMILY = dict(vocab_size=256_000, num_kv_heads=1, max_seq_len=32_768, dtype="bfloat16")

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


def _check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {unknown}; accepted: {sorted(known)}")


def config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Builds a ModelConfig from plain data (e.g. a checkpoint's JSON), checking every key."""
    values = dict(values)
    _check_keys(ModelConfig, values, "model config")
    for name, cls in (("vision", VisionConfig), ("audio", AudioConfig)):
        if values.get(name) is not None:
            _check_keys(cls, values[name], f"{name} config")
            values[name] = cls(**values[name])
    try:
        return ModelConfig(**values)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"model config is incomplete: {e}") from None


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def override(config: ModelConfig, **changes: Any) -> ModelConfig:
    """`dataclasses.replace` with a clear error for unknown fields (e.g. from the CLI)."""
    _check_keys(ModelConfig, changes, "model config")
    return dataclasses.replace(config, **changes)
