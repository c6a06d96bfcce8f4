"""The embedded demo, end to end: corpus -> tokenizer -> one model trained on a task mixture -> evaluation.

    gemini-jax train        # this recipe with its defaults; about 20 minutes on 2 CPU cores

One multimodal model learns four tasks at once: easy-VQA questions about images, transcription
of synthesized speech, questions about short videos, and language modelling of Python code.
Training starts with short stages of one task each (speech, then shape questions), then
interleaves the tasks by weight. Batches hold one task each (so each task keeps its own compact
shapes). The recipe's numbers were chosen by measurement on 2 cores: small
matrices and many updates learn more per minute there than a wider model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig, get_preset, override
from gemini_jax.data import pipeline
from gemini_jax.data.augment import SpecAugment
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.encode import MediaCache, encode_example
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.evals.tasks import demo as demo_eval
from gemini_jax.evals.scoring import LossScorer
from gemini_jax.model import Gemini
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams
from gemini_jax.sharding import MeshShape
from gemini_jax.train import distill, distributed
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import TrainConfig, Trainer, train

MEDIA_TASKS = ("vqa", "asr", "video")
ANSWER_TOKENS = {"vqa": 8, "asr": 24, "video": 8}
TOKENIZER_RECIPE = 1  # DemoCorpus.tokenizer_corpus's version: a change trains a new tokenizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoRecipe:
    preset: str = "demo"
    steps: int = 10_000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # Share of batches per stream. A stream is a task ("vqa") or some kinds of a task's examples
    # ("vqa:shape", "video:order_first+size"), drawn as a stream of its own beside the task's.
    weights: tuple[tuple[str, float], ...] = (
        ("vqa", 3.0), ("asr", 3.0), ("video", 2.0), ("text", 0.5), ("vqa:shape", 1.0))
    text_seq_len: int = 128
    text_batch_size: int = 16  # a text batch scores every token: 16 x 128 costs about a 32-row VQA batch
    # Stages before the mixture: (stream, share of the steps), each stream trained alone in
    # turn; what a stage taught is kept while its stream keeps a share in `weights`. Why (all
    # measured on 2 cores):
    # - speech aligns in about 900 steps when it is trained alone from initialisation (spoken
    #   numbers 90% exact, loss 0.11), but far more slowly after any other training (loss 0.9
    #   after 900 speech steps that followed 900 of shape questions), and beside the other
    #   tasks from the start it aligned in some runs (95%) and not in others (25-35%);
    # - on the mixture from the start the vision encoder settles on colour, which every
    #   question kind rewards early, and loses the shape information it had at initialisation,
    #   so shape answers stay at chance (43%); shape questions alone teach it (82% after 900
    #   steps, here after the speech stage).
    stages: tuple[tuple[str, float], ...] = (("asr", 0.09), ("vqa:shape", 0.09))
    seed: int = 0

    def __post_init__(self):
        shares = [share for _, share in self.stages]
        if any(not 0 < share < 1 for share in shares) or sum(shares) >= 1:
            raise ValueError(f"DemoRecipe.stages need shares of the steps in (0, 1) summing below 1, got {shares}")

    def stage_steps(self) -> list[int]:
        return [int(self.steps * share) for _, share in self.stages]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_tokenizer(corpus: DemoCorpus, *, vocab_size: int) -> Path:
    """The demo tokenizer, trained once per corpus, recipe and vocabulary size and cached beside it."""
    path = corpus.root / f"tokenizer-v{TOKENIZER_RECIPE}-{vocab_size}.model"
    if not path.exists():
        train_tokenizer(corpus.tokenizer_corpus(), vocab_size=vocab_size, path=path)
    return path


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
                  recipe: DemoRecipe, media_cache: MediaCache, kinds: Sequence[str] | None = None,
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
        streams[name] = (pipeline.batched(source, batch_size=_local(recipe.batch_size), seed=recipe.seed,
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
                      config: ModelConfig, recipe: DemoRecipe, media_cache: MediaCache):
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
                batch_size=_local(recipe.text_batch_size), seed=recipe.seed, num_threads=1, prefetch_batches=1,
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


def demo_data(corpus: DemoCorpus, *, tokenizer: Tokenizer, config: ModelConfig, recipe: DemoRecipe):
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
                       evaluate_at_end: bool = True, progress: bool = True, config: ModelConfig | None = None,
                       sizes: DemoSizes = DemoSizes(), recipe: DemoRecipe | None = None,
                       mesh: MeshShape | None = None, sdc_check_every: int = 0,
                       loss_spike_factor: float = 0.0, replica_every: int = 0,
                       tokenizer_file: str | Path | None = None,
                       make_trainer: Callable[..., Trainer] = Trainer) -> dict[str, Any]:
    """`gemini-jax train`: the whole demo. Returns the final evaluation (and prints its table).

    `config` replaces the preset and `sizes` the corpus sizes (both for quick runs and tests);
    `recipe` replaces the default recipe (then `preset` and `seed` are the recipe's).
    `mesh` shards training over all devices (sharding.py); None trains on one.
    `sdc_check_every` and `loss_spike_factor` are TrainConfig's and OptimizerConfig's guards;
    `replica_every` keeps an in-memory copy of the state to restart from (train/replica.py).
    `tokenizer_file` replaces the demo's own tokenizer and `make_trainer` the Trainer (both
    for `distill_and_evaluate`).
    """
    checkpoint.check_trainable(run_dir)  # before anything is written into it
    recipe = recipe or DemoRecipe(preset=preset, seed=seed)
    recipe = dataclasses.replace(
        recipe, **{k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("learning_rate", learning_rate))
                   if v is not None})
    config = config or get_preset(recipe.preset)
    if dtype is not None:
        config = override(config, dtype=dtype)
    timings = {}

    start = time.perf_counter()
    corpus = DemoCorpus.build(cache_dir, sizes=sizes, progress=progress)
    timings["corpus_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tokenizer_file = tokenizer_file or prepare_tokenizer(corpus, vocab_size=config.vocab_size)
    tokenizer = Tokenizer.load(tokenizer_file)
    timings["tokenizer_s"] = time.perf_counter() - start
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)

    start = time.perf_counter()
    data = demo_data(corpus, tokenizer=tokenizer, config=config, recipe=recipe)
    timings["data_setup_s"] = time.perf_counter() - start
    train_config = TrainConfig(
        steps=recipe.steps, seed=recipe.seed, eval_every=eval_every, progress=progress, mesh=mesh,
        checkpoint_every=max(1, recipe.steps // 4), sdc_check_every=sdc_check_every,
        replica_every=replica_every,
        optimizer=OptimizerConfig(
            learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, total_steps=recipe.steps,
            weight_decay=recipe.weight_decay, loss_spike_factor=loss_spike_factor,
        ),
    )
    quick = (lambda m: evaluate(m, tokenizer, corpus, limit=200, progress=False)) if eval_every else None
    result = train(config=config, run_dir=run_dir, data=data, train_config=train_config, evaluate=quick,
                   make_trainer=make_trainer)
    timings["training_s"] = result.wall_seconds
    _log(result.summary())

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


def distill_and_evaluate(*, teacher: str, student_preset: str = "demo-half", run_dir: str = "runs/distill",
                         distill_config: distill.DistillConfig | None = None,
                         config: ModelConfig | None = None, **options: Any) -> dict[str, Any]:
    """`gemini-jax distill`: `train_and_evaluate` of the student preset (or `config`) with the
    teacher run's tokenizer and the distillation loss.

    Everything else is `gemini-jax train --preset <student>`'s: the same data stream, seed,
    schedule and final evaluation, so a distilled and a scratch student compare step for
    step. `options` are train_and_evaluate's (steps, batch_size, cache_dir, ...).
    """
    distill_config = distill_config or distill.DistillConfig()
    teacher_model = distill.load_teacher(teacher)
    config = config or get_preset(student_preset)
    distill.check_compatible(teacher=teacher_model.config, student=config)
    checkpoint.check_trainable(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    # Only the student is checkpointed: this records what it learned from, and a resumed run
    # must learn from the same teacher.
    record_path = Path(run_dir, "distillation.json")
    record = {"teacher": str(Path(teacher).resolve()), **dataclasses.asdict(distill_config)}
    if record_path.exists() and checkpoint.has_checkpoints(run_dir):
        earlier = json.loads(record_path.read_text()).get("teacher")
        if earlier is not None and Path(earlier).resolve() != Path(teacher).resolve():
            raise checkpoint.CheckpointError(
                f"{run_dir!r} was distilled from {earlier!r}; resume it with that teacher, or distil from "
                f"{str(teacher)!r} into another run directory")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return train_and_evaluate(
        run_dir=run_dir, preset=student_preset, config=config, tokenizer_file=checkpoint.tokenizer_path(teacher),
        make_trainer=functools.partial(distill.DistillTrainer, teacher=teacher_model, distill=distill_config),
        **options)


def load(run_dir: str) -> tuple[Gemini, Tokenizer]:
    """A trained model and its tokenizer from a run directory."""
    config = checkpoint.read_config(run_dir)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(run_dir))
    model = Gemini(config, rngs=nnx.Rngs(0))
    checkpoint.load_params(run_dir, model)
    return model, tokenizer


def evaluate_checkpoint(run_dir: str, *, cache_dir: str | None = None, tasks: Sequence[str] = demo_eval.TASKS,
                        limit: int | None = None, batch_size: int = 256, records_path: str | None = None,
                        progress: bool = True, sizes: DemoSizes = DemoSizes()) -> dict[str, Any]:
    """`gemini-jax eval`: the demo's held-out tables for a trained run."""
    model, tokenizer = load(run_dir)
    corpus = DemoCorpus.build(cache_dir, sizes=sizes, progress=progress)
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
