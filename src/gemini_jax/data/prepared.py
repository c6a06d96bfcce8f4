"""A prepared data directory (written by `gemini-jax data prepare`), read for training.

    data = open_prepared("data/digits")
    train = data.split("train")          # a Sequence[Example]: len(train), train[i]
    data.tokenizer_path                  # Path | None
    data.text_only                       # every record a raw-text document

manifest.json is written last and the directory renamed into place at the end, so its
presence means the directory is complete; anything else is refused with what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from gemini_jax.data.examples import Example
from gemini_jax.data.records import DataError

MANIFEST = "manifest.json"
FORMAT = 1
PARTIAL_SUFFIX = ".partial"


class PreparedDataError(DataError):
    """A prepared data directory that is missing, unfinished or damaged."""


class PreparedSplit(Sequence[Example]):
    """The records of one split, read at random from its ArrayRecord files and decoded on access."""

    def __init__(self, paths: Sequence[Path], *, records: int, where: str):
        self._paths = [str(p) for p in paths]
        self._records = records
        self._where = where
        self._source = None  # opened on first access (and again in each worker process)

    def __len__(self) -> int:
        return self._records

    def _data_source(self):
        if self._source is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._source = ArrayRecordDataSource(self._paths)
            if len(self._source) != self._records:
                raise PreparedDataError(f"{self._where}: the manifest counts {self._records} records, the files "
                                        f"hold {len(self._source)}; rerun `data prepare`")
        return self._source

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        from gemini_jax.data.prepare.record_codec import RecordError, decode_record

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -self._records <= index < self._records:
            raise IndexError(f"{self._where}: record {index} out of range ({self._records} records)")
        index %= self._records
        try:
            return decode_record(self._data_source()[index])
        except RecordError as e:
            raise PreparedDataError(f"{self._where}: record {index}: {e}") from None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"PreparedSplit({self._where}, {self._records} records)"


class PreparedData:
    """A complete prepared data directory and its manifest."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest["splits"])

    def split(self, name: str) -> PreparedSplit:
        if name not in self.manifest["splits"]:
            raise PreparedDataError(f"{self.path}: no split {name!r}; it has {', '.join(self.splits)}")
        entry = self.manifest["splits"][name]
        return PreparedSplit([self.path / f for f in entry["files"]], records=entry["records"],
                             where=f"{self.path}:{name}")

    @property
    def tokenizer_path(self) -> Path | None:
        name = self.manifest.get("tokenizer")
        return None if name is None else self.path / name

    @property
    def text_only(self) -> bool:
        return bool(self.manifest.get("text_only", False))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("modalities", ()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v['records']}" for k, v in self.manifest["splits"].items())
        return f"PreparedData({str(self.path)!r}, {counts})"


def _check_manifest(path: Path, manifest: object) -> dict:
    where = f"{path / MANIFEST}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PreparedDataError(f"{where}: format {found!r} is not one this version reads ({FORMAT}); "
                                "rerun `data prepare`")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise PreparedDataError(f"{where}: 'splits' must map split names to {{files, records}}")
    for name, entry in splits.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("files"), list)
                or not isinstance(entry.get("records"), int) or entry["records"] < 0):
            raise PreparedDataError(f"{where}: splits.{name} must be {{'files': [...], 'records': N}}")
        missing = [f for f in entry["files"] if not isinstance(f, str) or not (path / f).is_file()]
        if missing:
            raise PreparedDataError(f"{where}: splits.{name}: file {missing[0]!r} is missing from {path}")
        if entry["records"] and not entry["files"]:
            raise PreparedDataError(f"{where}: splits.{name} counts {entry['records']} records but lists no files")
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None and not (isinstance(tokenizer, str) and (path / tokenizer).is_file()):
        raise PreparedDataError(f"{where}: tokenizer {tokenizer!r} is missing from {path}")
    return manifest


def open_prepared(path: str | os.PathLike) -> PreparedData:
    """The prepared directory at `path`, refused (PreparedDataError) if missing or unfinished."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise PreparedDataError(f"{str(path)!r} is an unfinished `data prepare` output (a {PARTIAL_SUFFIX} "
                                f"directory); rerun `data prepare` and use {str(path)[:-len(PARTIAL_SUFFIX)]!r}")
    if not path.is_dir():
        hint = (f"; {path}{PARTIAL_SUFFIX} exists: `data prepare` did not finish, rerun it"
                if Path(f"{path}{PARTIAL_SUFFIX}").exists() else "; write it with `gemini-jax data prepare`")
        raise PreparedDataError(f"prepared data directory {str(path)!r} does not exist{hint}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise PreparedDataError(f"{str(path)!r} has no {MANIFEST}: `data prepare` did not finish; rerun it")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PreparedDataError(f"{manifest_path}: unreadable ({e}); rerun `data prepare`") from None
    return PreparedData(path, _check_manifest(path, manifest))
