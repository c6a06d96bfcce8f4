"""What a user runs end to end. Each recipe is a frozen config object with a nested TrainConfig
(`recipe.train`) and a `setup` that builds its model config, tokenizer, data and evaluations;
`runner.train_and_evaluate` runs any of them.

    from gemini_jax.recipes import RECIPES, train_and_evaluate
    train_and_evaluate(RECIPES["kv_retrieval"](seq_len=1024))
"""

from gemini_jax.recipes.demo import DemoRecipe
from gemini_jax.recipes.distill import distill_and_evaluate
from gemini_jax.recipes.image_generation import ImageGenerationRecipe
from gemini_jax.recipes.long_context import LongTextRecipe, RetrievalRecipe
from gemini_jax.recipes.runner import train_and_evaluate

RECIPES = {recipe.name: recipe for recipe in (DemoRecipe, RetrievalRecipe, LongTextRecipe, ImageGenerationRecipe)}

__all__ = ["RECIPES", "DemoRecipe", "ImageGenerationRecipe", "LongTextRecipe", "RetrievalRecipe", "distill_and_evaluate", "train_and_evaluate"]
