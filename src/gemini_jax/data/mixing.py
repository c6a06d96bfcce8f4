"""Streams of batches combined: a weighted mixture of tasks, and stages in turn (a curriculum);
a stream that keeps its own position (TrainingRows, TextWindows) joins them through `resumable`.

    stream = iter(mixture([train, text], weights=[3, 1]))
    staged_stream = iter(staged([(warmup, 500), (mixture(...), None)]))
    windows = resumable(lambda: TextWindows(ids, seq_len=512, batch_size=4, bos_id=1))

All are deterministic and resume exactly from `it.get_state()` / `it.set_state(s)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain

from gemini_jax.data.records import DataError, Row


def mixture(
    datasets: Sequence[grain.IterDataset] | Mapping[str, grain.IterDataset],
    *,
    weights: Sequence[float] | Mapping[str, float],
) -> grain.IterDataset:
    """Whole batches drawn from each task in proportion to `weights` (tasks keep their own shapes).

    Grain interleaves deterministically: after any prefix of the stream, each task has
    given its share up to rounding, so there is no seed and no streak of one task.
    """
    names = list(datasets) if isinstance(datasets, Mapping) else None
    if names is not None and (not isinstance(weights, Mapping) or set(weights) != set(names)):
        raise DataError(f"weights must name the same tasks as datasets: {sorted(names)}")
    values = [weights[n] for n in names] if names is not None else list(weights)
    if len(values) != len(datasets) or any(not w > 0 for w in values):
        raise DataError(f"need one positive weight per dataset, got {values} for {len(datasets)} datasets")
    parents = [datasets[n] for n in names] if names is not None else list(datasets)
    return grain.IterDataset.mix(parents, values)


class _StagedIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], counts: list[int]):
        super().__init__(parents)
        self._iterators = parents
        self._counts = counts  # elements per stage but the last, which never ends
        self._stage = 0
        self._taken = 0

    def __next__(self) -> Row:
        while self._stage < len(self._counts) and self._taken >= self._counts[self._stage]:
            self._stage, self._taken = self._stage + 1, 0
        self._taken += 1
        return next(self._iterators[self._stage])

    def get_state(self) -> dict[str, Any]:
        return {"stage": self._stage, "taken": self._taken, "stages": [it.get_state() for it in self._iterators]}

    def set_state(self, state: dict[str, Any]) -> None:
        for iterator, inner in zip(self._iterators, state["stages"], strict=True):
            iterator.set_state(inner)
        self._stage, self._taken = state["stage"], state["taken"]


class _Staged(grain.IterDataset):
    def __init__(self, parents: list[grain.IterDataset], counts: list[int]):
        super().__init__(parents)
        self._stages = parents
        self._counts = counts

    def __iter__(self) -> _StagedIterator:
        return _StagedIterator([iter(p) for p in self._stages], self._counts)


def staged(stages: Sequence[tuple[grain.IterDataset, int | None]]) -> grain.IterDataset:
    """Stages in turn: `count` batches from each (a training curriculum), the last one without
    end (its count is None). The state holds the stage, the batches taken from it and every
    stage's own state, so a resumed run continues exactly where it stopped."""
    if not stages:
        raise DataError("staged() needs at least one stage")
    *bounded, (_, last) = stages
    counts = [count for _, count in bounded]
    if last is not None or any(not isinstance(c, int) or c < 0 for c in counts):
        raise DataError(f"every stage but the last needs a count >= 0 and the last None; got "
                        f"{[c for _, c in stages]}")
    return _Staged([ds for ds, _ in stages], counts)


class _ResumableIterator(grain.DatasetIterator):
    def __init__(self, batches: Iterator[Row]):
        super().__init__()
        self._batches = batches

    def __next__(self) -> Row:
        return next(self._batches)

    def get_state(self) -> dict[str, Any]:
        return self._batches.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._batches.set_state(state)


class _Resumable(grain.IterDataset):
    def __init__(self, make: Callable[[], Iterator[Row]]):
        super().__init__()
        self._make = make

    def __iter__(self) -> _ResumableIterator:
        return _ResumableIterator(self._make())


def resumable(make: Callable[[], Iterator[Row]]) -> grain.IterDataset:
    """A stream of batches that keeps its own position (`get_state` / `set_state`, as
    TrainingRows and TextWindows do) as a grain dataset, so that `mixture` and `staged` take it
    and save its position with theirs. Each iteration starts a fresh one from `make()`."""
    return _Resumable(make)
