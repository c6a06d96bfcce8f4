"""PaliGemma-1 checkpoints in the Hugging Face layout -> gemini-jax run directories.

    config = import_paligemma("paligemma-3b-pt-224/", "runs/paligemma")

PaliGemma is a SigLIP vision tower, a linear projector and a Gemma-1 decoder. Its image
features replace the image placeholder tokens after the decoder's sqrt(D) embedding
scale and are not scaled themselves, which is how our model fills soft tokens. So the
import maps the tower onto our VisionEncoder with its SigLIP options (block="siglip",
position_embedding="learned", projector_bias, pooling="none": one soft token per patch)
and the decoder as `convert.gemma` does (D vision width, F vision MLP width, p patch
size, g = image_size / p patches per side, E decoder width):

    HF tensor (vision_tower.…)                    HF shape      ours (vision.…)               our shape
    embeddings.patch_embedding.weight (Conv2d)    [D, 3, p, p]  patch_embed.kernel            [p*p*3, D]
    embeddings.patch_embedding.bias               [D]           patch_embed.bias              [D]
    embeddings.position_embedding.weight          [g*g, D]      pos_embed                     [g*g, D]
    encoder.layers.{i}.layer_norm{1,2}.{weight,bias}  [D]       blocks.{i}.pre_{attn,mlp}_norm.{scale,bias}
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj.weight [D, D] blocks.{i}.{q,k,v,o}.kernel   [D, D] (transposed)
    encoder.layers.{i}.mlp.fc{1,2}.weight         [F, D] [D, F] blocks.{i}.fc{1,2}.kernel     transposed
    (every .bias of those)                                      (… .bias)                     same
    post_layernorm.{weight,bias}                  [D]           encoder_norm.{scale,bias}     [D]
    multi_modal_projector.linear.weight           [E, D]        out_proj.kernel               [D, E]

The conv's kernel is reordered to (row, column, channel), the order batch.py flattens a
patch in, so a Linear over our patches computes the stride-p convolution. SigLIP numbers
its patches row-major and PaliGemma always resizes to a square image_size, so the grid is
fixed at g x g and the learned table indexed by row * g + column is SigLIP's table
(keep_aspect_ratio=False: every image is stretched to that grid, as the processor does).
Prompts use prompt_format="prefix": `<image> x g*g <bos> prompt \n`, the whole of it one
bidirectional prefix, and the answer ends at <eos> (PaliGemmaProcessor's layout).

Positions: HF PaliGemma numbers tokens from 1, we from 0; RoPE depends only on the
distance between positions, so the two give the same attention.

Tensor names are accepted in the layouts transformers has written over time
(`language_model.model.…` / `model.language_model.…`, `vision_tower.vision_model.…` /
`vision_tower.…`); SigLIP's pooling head, which PaliGemma never runs, is skipped.
Export is not supported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gemini_jax.config import (
    ConfigError,
    ModelConfig,
    Pooling,
    PositionEmbedding,
    PromptAttention,
    PromptFormat,
    VisionBlock,
    VisionConfig,
)
from gemini_jax.convert import gemma
from gemini_jax.convert.gemma_config import Refuse, decoder_config_from_hf
from gemini_jax.convert.hf_dir import CONFIG_FILE, ConversionError, architectures, read_json
from gemini_jax.convert.tensor_map import AS_IS, TRANSPOSED, TensorSpec, decoder_tensors

ARCHITECTURE = "PaliGemmaForConditionalGeneration"
MODEL_TYPE = "paligemma"
VISION_MODEL_TYPE = "siglip_vision_model"
TEXT_MODEL_TYPE = "gemma"
TANH_GELU = "gelu_pytorch_tanh"
DECODER_PREFIX = "language_model.model."
VISION_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "multi_modal_projector.linear."
# SiglipVisionConfig's defaults, for the fields that older PaliGemma configs leave out.
SIGLIP_DEFAULTS = {"image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6, "hidden_act": TANH_GELU,
                   "num_channels": 3}
# Older and newer transformers name the same tensors differently; ours are the left-hand side.
_RENAMES = (
    ("model.language_model.", DECODER_PREFIX),
    ("model.vision_tower.", VISION_PREFIX),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("language_model.lm_head.", "lm_head."),
)


def is_paligemma(values: dict[str, Any]) -> bool:
    """Whether a config.json names a PaliGemma model (by class, or by model type if it names none)."""
    architectures = values.get("architectures") or []
    return ARCHITECTURE in architectures if architectures else values.get("model_type") == MODEL_TYPE


def _rename(name: str) -> str | None:
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
    if name.startswith(VISION_PREFIX + "vision_model."):  # SiglipVisionModel wraps the tower
        name = VISION_PREFIX + name[len(VISION_PREFIX + "vision_model."):]
    if name.startswith(VISION_PREFIX + "head."):  # the pooling head; PaliGemma uses every patch
        return None
    return name


def _config_from_hf(values: dict[str, Any], *, source: Path, dtype: str) -> ModelConfig:
    """Our ModelConfig for a PaliGemmaForConditionalGeneration config.json, or a ConversionError."""

    def refuse(why: str) -> ConversionError:
        return ConversionError(f"{source}: {why}")

    text, vision = _text_and_vision(values, refuse=refuse)
    siglip, eps = _siglip_fields(vision, refuse=refuse)
    image_token = _image_token(values, text=text, vision=vision, refuse=refuse)
    grid = siglip["image_size"] // siglip["patch_size"]
    try:
        vision_config = VisionConfig(
            patch_size=siglip["patch_size"], max_patches=grid * grid, frame_max_patches=grid * grid, max_grid=grid,
            width=siglip["hidden_size"], depth=siglip["num_hidden_layers"], num_heads=siglip["num_attention_heads"],
            mlp_dim=siglip["intermediate_size"], pooling=Pooling.NONE, block=VisionBlock.SIGLIP,
            position_embedding=PositionEmbedding.LEARNED, norm_eps=float(eps), projector_bias=True,
            # PaliGemma's processor stretches every image to image_size x image_size; the
            # tower's learned position table knows only that full square grid.
            keep_aspect_ratio=False,
        )
    except ConfigError as e:
        raise refuse(str(e)) from None
    # PaliGemma lets the image and the prompt see each other (a prefix LM); the text config's
    # use_bidirectional_attention is that, not a bidirectional decoder. Its prompts are
    # `<image> x n <bos> prompt \n`, not the chat template (prompt_format="prefix").
    return decoder_config_from_hf(text, refuse=refuse, dtype=dtype, prompt_attention=PromptAttention.BIDIRECTIONAL,
                                  prompt_format=PromptFormat.PREFIX, vision=vision_config, image_token_id=image_token)


def _positive_int(where: dict[str, Any], key: str, *, name: str, refuse: Refuse, default: int | None = None) -> int:
    value = where.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise refuse(f"{name} must be a positive integer, got {value!r}")
    return value


def _text_and_vision(values: dict[str, Any], *, refuse: Refuse) -> tuple[dict[str, Any], dict[str, Any]]:
    """The text and vision sub-configs, after checking that this is PaliGemma-1 with a SigLIP tower."""
    if not is_paligemma(values) or values.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise refuse(f"architectures {values.get('architectures')} / model_type {values.get('model_type')!r} is not "
                     f"PaliGemma; accepted: architectures [{ARCHITECTURE!r}], model_type {MODEL_TYPE!r}")
    text, vision = values.get("text_config"), values.get("vision_config")
    for key, sub in (("text_config", text), ("vision_config", vision)):
        if not isinstance(sub, dict):
            raise refuse(f"lacks {key!r} (an object), which a PaliGemma config needs")
    if text.get("model_type", TEXT_MODEL_TYPE) != TEXT_MODEL_TYPE:
        raise refuse(f"text_config.model_type {text.get('model_type')!r} is not supported; accepted: "
                     f"{TEXT_MODEL_TYPE!r} (PaliGemma-1; PaliGemma 2's Gemma-2 decoder is not this model)")
    if vision.get("model_type", VISION_MODEL_TYPE) != VISION_MODEL_TYPE:
        raise refuse(f"vision_config.model_type {vision.get('model_type')!r} is not supported; accepted: "
                     f"{VISION_MODEL_TYPE!r}")
    if values.get("tie_word_embeddings", True) is False:
        raise refuse("tie_word_embeddings is false; this model's output layer is its embedding (tied)")
    return text, vision


def _siglip_fields(vision: dict[str, Any], *, refuse: Refuse) -> tuple[dict[str, int], float]:
    """The SigLIP tower's sizes (SiglipVisionConfig's defaults where left out) and its LayerNorm epsilon."""
    sizes = {key: _positive_int(vision, key, name=f"vision_config.{key}", refuse=refuse,
                                default=SIGLIP_DEFAULTS.get(key)) for key in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")}
    if vision.get("num_channels", 3) != 3:
        raise refuse(f"vision_config.num_channels is {vision['num_channels']}; accepted: 3 (RGB)")
    activation = vision.get("hidden_act", TANH_GELU)
    if activation != TANH_GELU:
        raise refuse(f"vision_config.hidden_act {activation!r} is not supported; accepted: {TANH_GELU!r}")
    eps = vision.get("layer_norm_eps", SIGLIP_DEFAULTS["layer_norm_eps"])
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
        raise refuse(f"vision_config.layer_norm_eps must be a positive number, got {eps!r}")
    if sizes["image_size"] % sizes["patch_size"]:
        raise refuse(f"vision_config.image_size {sizes['image_size']} is not a multiple of patch_size "
                     f"{sizes['patch_size']}")
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise refuse(f"vision_config.hidden_size {sizes['hidden_size']} is not a multiple of num_attention_heads "
                     f"{sizes['num_attention_heads']}")
    return sizes, eps


def _image_token(values: dict[str, Any], *, text: dict[str, Any], vision: dict[str, Any], refuse: Refuse) -> int:
    """The image placeholder id, after checking that projected image features fit decoder token slots."""
    text_width = _positive_int(text, "hidden_size", name="text_config.hidden_size", refuse=refuse)
    projection = values.get("projection_dim", vision.get("projection_dim", text_width))
    if projection != text_width:
        raise refuse(f"projection_dim {projection!r} differs from text_config.hidden_size {text_width}; the "
                     f"projected image features fill decoder token slots, so the two must be equal")
    vocab = _positive_int(text, "vocab_size", name="text_config.vocab_size", refuse=refuse)
    image_token = values.get("image_token_index", values.get("image_token_id"))
    if not isinstance(image_token, int) or isinstance(image_token, bool) or not 0 <= image_token < vocab:
        raise refuse(f"image_token_index must be a token id in 0 .. {vocab - 1} (text_config.vocab_size), "
                     f"got {image_token!r}")
    return image_token


def _vision_tensors(config: ModelConfig) -> list[TensorSpec]:
    """The SigLIP tower and the projector, mapped as the module docstring's table says."""
    vision = config.vision
    D, F, E, p = vision.width, vision.mlp_dim, config.width, vision.patch_size
    hf, ours = VISION_PREFIX, ("vision",)
    patch_kernel = (
        lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * 3, D),  # [D, 3, p, p] -> [(row, col, channel), D]
        lambda k: k.reshape(p, p, 3, D).transpose(3, 2, 0, 1),
    )
    tensors = [
        TensorSpec(hf + "embeddings.patch_embedding.weight", (*ours, "patch_embed", "kernel"), (D, 3, p, p),
                *patch_kernel),
        TensorSpec(hf + "embeddings.patch_embedding.bias", (*ours, "patch_embed", "bias"), (D,), *AS_IS),
        TensorSpec(hf + "embeddings.position_embedding.weight", (*ours, "pos_embed"), (vision.max_patches, D), *AS_IS),
    ]

    def linear(hf_name: str, path: tuple, out_dim: int, in_dim: int) -> list[TensorSpec]:
        return [TensorSpec(hf_name + ".weight", (*path, "kernel"), (out_dim, in_dim), *TRANSPOSED),
                TensorSpec(hf_name + ".bias", (*path, "bias"), (out_dim,), *AS_IS)]

    def norm(hf_name: str, path: tuple) -> list[TensorSpec]:
        return [TensorSpec(hf_name + ".weight", (*path, "scale"), (D,), *AS_IS),
                TensorSpec(hf_name + ".bias", (*path, "bias"), (D,), *AS_IS)]

    for i in range(vision.depth):
        layer, block = f"{hf}encoder.layers.{i}.", (*ours, "blocks", i)
        tensors += norm(layer + "layer_norm1", (*block, "pre_attn_norm"))
        for hf_proj, our_proj in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            tensors += linear(f"{layer}self_attn.{hf_proj}", (*block, our_proj), D, D)
        tensors += norm(layer + "layer_norm2", (*block, "pre_mlp_norm"))
        tensors += linear(layer + "mlp.fc1", (*block, "fc1"), F, D)
        tensors += linear(layer + "mlp.fc2", (*block, "fc2"), D, F)
    tensors += norm(hf + "post_layernorm", (*ours, "encoder_norm"))
    tensors += linear(PROJECTOR_PREFIX[:-1], (*ours, "out_proj"), E, D)
    return tensors


