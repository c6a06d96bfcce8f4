"""`data prepare` on datatrove's executors: pass 1 as T map tasks, the rest as one reduce task.

    prepare(["shards/"], "data/big", PrepareOptions(executor="slurm", tasks=64, slurm_partition="cpu",
                                                    slurm_time="4:00:00"))

Map task r reads every source in order (reading is cheap; the per-record work is not) and processes
the chunks of TASK_CHUNK consecutive records whose number c has c % T == r, writing their outcomes in
order to DATA_DIR.partial/map/{r:05d}.array_record. The reduce task reads the T files round robin,
a chunk at a time, which gives back the input order, and runs what the single-process run runs after
its per-record work: dedup bookkeeping and the spool, pass 2, the tokenizer, report.json,
manifest.json, the rename. The output is the same bytes.

Resume: DATA_DIR.partial/distributed.json holds a digest of what the map files depend on (the
sources' names, sizes and modification times, the options the filters read, T). A rerun with the same
digest keeps the finished map files (datatrove skips the ranks it marked complete in its logging dir)
and runs the reduce task again from them; any other rerun starts afresh, markers included.

Outcomes are stored without pickle: a JSON header, the encoded record, the MinHash signature's bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import shutil
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from gemini_jax.data.prepare.pipeline import (Outcome, PrepareOptions, build_filters, check_out, finish, partial_dir,
                                              pass1, processed)
from gemini_jax.data.prepare.shards import read_spool, spool_writer
from gemini_jax.data.prepare.sources import RawRecord, check_sources, iter_sources
from gemini_jax.data.records import DataError

TASK_CHUNK = 256  # consecutive records a map task takes at a time: tasks stay within a chunk of each other
STATE = "distributed.json"
MAP = "map"
# Options the map files do not depend on: changing them keeps finished map tasks on a rerun.
NOT_IN_MAP = frozenset({"validation_fraction", "test_fraction", "vocab_size", "tokenizer", "case_markers",
                        "tokenizer_sample_bytes",
                        "max_bad_records", "records_per_shard", "workers", "overwrite", "executor", "logging_dir",
                        "slurm_partition", "slurm_time", "slurm_mem_per_cpu_gb", "sbatch_args"})
INSTALL = 'pip install "gemini-jax[distributed]"'


# ----------------------------------------------------------------------------------------------
# Outcomes on disk.


def encode_outcome(outcome: Outcome) -> bytes:
    """uint32 header length, the JSON header (every field but the bytes), the record, the signature."""
    header = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(Outcome)
              if f.name not in ("record", "signature")}
    header["record_bytes"] = None if outcome.record is None else len(outcome.record)
    signature = outcome.signature
    header["signature_dtype"] = None if signature is None else signature.dtype.str
    encoded = json.dumps(header).encode("ascii")  # ASCII escapes keep lone surrogates of odd file names
    tail = b"" if signature is None else np.ascontiguousarray(signature).tobytes()
    return struct.pack("<I", len(encoded)) + encoded + (outcome.record or b"") + tail


def decode_outcome(data: bytes) -> Outcome:
    (size,) = struct.unpack_from("<I", data)
    header = json.loads(data[4:4 + size])
    start = 4 + size
    record_bytes, dtype = header.pop("record_bytes"), header.pop("signature_dtype")
    record = None if record_bytes is None else data[start:start + record_bytes]
    signature = None if dtype is None else np.frombuffer(data[start + (record_bytes or 0):], dtype=dtype)
    return Outcome(**header, record=record, signature=signature)


# ----------------------------------------------------------------------------------------------
# The two stages, as datatrove pipeline steps: callables (data, rank, world_size).


def map_file(partial: Path, rank: int) -> Path:
    return partial / MAP / f"{rank:05d}.array_record"


def own_records(raws: Iterable[RawRecord], rank: int, tasks: int) -> Iterator[RawRecord]:
    for index, raw in enumerate(raws):
        if index // TASK_CHUNK % tasks == rank:
            yield raw


@dataclasses.dataclass(frozen=True, repr=False)
class MapTask:
    sources: tuple[str, ...]
    partial: str
    options: PrepareOptions
    processes: int  # this task's worker processes: 1 when the local executor runs tasks side by side

    def __repr__(self) -> str:  # datatrove logs it at every task's start
        return f"gemini-jax data prepare, map: {len(self.sources)} sources -> {Path(self.partial) / MAP}"

    def __call__(self, data, rank: int, world_size: int):
        target = map_file(Path(self.partial), rank)
        temporary = target.with_name(target.name + ".tmp")  # a killed task leaves no file that looks finished
        filters = build_filters(self.options)
        with processed(own_records(iter_sources(self.sources), rank, world_size), filters, self.processes) as outcomes:
            writer = spool_writer(temporary)
            for outcome in outcomes:
                writer.write(encode_outcome(outcome))
            writer.close()
        os.replace(temporary, target)
        return data


def merged_outcomes(partial: Path, tasks: int) -> Iterator[Outcome]:
    """The map files' outcomes in input order: chunk c is the next TASK_CHUNK of file c % tasks."""
    readers = [read_spool(map_file(partial, rank)) for rank in range(tasks)]
    for chunk in itertools.count():
        taken = 0
        for record in itertools.islice(readers[chunk % tasks], TASK_CHUNK):
            taken += 1
            yield decode_outcome(record)
        if taken < TASK_CHUNK:  # the last chunk: every other file must be done too
            break
    if any(next(reader, None) is not None for reader in readers):
        raise DataError(f"the map files under {partial / MAP} do not fit together (did the sources change during "
                        f"the run?); delete {partial} and rerun")


