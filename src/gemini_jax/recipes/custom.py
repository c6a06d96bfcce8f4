"""Training on the user's own data: a mixture file of prepared data directories.

    gemini-jax data prepare my.jsonl --out data/mine --vocab-size 1024
    gemini-jax train --data mixture.yaml --run-dir runs/mine [--preset demo | --init-from RUN]

    results = train_on_data(DataRecipe(mixture="mixture.yaml", run_dir="runs/mine"))

Each source (data/mixture_file.py) becomes a stream of batches: raw-text sources packed into
rows (`packed_text`) or cut into windows of consecutive tokens (`TextWindows`), conversations
encoded and padded to one shape per source (`batched`), with the media slots the data needs;
a generated source makes its rows on the fly (`TrainingRows`, its filler another source's
text). Sources are interleaved by weight, stage by stage.
During training (`--eval-every`) each source's validation split is scored (loss and the
mixture's metrics); the final evaluation scores each source's test split (when it was
prepared with one) and the mixture's `eval:` sets, and every validation loss. `init_from`
starts from another run's latest parameters (a trained or an imported Gemma run), keeping
its model config and tokenizer; with `lora` (`--lora-rank`) only adapters on its decoder train
(train/lora.py) and the run's checkpoints hold them alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig, get_preset, override
from gemini_jax.data import pipeline
from gemini_jax.data.augment import ImageAugment, SpecAugment
from gemini_jax.data.corpora.kv_retrieval import FillerSource, TrainingRows
from gemini_jax.data.corpora.text_windows import TextWindows
from gemini_jax.data.encode import (
    EncodeError,
    MediaCache,
    document_text,
    encode_example,
)
from gemini_jax.data.examples import Example
from gemini_jax.data.mixture_file import Mixture, MixtureError, Source, load_mixture
from gemini_jax.data.prepared import PreparedData, open_prepared
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.model.lora import LoraConfig, lora_weights, merge_lora
from gemini_jax.recipes.runner import Setup, Timings, run_dir_of, train_and_evaluate
from gemini_jax.train import Trainer, distributed
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.lora import LoraTrainer, refuse_lora_run, start_lora
from gemini_jax.train.optimizer import OptimizerConfig

QUICK_EVAL_LIMIT = 200  # validation examples per source in the evaluations during training
SHAPE_SAMPLE = 300  # training examples (besides all validation ones) that set a source's row shapes
SHAPE_LARGEST = 40  # and its first ones: a bucket's largest
# Encoded rows are kept after their first epoch for sources up to this size; a row holds float32
# patches (4 bytes a pixel), so a larger source re-encodes instead of filling memory.
CACHE_ROWS_UP_TO = 20_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataRecipe:
    """A model trained on a mixture file's prepared data, evaluated on its held-out splits."""

    name: ClassVar[str] = "data"
    multi_device: ClassVar[bool] = True
    eval_limit_field: ClassVar[str] = "eval_limit"
    mixture: str  # a mixture file (YAML or JSON)
    run_dir: str | None = None  # None: runs/data
    preset: str = "demo"  # the model, unless init_from
    model: ModelConfig | None = None  # replaces the preset (tests)
    init_from: str | None = None  # a run directory: its config, tokenizer and latest parameters
    lora: LoraConfig | None = None  # train adapters on init_from's weights (train/lora.py); None: train them all
    dtype: str | None = None  # the compute dtype; None: the model's
    train: TrainConfig = TrainConfig(
        steps=1_000, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01))
    batch_size: int = 32  # a source's own batch_size replaces it
    seq_len: int | None = None  # None: the longest validation example, at most the model's context
    eval_limit: int | None = None  # examples per set in the final evaluation; None: all
    evaluate_at_end: bool = True

    def model_config(self, tokenizer: Tokenizer) -> ModelConfig:
        if self.init_from is not None:
            config = checkpoint.read_config(self.init_from)
        else:  # a fresh model's embedding table fits the tokenizer exactly
            config = override(self.model or get_preset(self.preset), vocab_size=tokenizer.vocab_size)
        return config if self.dtype is None else override(config, dtype=self.dtype)

    def __post_init__(self):
        if self.lora is not None and self.init_from is None:
            raise ConfigError("LoRA adapts a trained model: give init_from (--init-from RUN_DIR)")

    def make_trainer(self, model: Gemini, optimizer: OptimizerConfig, *, mesh: Any = None) -> Trainer:
        """The Trainer, its model holding `init_from`'s parameters (a run being resumed restores its
        own); with `lora`, a LoraTrainer of adapters on them."""
        if self.lora is not None:
            model = start_lora(model, self.lora, run_dir=run_dir_of(self), init_from=self.init_from,
                               seed=self.train.seed)
            return LoraTrainer(model, optimizer, mesh=mesh)
        refuse_lora_run(run_dir_of(self))
        if self.init_from is not None and not checkpoint.has_checkpoints(run_dir_of(self)):
            checkpoint.load_params(self.init_from, model)
        return Trainer(model, optimizer, mesh=mesh)

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        return mixture_setup(self, load_mixture(self.mixture), run_dir=run_dir, timings=timings)


