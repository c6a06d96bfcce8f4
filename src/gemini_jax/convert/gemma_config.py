"""A Gemma-1 config.json (GemmaForCausalLM) <-> our ModelConfig, refusing what either cannot hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemini_jax.config import BOS_ID, EOS_ID, PAD_ID, ConfigError, ModelConfig, PromptAttention
from gemini_jax.convert.hf_dir import ConversionError, architectures as hf_architectures

ARCHITECTURE = "GemmaForCausalLM"
MODEL_TYPE = "gemma"
# Gemma-1 was trained with the tanh approximation of gelu, but its first HF configs say
# hidden_act "gelu", so "gelu" with no `hidden_activation` field is read as that
# approximation (transformers 5 would run exact gelu for such a config: a small
# difference). A `hidden_activation` field, where present, names the function exactly.
TANH_GELU = "gelu_pytorch_tanh"
LEGACY_GELU = "gelu"

Refuse = Callable[[str], ConversionError]


def config_from_hf(values: dict[str, Any], *, source: Path, dtype: str) -> ModelConfig:
    """Our ModelConfig for a GemmaForCausalLM config.json (text only), or a ConversionError."""

    def refuse(why: str) -> ConversionError:
        return ConversionError(f"{source}: {why}")

    architectures = hf_architectures(values, source=source)
    model_type = values.get("model_type")
    # Saved configs name the class; a hand-written one may give only the model type.
    supported = architectures == [ARCHITECTURE] if architectures else model_type == MODEL_TYPE
    if not supported:
        found = f"architectures {architectures}" if architectures else f"model_type {model_type!r}"
        raise refuse(f"{found} is not supported; accepted: architectures [{ARCHITECTURE!r}] "
                     f"or model_type {MODEL_TYPE!r} (Gemma-1)")
    if model_type not in (None, MODEL_TYPE):
        raise refuse(f"model_type {model_type!r} is not Gemma-1; accepted: {MODEL_TYPE!r}")
    if values.get("use_bidirectional_attention"):
        raise refuse("use_bidirectional_attention is true; this decoder is causal")
    return decoder_config_from_hf(values, refuse=refuse, dtype=dtype)


def decoder_config_from_hf(values: dict[str, Any], *, refuse: Refuse, dtype: str, **extra: Any) -> ModelConfig:
    """Our ModelConfig for the fields of a Gemma-1 text config (`extra` adds ModelConfig fields)."""

    def integer(key: str, default: int | None = None) -> int:
        value = values.get(key, default)
        if value is None:
            raise refuse(f"lacks {key!r}, which a Gemma config needs")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise refuse(f"{key} must be a positive integer, got {value!r}")
        return value

    _check_gemma_block(values, refuse=refuse)
    rope_base = _positive_number(_rope_base(values, refuse=refuse), "rope_theta", refuse=refuse)
    norm_eps = _positive_number(values.get("rms_norm_eps", 1e-6), "rms_norm_eps", refuse=refuse)
    width, num_heads = integer("hidden_size"), integer("num_attention_heads")
    num_kv_heads = integer("num_key_value_heads")
    if num_heads % num_kv_heads:
        raise refuse(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})")
    try:
        return ModelConfig(
            vocab_size=integer("vocab_size"),
            width=width,
            depth=integer("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            # Configs written before head_dim was a field use D / N, as HF does.
            head_dim=integer("head_dim", width // num_heads),
            mlp_dim=integer("intermediate_size"),
            max_seq_len=integer("max_position_embeddings", 8192),
            rope_base=float(rope_base),
            norm_eps=float(norm_eps),
            dtype=dtype,
            **extra,
        )
    except ConfigError as e:
        raise refuse(str(e)) from None


def _check_gemma_block(values: dict[str, Any], *, refuse: Refuse) -> None:
    """Refuses an activation, attention biases or an untied output layer that Gemma-1 lacks."""
    activation = values.get("hidden_activation")
    if activation is None:  # the older field; "gelu" there meant the tanh approximation
        activation = values.get("hidden_act", TANH_GELU)
        activation = TANH_GELU if activation == LEGACY_GELU else activation
    if activation != TANH_GELU:
        raise refuse(f"activation {activation!r} is not supported; accepted: {TANH_GELU!r} (tanh-approximated "
                     f"gelu, as Gemma-1 uses; hidden_act {LEGACY_GELU!r} with no hidden_activation means it too)")
    if values.get("attention_bias"):
        raise refuse("attention_bias is true; Gemma-1 and this model have no attention biases")
    if values.get("tie_word_embeddings", True) is False:
        raise refuse("tie_word_embeddings is false; this model's output layer is its embedding (tied)")


def _rope_base(values: dict[str, Any], *, refuse: Refuse) -> Any:
    """RoPE's base as the config gives it (unchecked); 10,000 where it gives none."""
    rope_base = values.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):  # transformers 4.x / 5.x
        rope = values.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
            raise refuse(f"{key} {rope!r} is not supported; accepted: null or rope_type 'default'")
        rope_base = rope.get("rope_theta", rope_base)
    return 10_000.0 if rope_base is None else rope_base


def _positive_number(value: Any, name: str, *, refuse: Refuse) -> int | float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise refuse(f"{name} must be a positive number, got {value!r}")
    return value


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A GemmaConfig as JSON; readable by transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.width,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": TANH_GELU,
        "hidden_activation": TANH_GELU,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",  # transformers 4.x; 5.x reads "dtype"
        "dtype": "float32",
    }


def refuse_unexpressible(config: ModelConfig, *, source: Path) -> None:
    """A GemmaForCausalLM is a causal text decoder: anything more has no place in its config."""
    encoders = [name for name in ("vision", "audio") if getattr(config, name) is not None]
    if encoders:
        raise ConversionError(
            f"{source}: the model has {' and '.join(encoders)} encoder(s), which a Gemma-1 checkpoint cannot "
            f"hold; only text-only models (vision and audio None) export to {ARCHITECTURE}"
        )
    if config.prompt_attention != PromptAttention.CAUSAL:
        raise ConversionError(
            f"{source}: prompt_attention is {config.prompt_attention.value!r}; {ARCHITECTURE} is causal, so only "
            f"'causal' models export"
        )
