"""`gemini-jax data prepare`: the user's sources in, a prepared data directory out.

    report = prepare(["chats.jsonl", "docs/"], "data/mine", PrepareOptions(vocab_size=4000))

Pass 1 reads every record in order, checks it, normalises its text, runs the filters
(heuristic quality on raw-text documents, the classifier, safety, decontamination; the
first that objects removes it), computes the kept ones' exact-dedup keys and MinHash
signatures, and spools the encoded records (and where each came from) to temporary
ArrayRecord files. Pass 2 streams the spool to
the split shards (by sha256 of the record), skipping dedup's duplicates. Then the tokenizer
(trained on a sample of the train text, or copied), report.json, manifest.json last, and
the `.partial` directory renamed into place. Memory holds dedup's hashes, not the records.
With `workers > 1` pass 1's per-record work runs in a process pool, in order. With
`executor` ("local" or "slurm") the same stages run as datatrove tasks (cluster.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from gemini_jax.data.examples import PART_KINDS, Content, Example, ExampleError, Part
from gemini_jax.data.prepare.record_codec import decode_record, encode_record
from gemini_jax.data.prepare.report import StageStats, print_summary
from gemini_jax.data.prepare.shards import ShardWriter, read_spool, spool_writer
from gemini_jax.data.prepare.sources import (BadRecords, RawRecord, RecordInvalid, check_sources, iter_sources,
                                             load_record)
from gemini_jax.data.prepared import FORMAT, MANIFEST, PARTIAL_SUFFIX
from gemini_jax.data.records import DataError

SPLITS = ("train", "validation", "test")
CODE_SUFFIXES = frozenset(".py .pyi .js .ts .c .h .cc .cpp .hpp .java .go .rs .rb .sh .lua .jl .scala .kt".split())
CHUNK = 64  # records per task sent to a worker: large enough to pay for the pickling


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """What `data prepare` does; every field is a flag of the command."""

    validation_fraction: float = 0.05
    test_fraction: float = 0.0
    normalize: bool = True
    quality: bool = True  # heuristic filters (text documents only; chat examples' text is short)
    classifier_good: tuple[str, ...] = ()  # JSONL/text sources of good examples -> model-based filter
    classifier_bad: tuple[str, ...] = ()
    classifier_threshold: float = 0.5
    safety: bool = True
    dedup: bool = True  # exact
    near_dedup: bool = True  # MinHash
    near_dedup_threshold: float = 0.6
    decontaminate: bool = True
    decontaminate_n: int = 13
    eval_jsonl: tuple[str, ...] = ()
    eval_data_dir: str | None = None
    vocab_size: int | None = None  # train a tokenizer on a sample of the prepared text
    tokenizer: str | None = None  # or copy this one (a run dir or a .model file)
    case_markers: bool = False  # the trained tokenizer marks capitals (data/case_markers.py)
    tokenizer_sample_bytes: int = 100 << 20
    max_bad_records: int = 0  # bad records skipped and counted; more is an error
    records_per_shard: int = 10_000
    workers: int = 1
    overwrite: bool = False
    # Where the stages run (cluster.py): None is this process (and its --workers); "local" or "slurm"
    # runs pass 1 as `tasks` datatrove tasks and the rest as one more task.
    executor: str | None = None
    tasks: int = 1
    logging_dir: str | None = None  # datatrove's logs and completion markers; default DATA_DIR.logs
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_mem_per_cpu_gb: int = 2
    sbatch_args: tuple[str, ...] = ()  # more `#SBATCH --KEY=VALUE` lines, written "KEY=VALUE" (or "KEY")

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise DataError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction >= 1:
            raise DataError("validation_fraction + test_fraction must stay below 1: nothing would be left to train on")
        if bool(self.classifier_good) != bool(self.classifier_bad):
            raise DataError("the quality classifier needs both good and bad examples (--classifier-good and "
                            "--classifier-bad)")
        if self.vocab_size is not None and self.tokenizer is not None:
            raise DataError("give either --vocab-size (train a tokenizer) or --tokenizer (copy one), not both")
        if self.case_markers and self.vocab_size is None:
            raise DataError("--case-markers applies to a tokenizer trained here: give --vocab-size too")
        for name in ("records_per_shard", "workers", "decontaminate_n", "tokenizer_sample_bytes", "tasks",
                     "slurm_mem_per_cpu_gb"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be 1 or more, got {getattr(self, name)}")
        self._check_executor()

    def _check_executor(self) -> None:
        if self.executor not in (None, "local", "slurm"):
            raise DataError(f"--executor must be 'local' or 'slurm', got {self.executor!r}")
        if self.executor is None:
            for name in ("logging_dir", "slurm_partition", "slurm_time", "sbatch_args"):
                if getattr(self, name):
                    raise DataError(f"--{name.replace('_', '-')} goes with --executor")
            if self.tasks > 1:
                raise DataError("--tasks goes with --executor (local or slurm); alone, use --workers")
        if self.executor == "slurm" and not (self.slurm_partition and self.slurm_time):
            raise DataError("--executor slurm needs --slurm-partition and --slurm-time")
        if self.executor == "local" and (self.slurm_partition or self.slurm_time or self.sbatch_args):
            raise DataError("--slurm-partition, --slurm-time and --sbatch-arg go with --executor slurm")


# ----------------------------------------------------------------------------------------------
# Pass 1's per-record work: pure functions of the record and the filters, so they can run anywhere.


@dataclasses.dataclass(frozen=True)
class Outcome:
    where: str
    input_bytes: int
    bad: str | None = None  # why the record is unusable
    skipped: str | None = None  # an empty file met in a folder: reported, not counted as bad
    removed_by: str | None = None  # the filter that removed it
    reason: str | None = None
    text: str = ""  # the first 200 characters when removed
    text_bytes: int = 0
    record: bytes | None = None  # the encoded record when kept
    changed: bool = False  # normalisation changed its text
    document: bool = False  # a raw-text document: the only kind the quality rules read
    exact_key: int | None = None  # ExactDedup's key when kept and exact dedup is on
    signature: object = None  # NearDedup's MinHash signature when kept, text-only and near dedup is on


@dataclasses.dataclass(frozen=True)
class Filters:
    """The filters pass 1 runs, in order; built once and copied to each worker."""

    normalize: bool
    prose: object | None  # HeuristicQuality for documents
    code: object | None  # HeuristicQuality.for_code for source files
    others: tuple  # classifier, safety, decontamination: every record
    exact_dedup: object | None  # ExactDedup, NearDedup: the workers compute keys and signatures,
    near_dedup: object | None  # the parent's copies collect them

    def names(self) -> list[str]:
        return (["quality"] if self.prose is not None else []) + [f.name for f in self.others]


def _text_of(example: Example) -> str:
    return "\n".join(p.text for turn in example.contents for p in turn.parts if p.kind == "text")


def _normalized(example: Example) -> Example:
    from gemini_jax.data.prepare.normalize import normalize_text

    turns = tuple(Content(t.role, tuple(Part(text=normalize_text(p.text)) if p.kind == "text" else p
                                        for p in t.parts)) for t in example.contents)
    return dataclasses.replace(example, contents=turns)


def process(raw: RawRecord, filters: Filters) -> Outcome:
    """Check, normalise, filter and encode one record."""
    if raw.kind == "skip":
        return Outcome(raw.where, 0, skipped=f"{raw.where}: {raw.payload}")
    size = len(raw.payload.encode("utf-8", "surrogatepass"))
    try:
        example = load_record(raw)
        before = _text_of(example)
        if filters.normalize:
            example = _normalized(example)
        text = _text_of(example)
        checks = list(filters.others)
        if example.raw_text and filters.prose is not None:
            is_code = raw.kind == "text" and Path(raw.where).suffix in CODE_SUFFIXES
            checks.insert(0, filters.code if is_code else filters.prose)
        for check in checks:
            reason = check(text)
            if reason is not None:
                return Outcome(raw.where, size, removed_by=check.name, reason=reason, text=text[:200],
                               text_bytes=len(text.encode("utf-8", "surrogatepass")), document=example.raw_text)
        record = encode_record(example)
    except (RecordInvalid, ExampleError) as e:  # a bad record; anything else is a bug and propagates
        message = str(e)
        return Outcome(raw.where, size, bad=message if message.startswith(raw.where) else f"{raw.where}: {message}")
    return Outcome(raw.where, size, text_bytes=len(text.encode("utf-8")), record=record, changed=text != before,
                   document=example.raw_text, **_dedup_keys(example, text, filters))


def _dedup_keys(example: Example, text: str, filters: Filters) -> dict:
    """Exact dedup hashes the text with each media blob's digest: the same question about another image is
    no duplicate. Near dedup reads words only, so records with media are left to exact dedup."""
    blobs = [getattr(p, p.kind) for turn in example.contents for p in turn.parts if p.kind != "text"]
    keys = {}
    if filters.exact_dedup is not None:
        digests = "".join(f"\n{hashlib.sha256(b).hexdigest()}" for b in blobs)
        keys["exact_key"] = filters.exact_dedup.key(text + digests)
    if filters.near_dedup is not None and not blobs:
        keys["signature"] = filters.near_dedup.signature(text)
    return keys


_WORKER_FILTERS: Filters | None = None


def _init_worker(filters: Filters) -> None:
    global _WORKER_FILTERS
    _WORKER_FILTERS = filters


def _process_chunk(raws: list[RawRecord]) -> list[Outcome]:
    return [process(raw, _WORKER_FILTERS) for raw in raws]


def _chunks(items: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def _pool(filters: Filters, workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A started pool of `workers` processes holding the filters (None for one worker).

    Forked, where the system can: a spawned worker would import this package again, JAX and grain
    included (about 5 s each). Every process starts here, before the parent opens any file or
    starts a thread of its own, so that nothing half-held is copied into a child."""
    if workers == 1:
        yield None
        return
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                             initializer=_init_worker, initargs=(filters,)) as pool:
        for started in [pool.submit(int) for _ in range(workers)]:
            started.result()
        yield pool


