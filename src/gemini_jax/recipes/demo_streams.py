"""The demo recipe's training stream: its stages, then batches of one stream (and one shape
group) each, interleaved by the recipe's weights. Batches hold one task each, so each task keeps
its own compact shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gemini_jax.config import ConfigError, ModelConfig
from gemini_jax.data import pipeline
from gemini_jax.data.augment import SpecAugment
from gemini_jax.data.corpora.demo import DemoCorpus
from gemini_jax.data.encode import MediaCache, encode_example
from gemini_jax.data.examples import Example
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.train import distributed

if TYPE_CHECKING:
    from gemini_jax.recipes.demo import DemoRecipe

MEDIA_TASKS = ("vqa", "asr", "video")


def _task_shapes(examples: Sequence[Example], *, tokenizer: Tokenizer, config: ModelConfig,
                 media_cache: MediaCache, sample: int = 300) -> dict[str, int]:
    """Fixed batch shapes for a group of examples: the longest of a sample, its longest
    answers and its longest clips (given first by the caller), plus a little room."""
    step = max(1, len(examples) // sample)
    chosen = list(examples[:40]) + list(examples[::step])
    rows = [encode_example(e, tokenizer=tokenizer, config=config, media_cache=media_cache) for e in chosen]
    longest = max(int(r["segment_ids"].sum()) for r in rows)
    most = lambda key: max((r[key].shape[0] for r in rows if key in r), default=0)
    shapes = {"seq_len": 8 * math.ceil((longest + 4) / 8), "max_images": most("image_patches"),
              "max_frames": most("frame_patches"), "max_audio_clips": most("audio_mels")}
    if shapes["max_audio_clips"]:
        shapes["max_mel_frames"] = max(r["audio_mels"].shape[1] for r in rows if "audio_mels" in r)
    return shapes


def _training_groups(corpus: DemoCorpus, task: str, *, kinds: Sequence[str] | None = None
                     ) -> dict[str, list[Example]]:
    """A task's training examples (of `kinds`, default all) in groups of similar shape, longest
    examples first.

    Speech is split at the median duration: padding every clip to the longest one would
    more than double the audio encoder's work (clips last 0.3 to 2.9 s).
    """
    records = corpus.records(task, "train")
    if kinds is not None:
        records = [r for r in records if r.kind in kinds]
        if not records:
            raise ValueError(f"no {task} training examples of kinds {list(kinds)}")
    if task != "asr":
        by_answer = sorted(records, key=lambda r: -len(r.meta["answer"]))
        return {task: [r.example for r in by_answer]}
    by_duration = sorted(records, key=lambda r: -r.meta["duration_s"])
    half = len(by_duration) // 2
    return {f"{task}-long": [r.example for r in by_duration[:half]],
            f"{task}-short": [r.example for r in by_duration[half:]]}


def _local(global_batch: int) -> int:
    """This process's rows of a global batch (every process reads its own records)."""
    _, count = distributed.data_shard()
    if global_batch % count:
        raise ConfigError(f"batch size {global_batch} must be a multiple of the {count} processes")
    return global_batch // count


def _task_streams(corpus: DemoCorpus, task: str, *, tokenizer: Tokenizer, config: ModelConfig,
                  recipe: "DemoRecipe", media_cache: MediaCache, kinds: Sequence[str] | None = None,
                  ) -> dict[str, tuple[Any, int]]:
    """{group name: (batch stream, number of examples)} for one media task."""
    streams = {}
    for name, examples in _training_groups(corpus, task, kinds=kinds).items():
        shapes = _task_shapes(examples, tokenizer=tokenizer, config=config, media_cache=media_cache)
        source = pipeline.encoded_source(
            examples, tokenizer=tokenizer, config=config, max_len=shapes["seq_len"],
            error_budget=len(examples) // 100, cache_rows=True,
        )
        augment = SpecAugment() if task == "asr" else None
        # One read thread per stream: rows are cached after their first epoch, and more
        # threads would only take the two cores from the training step.
        streams[name] = (pipeline.batched(source, batch_size=_local(recipe.batch_size), seed=recipe.train.seed,
                                          config=config, augment=augment, num_threads=1, prefetch_batches=1,
                                          shard=distributed.data_shard(), **shapes),
                         len(examples))
    return streams


def _stream_spec(name: str) -> tuple[str, tuple[str, ...] | None]:
    """"vqa" -> ("vqa", None); "video:order_first+size" -> ("video", ("order_first", "size"))."""
    task, colon, kinds = name.partition(":")
    if task not in (*MEDIA_TASKS, "text") or (colon and (task == "text" or "" in kinds.split("+"))):
        raise ValueError(f"unknown demo stream {name!r}: use a task ({', '.join((*MEDIA_TASKS, 'text'))}) "
                         f"or a media task and some of its kinds, e.g. 'vqa:shape' or 'video:order_first+size'")
    return task, tuple(kinds.split("+")) if kinds else None


def _weighted_streams(corpus: DemoCorpus, weights: Sequence[tuple[str, float]], *, tokenizer: Tokenizer,
                      config: ModelConfig, recipe: "DemoRecipe", media_cache: MediaCache):
    """({stream name: batches}, {stream name: weight}) for a recipe's (name, weight) pairs; a
    media stream's weight is shared among its shape groups by their sizes."""
    names = [name for name, _ in weights]
    if len(set(names)) != len(names):
        raise ValueError(f"demo stream weights name a stream twice: {names}")
    streams, stream_weights = {}, {}
    for name, weight in weights:
        task, kinds = _stream_spec(name)
        if task == "text":
            streams[name] = pipeline.packed_text(
                corpus.examples("text", "train"), tokenizer=tokenizer, seq_len=recipe.text_seq_len,
                batch_size=_local(recipe.text_batch_size), seed=recipe.train.seed, num_threads=1, prefetch_batches=1,
                shard=distributed.data_shard(),
            )
            stream_weights[name] = weight
            continue
        groups = _task_streams(corpus, task, tokenizer=tokenizer, config=config, recipe=recipe,
                               media_cache=media_cache, kinds=kinds)
        total = sum(n for _, n in groups.values())
        for group, (stream, n) in groups.items():
            key = name + group[len(task):]  # "asr-long", "vqa:shape"
            streams[key] = stream
            stream_weights[key] = weight * n / total
    return streams, stream_weights


def demo_data(corpus: DemoCorpus, *, tokenizer: Tokenizer, config: ModelConfig, recipe: "DemoRecipe"):
    """The training stream: the recipe's stages in turn, then batches of one stream (and one
    shape group) each, interleaved by the recipe's weights."""
    media_cache = MediaCache(max_bytes=2 << 30)

    def mixed(weights):
        streams, stream_weights = _weighted_streams(corpus, weights, tokenizer=tokenizer, config=config,
                                                    recipe=recipe, media_cache=media_cache)
        return pipeline.mixture(streams, weights=stream_weights)

    stages = [(mixed([(name, 1.0)]), steps) for (name, _), steps in zip(recipe.stages, recipe.stage_steps())]
    if not stages:
        return iter(mixed(recipe.weights))
    return iter(pipeline.staged([*stages, (mixed(recipe.weights), None)]))
