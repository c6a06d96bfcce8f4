"""gemini-jax: the Gemini family of natively multimodal models in JAX (Flax NNX).

    import gemini_jax
    run = gemini_jax.load("runs/demo")
    print(gemini_jax.generate(run, "What shape is this?", images=["shape.png"]))
"""

from gemini_jax import compile_cache  # compile_cache.enable(): what the commands compile, kept on disk
from gemini_jax.api import evaluate, generate, generate_parts, load, train_recipe, user_turn

__version__ = "0.1.0"

__all__ = ["compile_cache", "evaluate", "generate", "generate_parts", "load", "train_recipe", "user_turn"]