def _outcomes(raws: Iterable[RawRecord], filters: Filters, pool: ProcessPoolExecutor | None,
              workers: int) -> Iterator[Outcome]:
    """Every record's outcome, in input order; at most 4 chunks a worker in flight (flat memory)."""
    if pool is None:
        for raw in raws:
            yield process(raw, filters)
        return
    pending: collections.deque[Future] = collections.deque()
    for chunk in _chunks(raws, CHUNK):
        pending.append(pool.submit(_process_chunk, chunk))
        if len(pending) >= 4 * workers:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


@contextlib.contextmanager
def processed(raws: Iterable[RawRecord], filters: Filters, workers: int) -> Iterator[Iterator[Outcome]]:
    """The outcomes of `raws` in input order, from `workers` processes started on entry (pass
    `raws` unstarted, e.g. `iter_sources(...)`: the pool forks before any source is open)."""
    with _pool(filters, workers) as pool:
        yield _outcomes(raws, filters, pool, workers)


# ----------------------------------------------------------------------------------------------
# Building the filters.


def _texts(sources: Sequence[str], what: str) -> list[str]:
    texts = []
    for raw in iter_sources(sources):
        try:
            texts.append(_text_of(load_record(raw)))
        except RecordInvalid as e:
            raise DataError(f"{what}: {e}") from None
    return texts


