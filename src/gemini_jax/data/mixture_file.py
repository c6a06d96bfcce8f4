"""A mixture file: which prepared data directories a run trains on, in what proportions, in
which stages, scored by which metrics.

    mixture = load_mixture("data/mixture.yaml")     # YAML (.yaml, .yml) or JSON (.json)
    mixture.stage_steps(total_steps=1000)           # steps per stage, e.g. [800, 200]

    sources:
      digits: {path: prepared/digits}               # a prepared DATA_DIR, relative to this file
      text:   {path: prepared/stdlib, seq_len: 128, batch_size: 16}
      speech: {path: prepared/speech, buckets: 2, augment: specaugment, cache: true}
      shapes: {path: prepared/vqa, tasks: ["vqa:shape"]}   # only the records of these `task`s
      lookup: {generate: kv_retrieval, filler: text, seq_len: 0.5}   # made on the fly, half the run's length
    stages:                                         # optional; without it, one stage of `weights`
      - {until: 0.8, weights: {digits: 1.0, text: 1.0}}   # until: a share of the steps (<= 1) or a step (> 1)
      - {weights: {digits: 3.0}}                    # the last stage has no `until`; a stage may drop a source
    weights: {digits: 1.0, text: 0.5}               # when there are no stages (default: 1 each)
    metrics: [exact_match]                          # scored on validation during training, test at the end
    eval:                                           # optional held-out sets for the final evaluation
      digits_test: test.jsonl                       # a contents-format JSONL file, or a prepared DATA_DIR (its test split)
    eval_tasks: [vqa, asr]                          # `gemini-jax eval` tasks: validation during training
                                                    # (those that have one), test at the end

Source keys besides `path`: `seq_len` and `batch_size` replace the recipe's (an integer is
tokens or rows; a float is relative to the run's: `seq_len: 0.5` half its sequence length, the
recipe's seq_len or else the model's context; `batch_size: 2.0` twice its batch size); `tasks`
keeps the records whose `task` is listed; `buckets: N` splits a source into N groups by the
size of its media (clip length for audio), each padded to its own longest rather than the
source's; `augment: specaugment` masks time and frequency bands of audio features (drawn
anew each epoch); `augment: image` scales and moves the shapes of plain-background images and
video frames, darkens their background and adds noise (data/augment.py's ImageAugment; drawn
once per record, and kept with its cached row); `cache`
keeps encoded rows in memory after their first epoch (default: sources of up to 20,000
records). A text-only source is packed as whole documents (`packing: documents`, the default)
or cut into rows of consecutive tokens of its training text joined, every token scored
(`packing: windows`).

A generated source has no `path`: its rows are made on the fly. `generate: kv_retrieval` packs
key-value retrieval examples (data/corpora/kv_retrieval.py) whose filler comes from the training
text of another source of the file (`filler: NAME`), with `queries: N` questions each. A
source that no stage weighs (such a filler) is loaded but not trained on.

Every mistake is a MixtureError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gemini_jax.data.records import DataError

MANIFEST_FILE = "manifest.json"
METRICS = ("exact_match", "loss", "perplexity")  # what the prepared-data evaluation computes
_TOP_KEYS = ("sources", "weights", "stages", "metrics", "eval", "eval_tasks")
_SOURCE_KEYS = ("path", "seq_len", "batch_size", "tasks", "buckets", "augment", "cache", "packing", "generate",
                "filler", "queries")
AUGMENTS = ("specaugment", "image")
PACKINGS = ("documents", "windows")
GENERATORS = ("kv_retrieval",)
_READ_KEYS = ("path", "tasks", "buckets", "augment", "cache", "packing")  # of a source read from disk
_STAGE_KEYS = ("until", "weights")


class MixtureError(DataError):
    """A mixture file that cannot be used as written."""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    path: Path | None  # a prepared DATA_DIR; None: a generated source
    seq_len: int | float | None = None  # tokens, or (a float) a share of the run's; None: the run's
    batch_size: int | float | None = None  # rows, or (a float) a multiple of the run's; None: the run's
    tasks: tuple[str, ...] | None = None  # keep only records of these tasks; None: all
    buckets: int = 1  # groups by media size, each with its own row shapes
    augment: str | None = None  # one of AUGMENTS
    cache: bool | None = None  # keep encoded rows after the first epoch; None: by the source's size
    packing: str = "documents"  # one of PACKINGS (text-only sources)
    generate: str | None = None  # one of GENERATORS: rows made on the fly, not read
    filler: str | None = None  # a generated source's text: the training text of this source
    queries: int | None = None  # kv_retrieval: questions per example; None: the generator's default


@dataclasses.dataclass(frozen=True)
class Stage:
    weights: Mapping[str, float]  # source name -> share of the batches (the sources it names)
    until: float | None = None  # a share of the steps (<= 1) or a step (> 1); None: the last stage


@dataclasses.dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path  # a .jsonl file, or a prepared DATA_DIR whose test split is read

    @property
    def is_jsonl(self) -> bool:
        return self.path.is_file()


@dataclasses.dataclass(frozen=True)
class Mixture:
    path: Path
    sources: Mapping[str, Source]
    stages: tuple[Stage, ...]
    metrics: tuple[str, ...]
    eval_sets: tuple[EvalSet, ...] = ()
    eval_tasks: tuple[str, ...] = ()  # registry task names

    def stage_steps(self, total_steps: int) -> list[int]:
        """Steps each stage runs, the last taking the rest (shares are rounded down: in a short
        run, a stage may round to no steps)."""
        ends = [int(s.until * total_steps) if s.until <= 1 else int(s.until) for s in self.stages[:-1]]
        if any(b < a for a, b in zip([0, *ends], ends)) or (ends and ends[-1] >= total_steps):
            raise MixtureError(f"{self.path}: stages end at steps {ends} of {total_steps}: each must end after "
                               f"the one before it and before the last step (give more steps, or other `until`s)")
        return [b - a for a, b in zip([0, *ends], [*ends, total_steps])]


def _read(path: Path) -> Any:
    if not path.is_file():
        raise MixtureError(f"mixture file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MixtureError(f"{path}: reading YAML needs PyYAML (`pip install pyyaml`); or write the file as JSON")
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MixtureError(f"{path}: not valid YAML: {e}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise MixtureError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    raise MixtureError(f"{path}: a mixture file is .yaml, .yml or .json")


def _mapping(value: Any, where: str, *, keys: tuple[str, ...] | None = None) -> dict:
    if not isinstance(value, dict) or not value:
        raise MixtureError(f"{where}: expected a mapping, got {value!r}")
    unknown = [k for k in value if keys is not None and k not in keys]
    if unknown:
        raise MixtureError(f"{where}: unknown key(s) {unknown}; accepted: {list(keys)}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MixtureError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _relative(value: Any, where: str, *, at_most: float | None = None) -> int | float:
    """A positive integer, or a float relative to the run's value: above 0 (and at most `at_most`)."""
    if isinstance(value, float):
        if math.isfinite(value) and value > 0 and (at_most is None or value <= at_most):
            return value
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    relative = f"a share in (0, {at_most:g}] of the run's" if at_most else "a multiple of the run's (a float)"
    raise MixtureError(f"{where}: expected a positive integer or {relative}, got {value!r}")