@dataclasses.dataclass(frozen=True, repr=False)
class ReduceTask:
    sources: tuple[str, ...]
    out: str
    options: PrepareOptions
    progress: bool

    def __repr__(self) -> str:
        return f"gemini-jax data prepare, reduce: {self.options.tasks} map files -> {self.out}"

    def __call__(self, data, rank: int, world_size: int):
        partial = partial_dir(self.out)
        missing = [str(map_file(partial, r)) for r in range(self.options.tasks) if not map_file(partial, r).is_file()]
        if missing:
            raise DataError(f"map output missing ({', '.join(missing[:3])}); rerun the command to redo those tasks")
        for entry in partial.iterdir():  # what an interrupted reduce task left
            if entry.is_dir() and entry.name != MAP:
                shutil.rmtree(entry)
            elif entry.is_file() and entry.name != STATE:
                entry.unlink()
        started = json.loads((partial / STATE).read_text())["started"]
        filters = build_filters(self.options)
        counts = pass1(merged_outcomes(partial, self.options.tasks), partial, self.options, filters, self.progress)
        shutil.rmtree(partial / MAP)  # no longer needed; without them a rerun starts afresh
        (partial / STATE).unlink()
        finish(self.sources, Path(self.out), partial, self.options, counts, started=started, progress=self.progress)
        return data


# ----------------------------------------------------------------------------------------------
# Starting or resuming a run.


def _fingerprint(paths: Iterable[str]) -> list:
    """Names, sizes and modification times of every file under `paths`: a changed source restarts the run."""
    listing = []
    for path in paths:
        files = ([os.path.join(d, f) for d, _, names in sorted(os.walk(path, followlinks=True)) for f in sorted(names)]
                 if os.path.isdir(path) else [path])
        for file in files:
            stat = os.stat(file) if os.path.exists(file) else None
            listing.append([file, stat and stat.st_size, stat and stat.st_mtime_ns])
    return listing


def map_digest(sources: Sequence[str], options: PrepareOptions) -> str:
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in NOT_IN_MAP}
    inputs = [*sources, *options.classifier_good, *options.classifier_bad, *options.eval_jsonl,
              *([options.eval_data_dir] if options.eval_data_dir else [])]
    key = {"options": fields, "files": _fingerprint(inputs), "task_chunk": TASK_CHUNK}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _unmark(logs: Path, rank: int) -> None:
    """Forgets datatrove's completion marker of one rank (its layout: LOGGING_DIR/completions/RANK)."""
    (logs / "completions" / f"{rank:05d}").unlink(missing_ok=True)


