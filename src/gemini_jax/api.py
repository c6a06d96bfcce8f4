"""The Python API for what users do with a run: load it, generate, evaluate, train a recipe.

(`train_recipe`, not `train`: `gemini_jax.train` is the training package.)

    import gemini_jax

    run = gemini_jax.load("runs/demo")
    gemini_jax.generate(run, "What shape is this?", images=["shape.png"])
    gemini_jax.generate(run, "Hello", safety="runs/safety", safety_settings={"harassment": 0.2})
    gemini_jax.generate_parts(run, "Draw a red circle.")   # ["...", uint8[64, 64, 3], ...]: runs that draw
    gemini_jax.generate_parts(run, "Draw a red circle.", guidance=3.0, temperature=1.0)   # classifier-free guidance
    gemini_jax.evaluate(run, ["vqa", "asr"], limit=100)
    gemini_jax.train_recipe(gemini_jax.recipes.DemoRecipe(run_dir="runs/mine"))

Heavy modules are imported inside each function, so that `import gemini_jax` (and the command's
`--help`) stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from gemini_jax.checkpoint import Run
    from gemini_jax.data.examples import Example
    from gemini_jax.recipes.runner import Recipe
    from gemini_jax.safety.filter import SafetyFilter


def load(run_dir: str | os.PathLike, *, step: int | None = None) -> Run:
    """A trained run (float or quantized): `.model`, `.tokenizer`, `.config`, `.step`."""
    from gemini_jax.checkpoint import load_run

    return load_run(run_dir, step=step)


def _as_run(run: Run | str | os.PathLike) -> Run:
    return load(run) if isinstance(run, (str, os.PathLike)) else run


def user_turn(text: str, *, images: Sequence[Any] = (), videos: Sequence[Any] = (),
              audios: Sequence[Any] = ()) -> Example:
    """One user turn: the media first (images, videos, audio clips; paths or arrays), then the text."""
    from gemini_jax.data.examples import Content, Example, Part

    parts = [Part(image=p) for p in images] + [Part(video=p) for p in videos] + [Part(audio=p) for p in audios]
    return Example(contents=(Content("user", (*parts, Part(text=text))),))


def generate(run: Run | str | os.PathLike, prompt: str | Example, *, images: Sequence[Any] = (),
             videos: Sequence[Any] = (), audios: Sequence[Any] = (), max_new_tokens: int | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             safety: SafetyFilter | str | os.PathLike | None = None, safety_settings: Any = None,
             guidance: float | None = None, best_of: int = 1) -> str:
    """The model's answer to `prompt`: a user turn's text (with its media) or a whole Example.

    `safety`: a SafetyFilter or the directory `gemini-jax safety train` wrote; the user turns' text
    is checked before generating and the answer after, under `safety_settings` (the request forms
    of gemini_jax.safety.filter). A blocked one raises SafetyBlocked (its `stage`, `verdict`:
    category and score) instead of returning text. A run that writes images gives its text with
    each image's markers in place (`generate_parts` gives the pictures). `max_new_tokens` None:
    64, and one image's room beyond that for a run that writes images.

    `guidance` s (a run that writes images and keeps an unconditional prompt): classifier-free
    guidance of the images' codes, u + s (c - u) with u from the run's unconditional prompt
    (docs/image-output.md); None or 1 samples as without it.

    `best_of` K > 1 (a run that writes images and has an image scorer, RUN/image_scorer/): K
    replies are sampled (the k-th with seed `seed` + k SAMPLE_SEED_STRIDE) and the one whose first
    picture the scorer rates highest for the request is returned (model/image_scorer.py)."""
    return _reply(run, prompt, images=images, videos=videos, audios=audios, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, safety=safety,
                  safety_settings=safety_settings, guidance=guidance, best_of=best_of)


def generate_parts(run: Run | str | os.PathLike, prompt: str | Example, **options: Any) -> list[str | np.ndarray]:
    """The answer as text and images (uint8[H, W, 3], decoded by the run's image tokenizer) in
    order; a run that writes text only gives one text part. `options` are `generate`'s."""
    return _reply(run, prompt, parts=True, **options)


def _reply(run: Run | str | os.PathLike, prompt: str | Example, *, images: Sequence[Any] = (),
           videos: Sequence[Any] = (), audios: Sequence[Any] = (), max_new_tokens: int | None = None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           safety: SafetyFilter | str | os.PathLike | None = None, safety_settings: Any = None,
           guidance: float | None = None, best_of: int = 1, parts: bool = False) -> str | list[str | np.ndarray]:
    from gemini_jax.safety.filter import SafetyFilter, parse_settings, prompt_text
    from gemini_jax.sample.image_output import SAMPLE_SEED_STRIDE, ImageWriter, default_max_new_tokens
    from gemini_jax.sample.sampler import Sampler
    from gemini_jax.sample.token_choice import SamplingParams

    if safety is None and safety_settings is not None:
        raise ValueError("safety_settings need a safety classifier: pass safety=DIR (or a SafetyFilter)")
    check = safety if isinstance(safety, SafetyFilter) or safety is None else SafetyFilter.load(safety)
    settings = parse_settings(safety_settings, check.categories) if check else None
    run = _as_run(run)
    if isinstance(prompt, str):
        prompt = user_turn(prompt, images=images, videos=videos, audios=audios)
    elif images or videos or audios:
        raise ValueError("give media either as keyword arguments with a text prompt or inside the Example, not both")
    writer = ImageWriter.for_run(run)  # before sampling: a missing image tokenizer fails fast
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(writer)
    scorer = best_of_scorer(run, writer, best_of)
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                             seed=seed + k * SAMPLE_SEED_STRIDE) for k in range(best_of)]
    unconditional = guided_prompts(run, guidance, count=best_of)
    if check:
        check.require_safe(prompt_text(prompt), settings, stage="prompt")
    sampler = Sampler(run.model, run.tokenizer, image_codes=writer.coder() if writer else None)
    replies = sampler.generate_ids([prompt] * best_of, params, guidance=guidance, unconditional=unconditional)
    ids = replies[0] if scorer is None else replies[choose_reply(scorer, writer, prompt, replies)]
    text = sampler.text(ids)
    if check:
        check.require_safe(text, settings, stage="response")
    if not parts:
        return text
    return writer.parts(ids) if writer else [text]


