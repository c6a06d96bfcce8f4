"""gemini-jax: the Gemini family of natively multimodal models in JAX (Flax NNX)."""

__version__ = "0.1.0"