def _open_partial(partial: Path, logs: Path, digest: str, tasks: int) -> bool:
    """Keeps a previous run's map files when they fit this run (True), else starts afresh."""
    state = partial / STATE
    if state.is_file() and json.loads(state.read_text())["digest"] == digest:
        for rank in range(tasks):
            if not map_file(partial, rank).is_file():
                _unmark(logs / MAP, rank)
        _unmark(logs / "reduce", 0)
        return True
    if partial.exists():
        print(f"data prepare: removing {partial} left by an unfinished run that this one cannot resume (other "
              "sources or options)", file=sys.stderr)
        shutil.rmtree(partial)
    for stage in (MAP, "reduce"):
        shutil.rmtree(logs / stage, ignore_errors=True)
    (partial / MAP).mkdir(parents=True)
    return False


def _sbatch_args(items: Sequence[str]) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in items)


def _check_datatrove() -> None:
    try:
        import datatrove.executor  # noqa: F401
    except ImportError:
        raise DataError(f"--executor needs datatrove: {INSTALL}") from None


def _executors(sources: tuple[str, ...], out: str, options: PrepareOptions, logs: Path, progress: bool):
    """The map executor and the reduce executor that depends on it."""
    from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor

    partial = str(partial_dir(out))
    if options.executor == "local":
        import multiprocessing

        # Forked, as the single-process run's workers are: a spawned task would import JAX and grain again.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        map_step = MapTask(sources, partial, options, processes=1)  # --workers tasks at once, one process each
        mapper = LocalPipelineExecutor([map_step], tasks=options.tasks, workers=options.workers,
                                       logging_dir=str(logs / MAP), start_method=method)
        reducer = LocalPipelineExecutor([ReduceTask(sources, out, options, progress)], tasks=1,
                                        logging_dir=str(logs / "reduce"), depends=mapper)
        return mapper, reducer
    # Each Slurm task gets --workers CPUs and runs --workers processes; the jobs find this Python's
    # environment (and datatrove's launch_pickled_pipeline) on PATH, as on the submitting machine.
    common = {"time": options.slurm_time, "partition": options.slurm_partition, "cpus_per_task": options.workers,
              "mem_per_cpu_gb": options.slurm_mem_per_cpu_gb, "sbatch_args": _sbatch_args(options.sbatch_args),
              "qos": "",  # the cluster's default, or --sbatch-arg qos=NAME (datatrove would write "normal")
              "env_command": f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH"}
    mapper = SlurmPipelineExecutor([MapTask(sources, partial, options, processes=options.workers)],
                                   tasks=options.tasks, job_name="gemini-jax-prepare-map",
                                   logging_dir=str(logs / MAP), **common)
    reducer = SlurmPipelineExecutor([ReduceTask(sources, out, options, progress=False)], tasks=1,
                                    job_name="gemini-jax-prepare-reduce", logging_dir=str(logs / "reduce"),
                                    depends=mapper, **common)
    return mapper, reducer


def prepare_on_executor(sources: Sequence[str], out: str, options: PrepareOptions, *, progress: bool) -> dict | None:
    """Runs (local) or submits (slurm) the map and reduce stages; returns the report when it ran here."""
    sources = tuple(sources)
    check_sources(sources)
    check_out(sources, Path(out), options)
    logs = Path(options.logging_dir or f"{out}.logs")
    _check_datatrove()
    if options.executor == "slurm":
        build_filters(options)  # a bad filter option fails here, not in every task
    partial = partial_dir(out)
    digest = map_digest(sources, options)
    if _open_partial(partial, logs, digest, options.tasks):
        print(f"data prepare: resuming {partial}: finished map tasks are kept", file=sys.stderr)
    (partial / STATE).write_text(json.dumps({"digest": digest, "started": time.time()}))
    mapper, reducer = _executors(sources, out, options, logs, progress)
    reducer.run()
    if options.executor == "slurm":
        print(f"data prepare: submitted map job {mapper.job_id} ({options.tasks} tasks) and reduce job "
              f"{reducer.job_id}; {out} appears when the reduce job ends. Logs: {logs}. If a job fails, "
              "run the same command again: finished map tasks are kept.", file=sys.stderr)
        return None
    return json.loads((Path(out) / "report.json").read_text())