def build_filters(options: PrepareOptions) -> Filters:
    others = []
    if options.classifier_good:
        from gemini_jax.data.prepare.classifier import ClassifierFilter, QualityClassifier

        classifier = QualityClassifier.train(_texts(options.classifier_good, "--classifier-good"),
                                             _texts(options.classifier_bad, "--classifier-bad"))
        others.append(ClassifierFilter(classifier, options.classifier_threshold))
    if options.safety:
        from gemini_jax.data.prepare.safety import SafetyFilter

        others.append(SafetyFilter())
    if options.decontaminate:
        from gemini_jax.data.prepare.decontaminate import Decontaminator, eval_sets

        sets = eval_sets(data_dir=options.eval_data_dir, jsonl=options.eval_jsonl)
        others.append(Decontaminator(sets, n=options.decontaminate_n))
    prose = code = None
    if options.quality:
        from gemini_jax.data.prepare.quality import HeuristicQuality

        prose, code = HeuristicQuality(), HeuristicQuality.for_code()
    exact = near = None
    if options.dedup:
        from gemini_jax.data.prepare.dedup import ExactDedup

        exact = ExactDedup()
    if options.near_dedup:
        from gemini_jax.data.prepare.dedup import NearDedup

        near = NearDedup(threshold=options.near_dedup_threshold)
    return Filters(normalize=options.normalize, prose=prose, code=code, others=tuple(others), exact_dedup=exact,
                   near_dedup=near)