def best_of_scorer(run: Run, writer, best_of: int):
    """The run's image scorer where `best_of` > 1 (None for 1); a ConfigError (a ValueError) where
    it cannot apply."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import ConfigError
    from gemini_jax.model.image_scorer import load_image_scorer
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR

    if not isinstance(best_of, int) or isinstance(best_of, bool) or best_of < 1:
        raise ConfigError(f"best_of is the number of replies to choose among, a positive integer; got {best_of!r}")
    if best_of == 1:
        return None
    if writer is None:
        raise ConfigError(f"best_of {best_of} chooses among pictures: {run.run_dir} writes text only")
    try:
        return load_image_scorer(run.run_dir / IMAGE_SCORER_DIR)
    except CheckpointError as e:
        raise ConfigError(f"best_of {best_of} chooses with the run's image scorer: {e}") from None


def choose_reply(scorer, writer, prompt: Example, replies: list) -> int:
    """Which reply's first picture the scorer rates highest for `prompt` (a reply without one last)."""
    import numpy as np

    from gemini_jax.model.image_scorer import choose, request_of

    pictures = [next((p for p in writer.parts(ids) if isinstance(p, np.ndarray)), None) for ids in replies]
    text, source = request_of(prompt)
    return choose(scorer, [text], [source], [pictures])[0]


def guided_prompts(run: Run, guidance: float | None, *, count: int) -> list[Example] | None:
    """`count` copies of the run's unconditional prompt as a user turn (None without guidance);
    a ConfigError (a ValueError) where guidance cannot apply: a text-only run, a bad scale, no
    unconditional prompt."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import ConfigError
    from gemini_jax.sample.image_output import unconditional_prompt
    from gemini_jax.sample.token_choice import check_guidance

    if guidance is None:
        return None
    if run.config.image_output is None:
        raise ConfigError(f"guidance {guidance}: {run.run_dir} writes text only (config.image_output is None); "
                         "guidance steers the codes of the images a run writes")
    check_guidance(guidance, error=ConfigError)
    try:
        return [user_turn(unconditional_prompt(run.run_dir))] * count
    except CheckpointError as e:
        raise ConfigError(f"guidance {guidance}: {e}") from None


def evaluate(run: Run | str | os.PathLike, tasks: Sequence[str], *, corpus: Any = None,
             **options: Any) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} for tasks of the one registry (`gemini-jax eval --tasks`): demo sets,
    long-context probes, benchmarks. `options` are `EvalOptions` fields (limit, data_dir, ...);
    `corpus` is a demo corpus already built (default: the demo's, in options' cache_dir)."""
    from gemini_jax.evals.registry import EvalOptions
    from gemini_jax.evals.registry import evaluate as evaluate_tasks

    run = _as_run(run)
    return evaluate_tasks(run.model, run.tokenizer, tasks, EvalOptions(**options), run_dir=run.run_dir,
                          corpus=corpus)


def train_recipe(recipe: Recipe) -> dict[str, Any]:
    """Trains (or resumes) a recipe's run (`gemini_jax.recipes`), evaluates it, writes
    results.json into the run; returns the final evaluation."""
    from gemini_jax.recipes.runner import train_and_evaluate

    return train_and_evaluate(recipe)
