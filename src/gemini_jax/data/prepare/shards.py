"""ArrayRecord shard files: a writer that rolls a new file every `records_per_shard` records.

    writer = ShardWriter(directory, "train", records_per_shard=10_000)
    writer.write(record_bytes)
    files = writer.close()   # ["train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]

Files are written as `{split}-{i:05d}.array_record.tmp` and renamed at close, once their
count is known. A split with no records has no files.
"""

from __future__ import annotations

import os
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

# group_size:1 puts every record in its own chunk: a random read decodes one record, not 65,536.
WRITER_OPTIONS = "group_size:1"
# The spool is only read in order: chunks of 256 records keep its index (which writer and reader
# hold in memory, an entry a chunk) 256 times smaller than one chunk a record would.
SPOOL_OPTIONS = "group_size:256"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


class ShardWriter:
    """Writes records into numbered ArrayRecord files under `directory`."""

    def __init__(self, directory: str | os.PathLike, split: str, *, records_per_shard: int):
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be 1 or more, got {records_per_shard}")
        self.directory = Path(directory)
        self.split = split
        self.records_per_shard = records_per_shard
        self.records = 0
        self._temporary: list[Path] = []
        self._writer: ArrayRecordWriter | None = None
        self._in_file = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or self._in_file == self.records_per_shard:
            self._close_file()
            path = self.directory / f"{self.split}-{len(self._temporary):05d}.array_record.tmp"
            self._temporary.append(path)
            self._writer = ArrayRecordWriter(str(path), WRITER_OPTIONS)
            self._in_file = 0
        self._writer.write(record)
        self._in_file += 1
        self.records += 1

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        """Closes the last file and gives every file its final name; returns the names."""
        self._close_file()
        names = [shard_name(self.split, i, len(self._temporary)) for i in range(len(self._temporary))]
        for path, name in zip(self._temporary, names):
            os.replace(path, self.directory / name)
        self._temporary = []
        return names


def spool_writer(path: str | os.PathLike) -> ArrayRecordWriter:
    """A single temporary ArrayRecord file, read back in order by `read_spool`."""
    return ArrayRecordWriter(str(path), SPOOL_OPTIONS)


def read_spool(path: str | os.PathLike, *, batch: int = 256):
    """Yields the records of one ArrayRecord file in order, `batch` at a time from disk."""
    reader = ArrayRecordReader(str(path))
    try:
        total = reader.num_records()
        for start in range(0, total, batch):
            yield from reader.read(start, min(start + batch, total))
    finally:
        reader.close()