# ----------------------------------------------------------------------------------------------
# The run.


def _split_of(record: bytes, options: PrepareOptions, *, group: str = "") -> str:
    """By the hash of the record, or of its group when it has one (a group's examples stay
    together), never by position: the same example lands in the same split every run."""
    key = b"group:" + group.encode("utf-8") if group else record
    return hash_split(key, validation_fraction=options.validation_fraction, test_fraction=options.test_fraction)


def hash_split(key: bytes, *, validation_fraction: float, test_fraction: float) -> str:
    """"test", "validation" or "train", by a stable hash of `key` (never Python's salted hash)."""
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def partial_dir(out: str | os.PathLike) -> Path:
    return Path(f"{out}{PARTIAL_SUFFIX}")


def check_out(sources: Sequence[str], out: Path, options: PrepareOptions) -> None:
    """Refuses an `out` that may not be written."""
    if out.exists():
        if not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
            raise DataError(f"--out {str(out)!r} exists and is not a prepared data directory; choose another path")
        if (out / MANIFEST).is_file() and not options.overwrite:
            raise DataError(f"--out {str(out)!r} already holds prepared data; pass --overwrite to replace it")
    partial = partial_dir(out).resolve()
    for source in sources:
        if Path(source).is_dir() and Path(source).resolve() in (partial, *partial.parents):
            raise DataError(f"--out {str(out)!r} lies inside the source folder {source!r}; write it elsewhere")


def _start(sources: Sequence[str], out: Path, options: PrepareOptions) -> Path:
    """The fresh `.partial` directory, once `out` may be written."""
    check_out(sources, out, options)
    partial = partial_dir(out)
    if partial.exists():
        print(f"data prepare: removing {partial} left by an unfinished run", file=sys.stderr)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


@dataclasses.dataclass
class Pass1:
    """What pass 1 counted, for pass 2 and the report."""

    stats: dict[str, StageStats]
    bad: BadRecords
    skipped: BadRecords
    records_read: int = 0
    bytes_read: int = 0
    duplicates: set[int] = dataclasses.field(default_factory=set)  # spool indices


def pass1(outcomes: Iterable[Outcome], partial: Path, options: PrepareOptions, filters: Filters,
          progress: bool) -> Pass1:
    """Spools the kept records of `outcomes` (every record's, in input order) and finds the duplicates."""
    stats = {"normalize": StageStats()} if options.normalize else {}
    stats |= {name: StageStats() for name in filters.names()}
    stats |= {name: StageStats() for name, on in (("dedup", options.dedup), ("near_dedup", options.near_dedup)) if on}
    counts = Pass1(stats, BadRecords(budget=options.max_bad_records), BadRecords(budget=sys.maxsize))
    _spool(outcomes, partial, filters, counts, progress)
    return counts


