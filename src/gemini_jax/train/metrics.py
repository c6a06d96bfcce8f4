"""Training metrics: one JSON object per line, and a loss-curve PNG drawn from them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


class MetricsLog:
    """A run's metrics.jsonl. With `writes=False` (every process of a multi-host run but the
    first, which alone keeps the log) the changes are dropped and reading still works."""

    def __init__(self, run_dir: str | os.PathLike, *, writes: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writes = writes

    def write(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a last line cut short by a kill mid-write
            if line.strip():
                records.append(json.loads(line))
        return records

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`, so a resumed run does not log the same steps twice.

        Silent-data-corruption reports (kind "sdc") stay: they describe the hardware, and
        the steps they name are usually the ones a resumed run repeats."""
        if not self.writes:
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step or r.get("kind") == "sdc"]
        # Written aside and renamed: a kill during the rewrite keeps the old log whole.
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Deletes the log (a run starting afresh)."""
        if self.writes:
            self.path.unlink(missing_ok=True)


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Training loss per logged step (and eval losses, when present), on a log scale where every
    value is positive (a cross-entropy); a policy-gradient loss, which can be negative, on a
    linear one."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("kind") == "eval" and "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("step")
    values = [loss for _, loss in train + evals]
    if values and min(values) > 0:
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
