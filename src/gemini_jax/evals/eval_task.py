"""What every evaluation is: an `EvalTask` of one `Family`, run with `EvalOptions` (the flags of
`gemini-jax eval`) in an `EvalContext` that its fellow tasks share; it returns a `TaskOutcome`.

The families' tasks live beside the code they run (tasks/demo.py, tasks/retrieval.py,
tasks/nll_position.py, benchmark.py); registry.py names them all and runs them.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gemini_jax.evals.tasks.base import TaskDataError

if TYPE_CHECKING:
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.model import Gemini


class Family(enum.Enum):
    """The kinds of evaluation; the order is the order `unused_options` names them in."""

    BENCHMARKS = "benchmarks"
    DEMO_SETS = "demo sets"
    LONG_CONTEXT = "long context"
    YOUR_DATA = "your data"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """What `gemini-jax eval`'s flags set. A task reads only some of them (`EvalTask.reads`)."""

    limit: int | None = None  # at most this many examples per task (long context: per cell, or documents)
    batch_size: int | None = None  # None: each family's default (EvalTask.default_batch_size)
    data_dir: str | None = None  # benchmarks: one sub-folder per task
    cache_dir: str | None = None  # demo sets: the demo corpus cache
    shots: int | None = None  # benchmarks: None, each task's own k
    samples: int = 1  # benchmarks without a protocol: 1 greedy; k > 1 maj@k and pass@k at `temperature`
    protocol: str | None = None  # benchmarks: greedy, loglikelihood, maj@K, cot-routed@K, pass@K; None: each task's
    temperature: float = 0.7
    seed: int = 0
    guidance: float | None = None  # image_generation: classifier-free guidance scale; None: none
    top_k: int = 0  # image_generation: sample each code among the k most likely (0: all)
    top_p: float = 1.0  # image_generation: sample each code from the nucleus of this much probability (1: all)
    lengths: tuple[int, ...] | None = None  # long context: None, powers of two up to the context
    plot: str | None = None  # nll_by_position's PNG; None: beside the run, when there is one
    records: str | None = None  # a JSONL file for every example's record
    progress: bool = True

    def __post_init__(self):
        if self.lengths is not None:
            object.__setattr__(self, "lengths", tuple(self.lengths))
            if not self.lengths or min(self.lengths) < 1:
                raise TaskDataError(f"--lengths takes positive token counts, got {list(self.lengths)}")
        if self.guidance is not None and not 0 <= self.guidance < float("inf"):
            raise TaskDataError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if not 0.0 < self.top_p <= 1.0:
            raise TaskDataError(f"--top-p must be in (0, 1], got {self.top_p}")
        for name, least in (("top_k", 0), ("limit", 1), ("batch_size", 1), ("shots", 0), ("samples", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise TaskDataError(f"{flag(name)} must be >= {least}, got {value}")


def flag(option: str) -> str:
    """An EvalOptions field's command-line flag: "data_dir" -> "--data-dir"."""
    return "--" + option.replace("_", "-")


# Every task reads these; the other options belong to some families only.
COMMON_OPTIONS = frozenset({"limit", "batch_size", "progress"})


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
    metrics: dict[str, Any]
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per example, for --records


class EvalContext:
    """What the tasks of one `evaluate` call share. Work that several tasks need (the demo corpus,
    one sampler, one benchmark model) is built by the first task that asks, through `shared`."""

    def __init__(self, *, model: Gemini, tokenizer: Tokenizer, options: EvalOptions,
                 run_dir: str | Path | None = None, corpus: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.corpus = corpus  # a DemoCorpus the caller already built, or None
        self.notes: list[Callable[[], str | None]] = []  # said once every task has run
        self._shared: dict[Callable[[EvalContext], Any], Any] = {}

    def shared(self, build: Callable[[EvalContext], Any]) -> Any:
        """`build(self)`, called once per context whichever task asks first."""
        if build not in self._shared:
            self._shared[build] = build(self)
        return self._shared[build]


class EvalTask(abc.ABC):
    """One evaluation by name. Subclasses are frozen dataclasses whose fields are the task's own
    parameters (a recipe may pass its own); `reads` are the EvalOptions fields it uses besides
    COMMON_OPTIONS."""

    name: str
    family: ClassVar[Family]
    reads: ClassVar[frozenset[str]]
    default_batch_size: ClassVar[int]

    def batch_size(self, options: EvalOptions) -> int:
        return options.batch_size or self.default_batch_size

    def check(self, context: EvalContext) -> None:
        """Refuses what cannot run, before any task of the call has run; by default nothing."""

    @abc.abstractmethod
    def run(self, context: EvalContext) -> TaskOutcome:
        """Metrics ({metric: value}) and per-example records."""


def families(tasks: Sequence[EvalTask]) -> list[Family]:
    """The families of `tasks`, in Family's order."""
    present = {task.family for task in tasks}
    return [family for family in Family if family in present]
