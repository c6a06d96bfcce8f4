"""The embedded demo, end to end: corpus -> tokenizer -> one model trained on a task mixture -> evaluation.

    gemini-jax train        # this recipe with its defaults; ~15 minutes on 2 CPU cores

One multimodal model learns four tasks at once: easy-VQA questions about images, transcription
of synthesized speech, questions about short videos, and language modelling of Python code.
Batches hold one task each (so each task keeps its own compact shapes) and the tasks are
interleaved by weight. The recipe's numbers were chosen by measurement on 2 cores: small
matrices and many updates learn more per minute there than a wider model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ModelConfig, get_preset, override
from gemini_jax.data import pipeline
from gemini_jax.data.demo import DemoCorpus
from gemini_jax.data.encode import MediaCache, encode_example
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.evals import demo_eval
from gemini_jax.evals.scoring import LossScorer
from gemini_jax.model import Gemini
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.sampling import SamplingParams
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import TrainConfig, train

MEDIA_TASKS = ("vqa", "asr", "video")
ANSWER_TOKENS = {"vqa": 8, "asr": 24, "video": 8}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoRecipe:
    preset: str = "demo"
    steps: int = 3_000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # Share of batches per task: VQA has the most distinct questions, code the least need.
    weights: tuple[tuple[str, float], ...] = (("vqa", 3.0), ("asr", 3.0), ("video", 2.0), ("text", 1.0))
    text_seq_len: int = 128
    seed: int = 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_tokenizer(corpus: DemoCorpus, *, vocab_size: int) -> Path:
    """The demo tokenizer, trained once per corpus and vocabulary size and cached beside it."""
    path = corpus.root / f"tokenizer-{vocab_size}.model"
    if not path.exists():
        train_tokenizer(corpus.tokenizer_corpus(), vocab_size=vocab_size, path=path)
    return path


def _task_shapes(examples: Sequence[Example], *, tokenizer: Tokenizer, config: ModelConfig,
                 media_cache: MediaCache, sample: int = 400) -> dict[str, int]:
    """Fixed batch shapes for a task, from the longest of a sample of its examples plus room."""
    step = max(1, len(examples) // sample)
    rows = [encode_example(e, tokenizer=tokenizer, config=config, media_cache=media_cache) for e in examples[::step]]
    longest = max(int(r["segment_ids"].sum()) for r in rows)
    shapes = {"seq_len": 8 * math.ceil((longest + 4) / 8)}
    shapes["max_images"] = max((r["image_patches"].shape[0] for r in rows if "image_patches" in r), default=0)
    shapes["max_frames"] = max((r["frame_patches"].shape[0] for r in rows if "frame_patches" in r), default=0)
    shapes["max_audio_clips"] = max((r["audio_mels"].shape[0] for r in rows if "audio_mels" in r), default=0)
    if shapes["max_audio_clips"]:
        mel = max(r["audio_mels"].shape[1] for r in rows if "audio_mels" in r)
        shapes["max_mel_frames"] = 8 * math.ceil(mel * 1.25 / 8)  # sampled clips may not be the longest
        # Room for the longest clip's soft tokens as well.
        shapes["seq_len"] = 8 * math.ceil((longest + 4 + config.audio.num_soft_tokens(
            (shapes["max_mel_frames"] - mel) * config.audio.hop_length)) / 8)
    return shapes


def demo_data(corpus: DemoCorpus, *, tokenizer: Tokenizer, config: ModelConfig, recipe: DemoRecipe):
    """The training stream: per-task batches of fixed shapes, interleaved by the recipe's weights."""
    media_cache = MediaCache(max_bytes=2 << 30)
    streams = {}
    weights = dict(recipe.weights)
    for task in [t for t in MEDIA_TASKS if t in weights]:
        examples = corpus.examples(task, "train")
        shapes = _task_shapes(examples, tokenizer=tokenizer, config=config, media_cache=media_cache)
        source = pipeline.encoded_source(
            examples, tokenizer=tokenizer, config=config, max_len=shapes["seq_len"], error_budget=len(examples) // 100,
            cache_rows=True,
        )
        streams[task] = pipeline.batched(source, batch_size=recipe.batch_size, seed=recipe.seed, config=config, **shapes)
    if "text" in weights: streams["text"] = pipeline.packed_text(
        corpus.examples("text", "train"), tokenizer=tokenizer, seq_len=recipe.text_seq_len,
        batch_size=recipe.batch_size, seed=recipe.seed,
    )
    weights = dict(recipe.weights)
    return iter(pipeline.mixture(streams, weights={t: weights[t] for t in streams}))