def mixture_setup(recipe: DataRecipe, mixture: Mixture, *, run_dir: Path, timings: Timings,
                  tokenizer_file: str | Path | None = None, corpus: Any = None) -> Setup:
    """The run `recipe` trains on `mixture`: its tokenizer (`tokenizer_file`, else the init run's
    or the sources'), model config, training stream and evaluations. `corpus` is a built
    DemoCorpus for the mixture's demo `eval_tasks` (None: they build the default one)."""
    from gemini_jax.evals.registry import EvalOptions, evaluate, format_results

    data = open_sources(mixture)
    tokenizer_file = tokenizer_file or choose_tokenizer(data, init_from=recipe.init_from)
    tokenizer = Tokenizer.load(tokenizer_file)
    config = recipe.model_config(tokenizer)
    check_modalities(data, config)
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
    with timings.phase("data_setup_s"):
        stream = mixture_stream(mixture, data, tokenizer=tokenizer, config=config, recipe=recipe)
    quick_sets, final_sets = evaluation_sets(mixture, data)

    # A LoRA model is evaluated merged, as generate and serve read it (one weight a matmul).
    plain = lambda model: merge_lora(model) if lora_weights(model) else model

    def quick(model: Gemini) -> dict[str, Any]:
        options = EvalOptions(limit=QUICK_EVAL_LIMIT, progress=False)
        return evaluate(plain(model), tokenizer, quick_sets, options, corpus=corpus)

    def final(model: Gemini) -> dict[str, Any]:
        options = EvalOptions(limit=recipe.eval_limit, progress=recipe.train.progress)
        return evaluate(plain(model), tokenizer, final_sets, options, corpus=corpus)

    return Setup(config=config, tokenizer=tokenizer, data=stream, quick_evaluate=quick, evaluate=final,
                 format_results=format_results)


def train_on_data(recipe: DataRecipe) -> dict[str, Any]:
    """`train_and_evaluate` for a DataRecipe, starting from `recipe.init_from`'s parameters if given."""
    return train_and_evaluate(recipe, make_trainer=recipe.make_trainer)


def open_sources(mixture: Mixture) -> dict[str, PreparedData]:
    """The prepared data of the mixture's sources read from disk (a generated source has none)."""
    return {name: open_prepared(source.path) for name, source in mixture.sources.items() if source.path is not None}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepared_with(data: PreparedData) -> str:
    options = data.manifest.get("options", {})
    if options.get("tokenizer"):
        return f"--tokenizer {options['tokenizer']}"
    return f"--vocab-size {options['vocab_size']}" if options.get("vocab_size") else "its own tokenizer"


