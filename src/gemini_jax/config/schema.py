"""The model configuration schema: frozen dataclasses for the decoder and its media encoders.

Every number the model uses is a field here. Derived values are properties, so a config can
never disagree with itself. The data pipeline reads the same config to know how many
placeholder slots each image, video frame or audio clip takes. Choices are enums
(config/choices.py); a plain string naming a member is accepted wherever one is expected.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import typing
from typing import Any

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

# Token ids the tokenizer reserves (see data/tokenizer.py). The model only needs
# the three placeholder ids; the rest are listed so the layout lives in one place.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 4, 5
IMAGE_TOKEN_ID, FRAME_TOKEN_ID, AUDIO_TOKEN_ID = 6, 7, 8


class ConfigError(ValueError):
    """A configuration (preset name, field name or value) that cannot be used."""


@functools.cache
def _choice_fields(cls: type) -> dict[str, type[enum.Enum]]:
    """The fields of a config dataclass whose type is an enum, with that enum."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], enum.Enum)}


def _resolve_choices(config: Any, *, where: str = "") -> None:
    """Turns each enum field given as its plain string (JSON, presets, the command line) into
    its member; anything else is a ConfigError naming the field and the accepted values."""
    for name, kind in _choice_fields(type(config)).items():
        value = getattr(config, name)
        try:
            member = kind(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}{name} must be one of {[m.value for m in kind]}, got {value!r}") from None
        object.__setattr__(config, name, member)