def evaluate(model: Gemini, tokenizer: Tokenizer, corpus: DemoCorpus, *, tasks: Sequence[str] = demo_eval.TASKS,
             limit: int | None = None, batch_size: int = 256, text_seq_len: int = 128, progress: bool = True,
             records_path: str | None = None) -> dict[str, dict[str, Any]]:
    """Per-task metrics on the held-out test sets: {task: {metric: value}}."""
    from tqdm.auto import tqdm

    unknown = sorted(set(tasks) - set(demo_eval.TASKS))
    if unknown:
        raise ValueError(f"unknown demo task(s) {unknown}; choose from {', '.join(demo_eval.TASKS)}")
    sampler = Sampler(model, tokenizer, media_cache=MediaCache(max_bytes=1 << 30))
    results: dict[str, dict[str, Any]] = {}
    all_records = []
    for task in tasks:
        records = corpus.records(task, "test")[:limit]
        if task == "text":
            documents = [r.example for r in records]
            batches = pipeline.packed_text(documents, tokenizer=tokenizer, seq_len=text_seq_len, batch_size=16,
                                           seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
            loss_sum, count = LossScorer(model).total(batches)
            results[task] = {**demo_eval.perplexity(loss_sum, count), "documents": len(documents)}
            continue
        bar = tqdm(total=len(records), desc=f"eval {task}", disable=not progress, unit="ex", leave=False)
        scored = demo_eval.answer_questions(
            sampler, [r.example for r in records], batch_size=batch_size, max_new_tokens=ANSWER_TOKENS[task],
            on_batch=bar.update,
        )
        bar.close()
        results[task] = demo_eval.summarize(task, scored, [r.kind for r in records])
        all_records += [dataclasses.replace(s, kind=r.kind) for s, r in zip(scored, records)]
    if records_path:
        Path(records_path).write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in all_records))
    return results


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_and_evaluate(*, run_dir: str = "runs/demo", cache_dir: str | None = None, preset: str = "demo",
                       steps: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
                       dtype: str | None = None, seed: int = 0, eval_every: int = 0, eval_limit: int | None = None,
                       evaluate_at_end: bool = True, progress: bool = True) -> dict[str, Any]:
    """`gemini-jax train`: the whole demo. Returns the final evaluation (and prints its table)."""
    recipe = DemoRecipe(preset=preset, seed=seed)
    recipe = dataclasses.replace(
        recipe, **{k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("learning_rate", learning_rate))
                   if v is not None})
    config = get_preset(recipe.preset)
    if dtype is not None:
        config = override(config, dtype=dtype)
    timings = {}

    start = time.perf_counter()
    corpus = DemoCorpus.build(cache_dir, progress=progress)
    timings["corpus_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tokenizer_file = prepare_tokenizer(corpus, vocab_size=config.vocab_size)
    tokenizer = Tokenizer.load(tokenizer_file)
    timings["tokenizer_s"] = time.perf_counter() - start
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)

    start = time.perf_counter()
    data = demo_data(corpus, tokenizer=tokenizer, config=config, recipe=recipe)
    timings["data_setup_s"] = time.perf_counter() - start
    train_config = TrainConfig(
        steps=recipe.steps, seed=recipe.seed, eval_every=eval_every, progress=progress,
        checkpoint_every=max(1, recipe.steps // 4),
        optimizer=OptimizerConfig(
            learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, total_steps=recipe.steps,
            weight_decay=recipe.weight_decay,
        ),
    )
    quick = (lambda m: evaluate(m, tokenizer, corpus, limit=200, progress=False)) if eval_every else None
    result = train(config=config, run_dir=run_dir, data=data, train_config=train_config, evaluate=quick)
    timings["training_s"] = result.wall_seconds
    _log(f"trained {result.step} steps in {result.wall_seconds:.0f} s, "
         f"{result.tokens_per_second:,.0f} tokens/s, final loss {result.final_loss:.4f}")

    results: dict[str, Any] = {}
    if evaluate_at_end:
        start = time.perf_counter()
        results = evaluate(result.model, tokenizer, corpus, limit=eval_limit, progress=progress,
                           text_seq_len=recipe.text_seq_len)
        timings["evaluation_s"] = time.perf_counter() - start
        print(demo_eval.format_table(results))
    timings["peak_memory_mb"] = _peak_memory_mb()
    timings["training_tokens_per_s"] = result.tokens_per_second
    _log("phases: " + ", ".join(f"{k} {v:,.1f}" for k, v in timings.items()))
    summary = {**results, "run": timings}
    Path(run_dir, "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def load(run_dir: str) -> tuple[Gemini, Tokenizer]:
    """A trained model and its tokenizer from a run directory."""
    config = checkpoint.read_config(run_dir)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(run_dir))
    model = Gemini(config, rngs=nnx.Rngs(0))
    checkpoint.load_params(run_dir, model)
    return model, tokenizer


def evaluate_checkpoint(run_dir: str, *, cache_dir: str | None = None, tasks: Sequence[str] = demo_eval.TASKS,
                        limit: int | None = None, batch_size: int = 256, records_path: str | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """`gemini-jax eval`: the demo's held-out tables for a trained run."""
    model, tokenizer = load(run_dir)
    corpus = DemoCorpus.build(cache_dir, progress=progress)
    results = evaluate(model, tokenizer, corpus, tasks=tasks, limit=limit, batch_size=batch_size,
                       records_path=records_path, progress=progress)
    print(demo_eval.format_table(results))
    return results


def generate_answer(run_dir: str, *, prompt: str, images: Sequence[str] = (), videos: Sequence[str] = (),
                    audios: Sequence[str] = (), max_new_tokens: int = 64, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """`gemini-jax generate`: one user turn (media first, then the text) -> the model's answer."""
    model, tokenizer = load(run_dir)
    parts = [Part(image=p) for p in images] + [Part(video=p) for p in videos] + [Part(audio=p) for p in audios]
    example = Example(contents=(Content("user", (*parts, Part(text=prompt))),))
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                            seed=seed)
    [answer] = Sampler(model, tokenizer).generate([example], [params])
    return answer