def choose_tokenizer(data: Mapping[str, PreparedData], *, init_from: str | None) -> Path:
    """The init run's tokenizer, or the one the prepared sources share; an error says what to do
    when they disagree or none has one."""
    with_tokenizer = {name: d for name, d in data.items() if d.tokenizer_path is not None}
    digests = {name: _sha256(d.tokenizer_path) for name, d in with_tokenizer.items()}
    if len(set(digests.values())) > 1:
        named = ", ".join(f"{with_tokenizer[n].path} ({_prepared_with(with_tokenizer[n])})" for n in digests)
        raise ConfigError(f"the sources were prepared with different tokenizers: {named}; prepare them all with "
                          f"one (`data prepare --tokenizer` naming the same run or .model file)")
    if init_from is not None:
        run_tokenizer = checkpoint.tokenizer_path(init_from)
        run_digest = _sha256(run_tokenizer)
        for name, digest in digests.items():
            if digest != run_digest:
                d = with_tokenizer[name]
                raise ConfigError(f"{init_from}'s tokenizer does not match {d.path}'s (prepared with "
                                  f"{_prepared_with(d)}); re-run `gemini-jax data prepare --tokenizer {init_from}`")
        return run_tokenizer
    if not with_tokenizer:
        raise ConfigError(f"no tokenizer: the sources ({', '.join(str(d.path) for d in data.values())}) were prepared "
                          f"without one; prepare with --vocab-size N (trains one) or --tokenizer RUN_DIR, or give "
                          f"--init-from RUN_DIR")
    return next(iter(with_tokenizer.values())).tokenizer_path


def check_modalities(data: Mapping[str, PreparedData], config: ModelConfig) -> None:
    """Media parts need the model's encoder for them: refused now, not at the first batch."""
    needs = {"image": ("vision", config.vision), "video": ("vision", config.vision), "audio": ("audio", config.audio)}
    for name, d in data.items():
        missing = [kind for kind in d.modalities if kind in needs and needs[kind][1] is None]
        if missing:
            raise ConfigError(f"{d.path} holds {', '.join(missing)} parts, but the model has no "
                              f"{needs[missing[0]][0]} encoder: choose a --preset with one (e.g. demo)")


def _local(global_batch: int) -> int:
    """This process's rows of a global batch (every process reads its own records)."""
    _, count = distributed.data_shard()
    if global_batch % count:
        raise ConfigError(f"batch size {global_batch} must be a multiple of the {count} processes")
    return global_batch // count


def _process_seed(seed: int) -> int:
    """The seed of this process's rows where rows are drawn rather than read by record: each
    process of a multi-host run draws its own (a single process keeps `seed`)."""
    index, count = distributed.data_shard()
    return seed * count + index


