"""The Gemini model in Flax NNX: decoder (Gemma-1 layout), vision and audio encoders."""

from gemini_jax.model.attention import KVCache, LayerKV
from gemini_jax.model.gemini import Gemini, ModelOutput, count_params
from gemini_jax.model.layers import SoftTokens
from gemini_jax.model.mask import attention_mask

__all__ = ["Gemini", "KVCache", "LayerKV", "ModelOutput", "SoftTokens", "attention_mask", "count_params"]