def _source(name: str, spec: Any, base: Path, where: str) -> Source:
    if isinstance(spec, str):
        spec = {"path": spec}
    spec = _mapping(spec, where, keys=_SOURCE_KEYS)
    fields: dict[str, Any] = {k: _positive_int(spec[k], f"{where}.{k}") for k in ("buckets", "queries") if k in spec}
    if "seq_len" in spec:
        fields["seq_len"] = _relative(spec["seq_len"], f"{where}.seq_len", at_most=1.0)
    if "batch_size" in spec:
        fields["batch_size"] = _relative(spec["batch_size"], f"{where}.batch_size")
    if "generate" in spec:
        return _generated(name, spec, fields, where)
    for key in ("filler", "queries"):
        if key in spec:
            raise MixtureError(f"{where}.{key}: only a generated source (`generate: {GENERATORS[0]}`) takes it")
    if not isinstance(spec.get("path"), str):
        raise MixtureError(f"{where}.path: expected the path of a prepared data directory")
    path = base / spec["path"]
    if not path.is_dir():
        raise MixtureError(f"{where}.path: {str(path)!r} does not exist")
    if not (path / MANIFEST_FILE).is_file():
        raise MixtureError(f"{where}.path: {str(path)!r} is not a prepared data directory (no {MANIFEST_FILE}): "
                           f"run `gemini-jax data prepare SOURCES... --out {path}` (to the end)")
    if "tasks" in spec:
        fields["tasks"] = _names(spec["tasks"], f"{where}.tasks")
    if "augment" in spec:
        if spec["augment"] not in AUGMENTS:
            raise MixtureError(f"{where}.augment: expected one of {list(AUGMENTS)}, got {spec['augment']!r}")
        fields["augment"] = spec["augment"]
    if "cache" in spec:
        if not isinstance(spec["cache"], bool):
            raise MixtureError(f"{where}.cache: expected true or false, got {spec['cache']!r}")
        fields["cache"] = spec["cache"]
    if "packing" in spec:
        if spec["packing"] not in PACKINGS:
            raise MixtureError(f"{where}.packing: expected one of {list(PACKINGS)}, got {spec['packing']!r}")
        fields["packing"] = spec["packing"]
    if fields.get("packing") == "windows":  # one stream of tokens: nothing to group, augment or cache
        for key in ("buckets", "augment", "cache"):
            if key in spec:
                raise MixtureError(f"{where}.{key}: does not apply to `packing: windows`")
    return Source(name=name, path=path, **fields)