def _sample(examples: Sequence[Any], count: int) -> list[Any]:
    step = max(1, len(examples) // count)
    return [examples[i] for i in range(0, len(examples), step)][:count]


class Subset(Sequence[Example]):
    """Some records of a split, by index."""

    def __init__(self, examples: Sequence[Example], indices: Sequence[int]):
        self._examples, self._indices = examples, list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._examples[self._indices[i]]


def _media_bytes(example: Example) -> int:
    return sum(len(getattr(p, p.kind)) for turn in example.contents for p in turn.parts if p.kind != "text")


def _text_chars(example: Example) -> int:
    return sum(len(p.text) for turn in example.contents for p in turn.parts if p.kind == "text")


def source_groups(source: Source, data: PreparedData) -> dict[str, Sequence[Example]]:
    """A source's training records in its groups: {name: records}. A source keeps the records of
    its `tasks`; with `buckets: N` they are cut into N groups by media size (largest first),
    so that short clips are not padded to the longest."""
    train = data.split("train")
    if source.tasks is None and source.buckets == 1:
        return {source.name: train}
    examples = [train[i] for i in range(len(train))]  # one read; media stay encoded bytes
    indices = [i for i, e in enumerate(examples) if source.tasks is None or e.task in source.tasks]
    if not indices:
        found = sorted({e.task for e in examples})
        raise MixtureError(f"{source.name}: {data.path} holds no training records of tasks {list(source.tasks)}; "
                           f"its tasks: {found}")
    if source.buckets == 1:
        return {source.name: Subset(train, indices)}
    by_size = sorted(indices, key=lambda i: (-_media_bytes(examples[i]), -_text_chars(examples[i]), i))
    cuts = [round(k * len(by_size) / source.buckets) for k in range(source.buckets + 1)]
    return {f"{source.name}-{k}": Subset(train, by_size[a:b]) for k, (a, b) in enumerate(itertools.pairwise(cuts))
            if b > a}


def row_shapes(examples: Sequence[Example], validation: Sequence[Example], *, tokenizer: Tokenizer,
               config: ModelConfig, seq_len: int | None, where: Any) -> dict[str, int]:
    """One group's batch shapes: rows fit the longest of its validation examples and a sample of
    its training ones, the first (a bucket's largest) among them (at most the model's context;
    longer ones are skipped as bad records), media slots the most any of them holds."""
    sample = [*validation, *examples[:SHAPE_LARGEST], *_sample(examples, SHAPE_SAMPLE)]
    cache = MediaCache(max_bytes=256 << 20)
    rows = []
    for example in sample:
        try:
            rows.append(encode_example(example, tokenizer=tokenizer, config=config, media_cache=cache))
        except EncodeError:
            continue  # longer than the context: training skips it too
    if not rows:
        raise MixtureError(f"{where}: none of its sampled examples fits the model's context of "
                           f"{config.max_seq_len} tokens")
    most = lambda key: max((r[key].shape[0] for r in rows if key in r), default=0)
    longest = 8 * math.ceil(most("tokens") / 8)
    shapes = {"seq_len": seq_len or min(longest, config.max_seq_len), "max_images": most("image_patches"),
              "max_frames": most("frame_patches"), "max_audio_clips": most("audio_mels")}
    if shapes["max_audio_clips"]:
        shapes["max_mel_frames"] = max(r["audio_mels"].shape[1] for r in rows if "audio_mels" in r)
    return shapes


def source_shape(source: Source, *, recipe: DataRecipe, config: ModelConfig) -> tuple[int, int | None]:
    """A source's batch size and row length: its own, else the run's; a float is relative to the
    run's (its seq_len, else the model's context). A length of None: its examples set it."""
    batch_size = source.batch_size or recipe.batch_size
    if isinstance(batch_size, float):
        batch_size = max(1, round(batch_size * recipe.batch_size))
    seq_len = source.seq_len or recipe.seq_len
    if isinstance(seq_len, float):
        seq_len = max(1, int(seq_len * (recipe.seq_len or config.max_seq_len)))
    return batch_size, seq_len


def source_text(source: Source, data: PreparedData) -> str:
    """A text-only source's training records joined into one text, in their order."""
    if not data.text_only:
        raise MixtureError(f"{source.name}: {data.path} holds more than raw text; `packing: windows` and a "
                           f"generated source's filler take a text-only source")
    return "".join(document_text(e) for group in source_groups(source, data).values() for e in group)


def source_streams(source: Source, data: PreparedData, *, tokenizer: Tokenizer, config: ModelConfig,
                   batch_size: int, seq_len: int | None, seed: int) -> dict[str, tuple[Any, int]]:
    """One source's training batches, {group: (stream, records)}: packed rows or windows of
    text, or padded conversations, one stream per group."""
    if not len(data.split("train")):
        raise MixtureError(f"{data.path}: its train split is empty")
    if source.packing == "windows":
        ids = np.asarray(tokenizer.encode(source_text(source, data)), np.int32)
        windows = lambda: TextWindows(ids, seq_len=seq_len or config.max_seq_len, batch_size=_local(batch_size),
                                      bos_id=tokenizer.bos_id, seed=_process_seed(seed))
        return {source.name: (pipeline.resumable(windows), len(data.split("train")))}
    groups = source_groups(source, data)
    if data.text_only:
        return {name: (pipeline.packed_text(
            train, tokenizer=tokenizer, seq_len=seq_len or config.max_seq_len, batch_size=_local(batch_size),
            seed=seed, num_threads=1, prefetch_batches=1, error_budget=max(10, len(train) // 100),
            shard=distributed.data_shard()), len(train)) for name, train in groups.items()}
    augment = SpecAugment() if source.augment == "specaugment" else None
    validation = data.split("validation")
    streams = {}
    for name, train in groups.items():
        shapes = row_shapes(train, validation, tokenizer=tokenizer, config=config, seq_len=seq_len,
                            where=f"{data.path} ({name})")
        cache = source.cache if source.cache is not None else len(train) <= CACHE_ROWS_UP_TO
        rows = pipeline.encoded_source(train, tokenizer=tokenizer, config=config, max_len=shapes["seq_len"],
                                       error_budget=max(10, len(train) // 100), cache_rows=cache,
                                       transform=ImageAugment() if source.augment == "image" else None, seed=seed)
        streams[name] = (pipeline.batched(rows, batch_size=_local(batch_size), seed=seed, config=config,
                                          augment=augment, num_threads=1, prefetch_batches=1,
                                          shard=distributed.data_shard(), **shapes), len(train))
    return streams


def generated_stream(source: Source, filler: FillerSource, *, batch_size: int, seq_len: int, seed: int):
    """A generated source's batches: key-value retrieval examples packed into rows, cut from `filler`."""
    queries = {} if source.queries is None else {"queries": source.queries}
    return pipeline.resumable(lambda: TrainingRows(filler, seq_len=seq_len, batch_size=_local(batch_size),
                                                   seed=_process_seed(seed), **queries))


def mixture_stream(mixture: Mixture, data: Mapping[str, PreparedData], *, tokenizer: Tokenizer,
                   config: ModelConfig, recipe: DataRecipe):
    """The training stream: each stage's sources interleaved by its weights (a source's weight
    shared among its groups by their sizes), stage after stage."""
    fillers: dict[str, FillerSource] = {}  # one per filler, shared by the sources it fills: its lines are encoded

    def filler(name: str) -> FillerSource:
        if name not in fillers:
            fillers[name] = FillerSource(source_text(mixture.sources[name], data[name]), tokenizer, split="train")
        return fillers[name]

    def streams_of(source: Source) -> dict[str, tuple[Any, int]]:
        batch_size, seq_len = source_shape(source, recipe=recipe, config=config)
        if source.generate is not None:
            return {source.name: (generated_stream(source, filler(source.filler), batch_size=batch_size,
                                                   seq_len=seq_len or config.max_seq_len, seed=recipe.train.seed), 1)}
        return source_streams(source, data[source.name], tokenizer=tokenizer, config=config, seed=recipe.train.seed,
                              batch_size=batch_size, seq_len=seq_len)

    streams = {name: streams_of(source) for name, source in mixture.sources.items()
               if any(name in stage.weights for stage in mixture.stages)}

    def mixed(weights: Mapping[str, float]):
        chosen, shares = {}, {}
        for name, weight in weights.items():
            total = sum(n for _, n in streams[name].values())
            for group, (stream, n) in streams[name].items():
                chosen[group], shares[group] = stream, weight * n / total
        return pipeline.mixture(chosen, weights=shares)

    steps = mixture.stage_steps(recipe.train.steps)
    stages = [(mixed(stage.weights), count) for stage, count in zip(mixture.stages, steps)]
    if len(stages) == 1:
        return iter(stages[0][0])
    return iter(pipeline.staged([*stages[:-1], (stages[-1][0], None)]))


def evaluation_sets(mixture: Mixture, data: Mapping[str, PreparedData]):
    """(the sets scored during training, those of the final evaluation): validation during
    training, never test; test splits and the `eval:` sets at the end, with validation loss."""
    from gemini_jax.evals.registry import resolve
    from gemini_jax.evals.tasks.prepared import PreparedSet

    metrics = tuple(dict.fromkeys([*mixture.metrics, "loss", "perplexity"]))
    validation = functools.partial(PreparedSet, split="validation")
    quick = [validation(name=f"{name}/validation", examples=d.split("validation"), metrics=metrics)
             for name, d in data.items() if len(d.split("validation"))]
    final = [PreparedSet(name=f"{name}/test", examples=d.split("test"), metrics=metrics)
             for name, d in data.items() if "test" in d.splits and len(d.split("test"))]
    final += [PreparedSet(name=e.name, path=str(e.path), metrics=metrics) for e in mixture.eval_sets]
    final += [validation(name=f"{name}/validation", examples=d.split("validation"), metrics=("loss", "perplexity"))
              for name, d in data.items() if len(d.split("validation"))]
    tasks = resolve(mixture.eval_tasks) if mixture.eval_tasks else []
    quick += [dataclasses.replace(t, split="validation") for t in tasks if "split" in t.__dataclass_fields__]
    final += tasks
    return quick, final