def _spool(outcomes: Iterable[Outcome], partial: Path, filters: Filters, counts: Pass1, progress: bool) -> None:
    """Counts every outcome into `counts`, spools the kept records and collects their dedup keys."""
    from tqdm import tqdm

    stats, bad, skipped = counts.stats, counts.bad, counts.skipped
    exact, near = filters.exact_dedup, filters.near_dedup
    if near is not None:
        near.spill_to(partial / "near-dedup")  # its index on disk: memory stays flat as records grow
    spool = spool_writer(partial / "spool.array_record")
    wheres = spool_writer(partial / "spool-where.array_record")  # for the report's examples of duplicates
    kept = read = bytes_read = 0
    bar = tqdm(desc="data prepare", unit=" rec", disable=not progress, file=sys.stderr, mininterval=0.5)
    started = time.perf_counter()
    for outcome in outcomes:
        read += 1
        bytes_read += outcome.input_bytes
        bar.update()
        if read % 256 == 0:
            bar.set_postfix_str(f"{bytes_read / 1e6 / max(time.perf_counter() - started, 1e-9):.2f} MB/s")
        if outcome.bad is not None:
            bad.add(outcome.bad)
            continue
        if outcome.skipped is not None:
            skipped.add(outcome.skipped)
            continue
        if filters.normalize:
            stats["normalize"].records_in += 1
            stats["normalize"].records_changed += outcome.changed
        for name in filters.names():
            if name == "quality" and not outcome.document:
                continue
            stats[name].records_in += 1
            if outcome.removed_by == name:
                stats[name].remove(outcome.where, outcome.reason, outcome.text, outcome.text_bytes)
                break
        if outcome.removed_by is not None:
            continue
        if outcome.exact_key is not None:
            exact.add_key(kept, outcome.exact_key)
        if outcome.signature is not None:
            near.add_signature(kept, outcome.signature)
        spool.write(outcome.record)
        wheres.write(outcome.where.encode("utf-8", "surrogateescape"))
        kept += 1
    bar.close()
    spool.close()
    wheres.close()
    duplicates: set[int] = set()
    for name, dedup in (("dedup", exact), ("near_dedup", near)):
        if dedup is None:
            continue
        found = dedup.duplicates() - duplicates
        stats[name].records_in = kept - len(duplicates)
        stats[name].pending = found
        duplicates |= found
    shutil.rmtree(partial / "near-dedup", ignore_errors=True)
    counts.records_read, counts.bytes_read, counts.duplicates = read, bytes_read, duplicates


def _pass2(partial: Path, options: PrepareOptions, stats: dict, duplicates: set[int]) -> dict:
    """Streams the spool into the split shards; returns the manifest's splits and what it saw."""
    writers = {name: ShardWriter(partial, name, records_per_shard=options.records_per_shard)
               for name in SPLITS if name != "test" or options.test_fraction > 0}
    dedup_stats = [s for s in stats.values() if getattr(s, "pending", None) is not None]
    kinds: set[str] = set()
    text_only = True
    sample, sample_bytes = [], 0
    want_sample = options.vocab_size is not None
    records = zip(read_spool(partial / "spool.array_record"), read_spool(partial / "spool-where.array_record"))
    for index, (record, where) in enumerate(records):
        example = decode_record(record)
        if index in duplicates:
            text = _text_of(example)
            stage = next(s for s in dedup_stats if index in s.pending)
            stage.remove(where.decode("utf-8", "surrogateescape"), "a duplicate of an earlier record", text,
                         len(text.encode("utf-8")))
            continue
        kinds.update(p.kind for turn in example.contents for p in turn.parts)
        text_only &= example.raw_text and all(p.kind == "text" for t in example.contents for p in t.parts)
        split = _split_of(record, options, group=example.group)
        writers[split].write(record)
        if want_sample and split == "train" and sample_bytes < options.tokenizer_sample_bytes:
            text = _text_of(example)
            sample.append(text)
            sample_bytes += len(text.encode("utf-8"))
    (partial / "spool.array_record").unlink()
    (partial / "spool-where.array_record").unlink()
    splits = {}
    for name, writer in writers.items():
        splits[name] = {"records": writer.records, "files": writer.close()}
    if not splits["train"]["records"]:
        raise DataError("no records left for the train split: every record was bad, removed or a duplicate "
                        "(see the counts above)")
    modalities = [k for k in PART_KINDS if k in kinds]
    return {"splits": splits, "modalities": modalities, "text_only": text_only, "sample": sample}