def import_paligemma(
    hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str = "float32"
) -> ModelConfig:
    """Converts a Hugging Face PaliGemma-1 directory into a new run directory; returns its config.

    `hf_dir` holds config.json (PaliGemmaForConditionalGeneration with a SigLIP vision
    config and a Gemma-1 text config), tokenizer.model and safetensors weights. The run gets
    a ModelConfig with the SigLIP vision options, one soft token per patch of a fixed
    square grid and bidirectional prompts; its checkpoint step 0 holds the parameters in
    float32. Nothing is written unless every input checks out; a ConversionError names
    the bad file or tensor.
    """
    return gemma.import_run(
        hf_dir, run_dir, dtype=dtype, config_from_hf=_config_from_hf,
        tensors_for=lambda config: decoder_tensors(config, prefix=DECODER_PREFIX) + _vision_tensors(config),
        architecture=ARCHITECTURE, model=f"PaliGemma-1 {ARCHITECTURE}",
        embedding=DECODER_PREFIX + "embed_tokens.weight", rename=_rename,
    )


def import_hf(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str = "float32") -> ModelConfig:
    """Imports a Hugging Face directory as `import_paligemma` or `import_gemma`, as its config.json says."""
    config_path = Path(hf_dir) / CONFIG_FILE
    if not Path(hf_dir).is_dir():
        raise ConversionError(f"Hugging Face directory {str(hf_dir)!r} does not exist")
    values = read_json(config_path)
    architectures(values, source=config_path)  # a list of names, or a clear error
    if is_paligemma(values):
        return import_paligemma(hf_dir, run_dir, dtype=dtype)
    if gemma.ARCHITECTURE in (values.get("architectures") or []) or values.get("model_type") == gemma.MODEL_TYPE:
        return gemma.import_gemma(hf_dir, run_dir, dtype=dtype)
    raise ConversionError(
        f"{config_path}: architectures {values.get('architectures')} / model_type {values.get('model_type')!r} "
        f"is not supported; accepted: {gemma.ARCHITECTURE} (model_type {gemma.MODEL_TYPE!r}, Gemma-1) or "
        f"{ARCHITECTURE} (model_type {MODEL_TYPE!r}, PaliGemma-1)"
    )


__all__ = ["ConversionError", "import_hf", "import_paligemma", "is_paligemma"]