def _require_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A ViT over square patches, for images and for video frames.

    An image is resized, keeping its aspect ratio, to the largest size whose patch grid fits
    in `max_patches` (variable resolution). `pooling` and `frame_pooling` say how patch
    features become soft tokens (`image_soft_tokens` per image, `frame_soft_tokens` per video
    frame when pooled). `stem_channels` puts stride-2 3x3 convolutions (one per entry, with
    that many channels) inside each patch before its linear embedding, an early
    convolutional stem (Xiao et al. 2021); () embeds raw pixels. `stem_pixels` adds a linear
    map of the raw pixels to a stem's output: a path that keeps colour, which a stem trained on
    shape questions alone learns to discard (docs/vision.md). `frame_stem_channels` None
    embeds video frames with the images' patch embedding; a tuple gives frames a patch
    embedding of their own with that stem (() a linear one), the rest of the encoder shared,
    because small objects in low-resolution frames need other first-layer features than the
    large shapes of images (docs/vision.md has the measurements, of this and of grid pooling).
    `background_contrast` adds a linear map of each patch minus its image's median colour (per
    channel, over the image's real pixels) to the patch embedding: a feature that is zero on a
    plain background whatever its colour, for scenes whose backgrounds vary (docs/vision.md).

    The remaining options describe imported SigLIP towers (PaliGemma) and keep our own ViT
    when left at their defaults: `block`, `position_embedding`, `norm_eps` (None uses the
    decoder's), `projector_bias` (PaliGemma's multi_modal_projector has one), and
    `keep_aspect_ratio=False`, which stretches every image (and frame) to the full square grid
    of min(max_grid, floor(sqrt(max_patches))) patches a side, as PaliGemma's processor
    resizes to its square image_size: a SigLIP tower with a fixed grid saw nothing else.
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
    pooling: Pooling = Pooling.ATTENTION
    frame_pooling: FramePooling = FramePooling.ATTENTION
    stem_channels: tuple[int, ...] = ()
    frame_stem_channels: tuple[int, ...] | None = None
    stem_pixels: bool = False
    background_contrast: bool = False
    block: VisionBlock = VisionBlock.VIT
    position_embedding: PositionEmbedding = PositionEmbedding.FACTORIZED
    norm_eps: float | None = None
    projector_bias: bool = False
    keep_aspect_ratio: bool = True

    def __post_init__(self):
        _require_bool(self.keep_aspect_ratio, "vision.keep_aspect_ratio")
        _require_bool(self.stem_pixels, "vision.stem_pixels")
        _require_bool(self.background_contrast, "vision.background_contrast")
        _resolve_choices(self, where="vision.")
        if self.frame_pooling in (FramePooling.GRID, FramePooling.GRID_AND_FRAME):
            cells = self.frame_soft_tokens - (self.frame_pooling == FramePooling.GRID_AND_FRAME)
            square = isinstance(cells, int) and cells > 0 and math.isqrt(cells) ** 2 == cells
            if self.pooling != Pooling.ATTENTION or not square:
                accepted = "a square (1, 4, 9, ...)" if self.frame_pooling == FramePooling.GRID else "a square plus one (2, 5, 10, ...)"
                raise ConfigError(
                    f"vision.frame_pooling={self.frame_pooling.value!r} needs pooling='attention' (pooled soft "
                    f"tokens) and frame_soft_tokens {accepted}, got pooling={self.pooling.value!r}, "
                    f"frame_soft_tokens={self.frame_soft_tokens}"
                )
        if self.norm_eps is not None and not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ConfigError(f"vision.norm_eps must be a positive number or None, got {self.norm_eps!r}")
        _require_bool(self.projector_bias, "vision.projector_bias")
        if self.block == VisionBlock.SIGLIP and self.width % self.num_heads:
            raise ConfigError(f"vision.width ({self.width}) must be a multiple of vision.num_heads "
                              f"({self.num_heads}) for block='siglip' (head dimension = width / heads)")
        object.__setattr__(self, "stem_channels", tuple(self.stem_channels))  # JSON gives a list
        if self.frame_stem_channels is not None:
            object.__setattr__(self, "frame_stem_channels", tuple(self.frame_stem_channels))
        if self.stem_pixels and not (self.stem_channels or self.frame_stem_channels):
            raise ConfigError("vision.stem_pixels adds raw pixels to a convolutional stem's output and needs one: "
                              "set vision.stem_channels or vision.frame_stem_channels (a linear embedding "
                              "already reads the raw pixels)")
        for name in ("stem_channels", "frame_stem_channels"):
            stem = getattr(self, name)
            if stem is not None and self.patch_size % (1 << len(stem)):
                raise ConfigError(f"vision.patch_size {self.patch_size} must be divisible by 2 per stem convolution "
                                  f"({name}={list(stem)})")

    def num_soft_tokens(self, num_patches: int, *, frame: bool = False) -> int:
        """Soft tokens for one image (or video frame) of `num_patches` real patches."""
        if self.pooling == Pooling.NONE:
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
class ImageOutputConfig:
    """Images the decoder writes as discrete codes of an image tokenizer (model/image_tokenizer.py):
    the top `codebook_size` ids of the vocabulary, `codes_per_image` of them between
    <start_of_image> and <end_of_image> (sample/image_spans.py).

    `code_positions` gives each code its place in its image (0 .. codes_per_image - 1, raster
    order) twice: a learned embedding added to its token embedding (as DALL-E adds row and
    column embeddings to its image tokens), and as its RoPE position (max_seq_len + place, the
    same in every image, as Qwen2-VL's M-RoPE positions image tokens by where they lie). Code p
    of one picture is then as far from code p + 1 of another as from its own neighbour, so an
    edit that copies its source picture attends at a fixed distance, which sequence positions
    do not give when the text between the two pictures varies (docs/image-output.md)."""

    codebook_size: int
    codes_per_image: int
    code_positions: bool = False

    def __post_init__(self):
        for name in ("codebook_size", "codes_per_image"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"image_output.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.code_positions, bool):
            raise ConfigError(f"image_output.code_positions must be true or false, got {self.code_positions!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A Gemini decoder (the public Gemma-1 layout) with optional media encoders.

    `attention_block` is blockwise attention's query and key block size (shorter sequences
    are one block). `scan_layers` runs the decoder blocks of training, scoring and prefill as
    one `lax.scan` over their stacked parameters, so the step compiles one block rather than
    `depth` of them (decode steps stay unrolled); the parameters and checkpoints are the same
    either way (docs/model.md has the compile-time measurements).
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
    dtype: DType = DType.FLOAT32
    prompt_attention: PromptAttention = PromptAttention.CAUSAL
    prompt_format: PromptFormat = PromptFormat.CHAT
    attention_impl: AttentionImpl = AttentionImpl.AUTO
    attention_block: int = 512
    remat: RematPolicy = RematPolicy.NONE
    scan_layers: bool = False
    vision: VisionConfig | None = None
    audio: AudioConfig | None = None
    image_output: ImageOutputConfig | None = None  # None: the model writes text only
    image_token_id: int = IMAGE_TOKEN_ID
    frame_token_id: int = FRAME_TOKEN_ID
    audio_token_id: int = AUDIO_TOKEN_ID

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        _resolve_choices(self)
        _require_bool(self.scan_layers, "scan_layers")
        if not (isinstance(self.attention_block, int) and self.attention_block > 0):
            raise ConfigError(f"attention_block must be a positive integer, got {self.attention_block!r}")
        if self.image_output is not None and self.image_output.codebook_size >= self.vocab_size:
            raise ConfigError(f"image_output.codebook_size ({self.image_output.codebook_size}) leaves no text ids in "
                              f"a vocabulary of {self.vocab_size}: the codes are its top ids")

    @property
    def first_image_code(self) -> int:
        """The id of image code 0 (the codes are the vocabulary's top `codebook_size` ids)."""
        if self.image_output is None:
            raise ConfigError("this model has no image output (config.image_output is None)")
        return self.vocab_size - self.image_output.codebook_size

    @property
    def text_only(self) -> ModelConfig:
        return dataclasses.replace(self, vision=None, audio=None)


def _check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {unknown}; accepted: {sorted(known)}")


def config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """Builds a ModelConfig from plain data (e.g. a checkpoint's JSON), checking every key."""
    values = dict(values)
    _check_keys(ModelConfig, values, "model config")
    for name, cls in (("vision", VisionConfig), ("audio", AudioConfig), ("image_output", ImageOutputConfig)):
        if values.get(name) is not None:
            _check_keys(cls, values[name], f"{name} config")
            values[name] = cls(**values[name])
    try:
        return ModelConfig(**values)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"model config is incomplete: {e}") from None


def _plain(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in items}


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The config as plain data (enum members as their strings), as config.json holds it."""
    return dataclasses.asdict(config, dict_factory=_plain)


def override(config: ModelConfig, **changes: Any) -> ModelConfig:
    """`dataclasses.replace` with a clear error for unknown fields (e.g. from the CLI)."""
    _check_keys(ModelConfig, changes, "model config")
    return dataclasses.replace(config, **changes)