def _tokenizer(partial: Path, options: PrepareOptions, sample: list[str]) -> str | None:
    from gemini_jax.data.tokenizer import Tokenizer, TokenizerError, train_tokenizer

    target = partial / "tokenizer.model"
    if options.vocab_size is not None:
        if not any(text.strip() for text in sample):
            raise DataError("--vocab-size: the train split holds no text to train a tokenizer on")
        train_tokenizer(sample, vocab_size=options.vocab_size, path=target, case_markers=options.case_markers)
        return target.name
    if options.tokenizer is None:
        return None
    source = Path(options.tokenizer)
    if source.is_dir():
        from gemini_jax.checkpoint import CheckpointError, tokenizer_path

        try:
            source = tokenizer_path(source)
        except CheckpointError as e:
            raise DataError(f"--tokenizer: {e}") from None
    try:
        Tokenizer.load(source)
    except (OSError, TokenizerError) as e:
        raise DataError(f"--tokenizer {options.tokenizer!r}: not a SentencePiece model ({e}); accepted: a run "
                        "directory or a .model file") from None
    shutil.copyfile(source, target)
    return target.name


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def prepare(sources: Sequence[str], out: str, options: PrepareOptions, *, progress: bool = True) -> dict | None:
    """Prepares `sources` into the directory `out`; returns the report (also written to report.json),
    or None when `options.executor` is "slurm" (the jobs are submitted, DATA_DIR comes when they end)."""
    if options.executor is not None:
        from gemini_jax.data.prepare.cluster import prepare_on_executor

        return prepare_on_executor(sources, out, options, progress=progress)
    started = time.time()
    out_path = Path(out)
    check_sources(sources)
    partial = _start(sources, out_path, options)
    filters = build_filters(options)
    with processed(iter_sources(sources), filters, options.workers) as outcomes:
        counts = pass1(outcomes, partial, options, filters, progress)
    return finish(sources, out_path, partial, options, counts, started=started, progress=progress)


def finish(sources: Sequence[str], out: Path, partial: Path, options: PrepareOptions, counts: Pass1, *,
           started: float, progress: bool) -> dict:
    """Pass 2, the tokenizer, report.json, manifest.json and the rename into place; returns the report.
    `started`: the run's start, a `time.time()`."""
    stats, bad = counts.stats, counts.bad
    seen = _pass2(partial, options, stats, counts.duplicates)
    tokenizer = _tokenizer(partial, options, seen.pop("sample"))
    seconds = time.time() - started
    kept = {name: split["records"] for name, split in seen["splits"].items()}
    report = {
        "stages": {name: s.as_dict() for name, s in stats.items()},
        "totals": {"records_in": counts.records_read, "bytes_in": counts.bytes_read, "bad_records": bad.count,
                   "records_removed": sum(s.records_removed for s in stats.values()),
                   "records_kept": sum(kept.values())},
        "splits": kept,
        "bad_records": bad.report(),
        "skipped_files": counts.skipped.report(),
        "seconds": round(seconds, 3),
        "mb_per_s": round(counts.bytes_read / 1e6 / max(seconds, 1e-9), 3),
    }
    _write_json(partial / "report.json", report)
    digest = hashlib.sha256((partial / tokenizer).read_bytes()).hexdigest() if tokenizer else None
    manifest = {"format": FORMAT, **seen, "tokenizer": tokenizer, "tokenizer_sha256": digest,
                "sources": [str(Path(s).resolve()) for s in sources], "options": dataclasses.asdict(options)}
    _write_json(partial / MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    if progress:
        print_summary(report, file=sys.stderr)
    return report