def _generated(name: str, spec: dict, fields: dict[str, Any], where: str) -> Source:
    if spec["generate"] not in GENERATORS:
        raise MixtureError(f"{where}.generate: expected one of {list(GENERATORS)}, got {spec['generate']!r}")
    read = [key for key in _READ_KEYS if key in spec]
    if read:
        raise MixtureError(f"{where}.{read[0]}: a generated source is not read from disk: drop it")
    if not isinstance(spec.get("filler"), str):
        raise MixtureError(f"{where}.filler: expected the name of a text source of this file")
    return Source(name=name, path=None, generate=spec["generate"], filler=spec["filler"], **fields)


def _check_fillers(sources: Mapping[str, Source], where: str) -> None:
    for name, source in sources.items():
        if source.filler is None:
            continue
        filler = sources.get(source.filler)
        if filler is None or filler.generate is not None:
            read = [n for n, s in sources.items() if s.generate is None]
            raise MixtureError(f"{where}: sources.{name}.filler: no source {source.filler!r} read from disk; "
                               f"those: {read}")


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise MixtureError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def _weights(value: Any, sources: Mapping[str, Source], where: str) -> dict[str, float]:
    weights = _mapping(value, where)
    for name, weight in weights.items():
        if name not in sources:
            raise MixtureError(f"{where}.{name}: no source {name!r}; sources: {list(sources)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise MixtureError(f"{where}.{name}: a weight is a finite number above 0, got {weight!r} "
                               f"(to drop a source, leave it out)")
    return {name: float(weight) for name, weight in weights.items()}


