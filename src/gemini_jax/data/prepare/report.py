"""What `data prepare` did, stage by stage: counts, bytes and a few removed examples.

Bytes are UTF-8 bytes of a record's text (what the filters read), not of its media.
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

EXAMPLES_KEPT = 3


@dataclasses.dataclass
class StageStats:
    records_in: int = 0
    records_removed: int = 0
    bytes_removed: int = 0
    records_changed: int = 0  # normalisation only: records whose text it changed
    examples: list[dict] = dataclasses.field(default_factory=list)
    pending: set[int] | None = None  # dedup only: spool indices to remove in pass 2

    def remove(self, where: str, reason: str, text: str, nbytes: int) -> None:
        self.records_removed += 1
        self.bytes_removed += nbytes
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append({"where": where, "reason": reason, "text": text[:200]})

    def as_dict(self) -> dict:
        out = {"records_in": self.records_in, "records_removed": self.records_removed,
               "bytes_removed": self.bytes_removed, "examples": self.examples}
        if self.records_changed:
            out["records_changed"] = self.records_changed
        return out


def print_summary(report: dict, *, file: TextIO) -> None:
    """A short table: one line a stage, then the totals and the splits."""
    print(f"{'stage':<16}{'in':>10}{'removed':>10}{'MB removed':>12}", file=file)
    for name, stage in report["stages"].items():
        print(f"{name:<16}{stage['records_in']:>10}{stage['records_removed']:>10}"
              f"{stage['bytes_removed'] / 1e6:>12.2f}", file=file)
    totals = report["totals"]
    skipped = report.get("skipped_files", {}).get("count", 0)
    print(f"read {totals['records_in']} records ({totals['bytes_in'] / 1e6:.2f} MB), {totals['bad_records']} bad, "
          + (f"{skipped} empty files skipped, " if skipped else "")
          + f"{totals['records_removed']} removed, {totals['records_kept']} kept in "
          f"{report['seconds']:.1f} s ({report['mb_per_s']:.2f} MB/s)", file=file)
    print("splits: " + ", ".join(f"{name} {count}" for name, count in report["splits"].items()), file=file)