def _stages(data: dict, sources: Mapping[str, Source], where: str) -> tuple[Stage, ...]:
    if "stages" not in data:
        weights = data.get("weights", {name: 1.0 for name in sources})
        return (Stage(weights=_weights(weights, sources, f"{where}: weights")),)
    if "weights" in data:
        raise MixtureError(f"{where}: give `weights` or `stages`, not both (each stage has its own weights)")
    specs = data["stages"]
    if not isinstance(specs, list) or not specs:
        raise MixtureError(f"{where}: stages: expected a list of {{until, weights}}")
    stages = []
    for i, spec in enumerate(specs):
        at = f"{where}: stages[{i}]"
        spec = _mapping(spec, at, keys=_STAGE_KEYS)
        until = spec.get("until")
        last = i == len(specs) - 1
        if last != (until is None):
            raise MixtureError(f"{at}.until: every stage but the last needs `until`, and the last has none")
        if until is not None and (isinstance(until, bool) or not isinstance(until, (int, float))
                                  or not math.isfinite(until) or until <= 0 or (until > 1 and until != int(until))):
            raise MixtureError(f"{at}.until: expected a share of the steps in (0, 1] or a whole step above 1, "
                               f"got {until!r}")
        if "weights" not in spec:
            raise MixtureError(f"{at}: needs `weights`")
        stages.append(Stage(weights=_weights(spec["weights"], sources, f"{at}.weights"), until=until))
    bounds = [s.until for s in stages[:-1]]
    for kind in (lambda u: u <= 1, lambda u: u > 1):  # shares and steps compare among themselves
        same = [u for u in bounds if kind(u)]
        if any(b <= a for a, b in zip(same, same[1:])):
            raise MixtureError(f"{where}: stages' `until` must increase, got {bounds}")
    return tuple(stages)


def _eval_sets(value: Any, base: Path, where: str) -> tuple[EvalSet, ...]:
    sets = []
    for name, spec in _mapping(value, where).items():
        if not isinstance(spec, str):
            raise MixtureError(f"{where}.{name}: expected the path of a .jsonl file or a prepared data directory")
        path = base / spec
        if path.is_file() and path.suffix != ".jsonl":
            raise MixtureError(f"{where}.{name}: {str(path)!r} is not a .jsonl file")
        if not path.exists():
            raise MixtureError(f"{where}.{name}: {str(path)!r} does not exist")
        if path.is_dir() and not (path / MANIFEST_FILE).is_file():
            raise MixtureError(f"{where}.{name}: {str(path)!r} is not a prepared data directory (no {MANIFEST_FILE})")
        sets.append(EvalSet(name=str(name), path=path))
    return tuple(sets)


def load_mixture(path: str | Path, *, base: str | Path | None = None) -> Mixture:
    """Reads and checks a mixture file (see the module docstring for its keys); its paths are
    relative to `base`, by default the file's folder."""
    path = Path(path)
    data = _mapping(_read(path), str(path), keys=_TOP_KEYS)
    where, base = str(path), Path(base) if base is not None else path.parent
    if "sources" not in data:
        raise MixtureError(f"{where}: needs `sources` (name: {{path: PREPARED_DIR}})")
    sources = {str(name): _source(str(name), spec, base, f"{where}: sources.{name}")
               for name, spec in _mapping(data["sources"], f"{where}: sources").items()}
    _check_fillers(sources, where)
    metrics = data.get("metrics", [])
    if not isinstance(metrics, list) or any(m not in METRICS for m in metrics):
        raise MixtureError(f"{where}: metrics: expected a list of {list(METRICS)}, got {metrics!r}")
    eval_sets = _eval_sets(data["eval"], base, f"{where}: eval") if "eval" in data else ()
    eval_tasks = _eval_tasks(data["eval_tasks"], f"{where}: eval_tasks") if "eval_tasks" in data else ()
    return Mixture(path=path, sources=sources, stages=_stages(data, sources, where), metrics=tuple(metrics),
                   eval_sets=eval_sets, eval_tasks=eval_tasks)


def _eval_tasks(value: Any, where: str) -> tuple[str, ...]:
    from gemini_jax.evals.registry import TASKS

    names = _names(value, where)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise MixtureError(f"{where}: unknown task(s) {unknown}; `gemini-jax eval --help` lists them")
    return names
