"""Start time of the commands, from an empty compilation cache and from a filled one (prints JSON).

    python benchmarks/start_time.py                                  # trains a short demo-preset run first
    python benchmarks/start_time.py --checkpoint runs/demo --runs 5

Times, each the median of --runs fresh processes started as a user starts them (the `gemini-jax`
console script): `generate` with an easy-VQA test image, `eval --limit 10` on the demo sets, and
`serve` until GET /health answers (it compiles before it opens its port). Cold: the command with
JAX_COMPILATION_CACHE_DIR a new, empty directory; warm: the same command again with the directory
the cold run filled. Beside them, the wall time of `python -c "import X"` for the package's entry
points, and `python -c pass` for the interpreter alone.

Without --checkpoint the script first trains a run of --preset (default demo) for --train-steps
steps in a temporary directory (a few steps: programs compile and run the same whatever the
weights), and the JSON says so. The demo corpus comes from $GEMINI_JAX_CACHE or
~/.cache/gemini-jax (built there first if missing). Every command runs once untimed with
--no-compile-cache before the timed runs, so that no run pays for building or reading files the
first time. docs/start-time.md has the figures and what they mean.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

IMPORTS = {  # what each entry point loads before it does anything
    "python": "pass",
    "gemini_jax.cli": "import gemini_jax.cli",  # --help and usage errors
    "jax": "import jax",
    "gemini_jax.sample.sampler": "import gemini_jax.checkpoint, gemini_jax.sample.sampler",  # generate
    "gemini_jax.sample.server": "import gemini_jax.sample.server, uvicorn",  # serve
}
GOALS_S = {"generate_warm": 4.0, "serve_warm": 6.0}
TIMEOUT_S = 1800


def command_prefix() -> list[str]:
    """The console script beside this Python (it restarts itself once with huge pages, as users'
    runs do), else `python -m gemini_jax.cli`."""
    script = Path(sys.executable).parent / "gemini-jax"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gemini_jax.cli"]


def environ(cache_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "GEMINI_JAX_NO_COMPILE_CACHE")}
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # compile_cache.enable() keeps JAX's own setting
    return env


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def serve_until_ready(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `serve` to its first 200 on /health; then stops it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/health"
    start = time.perf_counter()
    server = subprocess.Popen([*argv, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < TIMEOUT_S:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited with {server.returncode}:\n{server.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"serve did not answer {url} within {TIMEOUT_S} s")
    finally:
        server.terminate()
        server.communicate(timeout=60)


def train_run(args: argparse.Namespace, directory: Path) -> Path:
    run_dir = directory / "run"
    run([*command_prefix(), "train", "--run-dir", str(run_dir), "--preset", args.preset, "--steps",
         str(args.train_steps), "--batch-size", "4", "--no-eval", "--no-progress", "--no-compile-cache"],
        environ(None))
    return run_dir


def demo_question() -> tuple[str, str]:
    """An easy-VQA test image of the demo corpus and its question."""
    from gemini_jax.data.corpora.demo import DemoCorpus

    example = DemoCorpus.build(progress=False).records("vqa", "test")[0].example
    parts = example.contents[0].parts
    return str(next(p.image for p in parts if p.image is not None)), next(p.text for p in parts if p.text)


def commands(run_dir: Path) -> dict[str, list[str]]:
    image, question = demo_question()
    prefix = command_prefix()
    return {
        "generate": [*prefix, "generate", "--checkpoint", str(run_dir), "--image", image, question],
        "eval": [*prefix, "eval", "--checkpoint", str(run_dir), "--limit", "10", "--no-progress"],
        "serve": [*prefix, "serve", "--checkpoint", str(run_dir)],
    }


def time_command(name: str, argv: list[str], *, runs: int, scratch: Path) -> dict:
    measure = serve_until_ready if name == "serve" else run
    measure([*argv, "--no-compile-cache"], environ(None))  # untimed: files read once, corpus built
    cold, warm, entries = [], [], []
    for i in range(runs):
        cache_dir = scratch / f"{name}-{i}"
        cache_dir.mkdir()
        cold.append(measure(argv, environ(cache_dir)))
        entries.append(len(list(cache_dir.glob("*-cache"))))
        warm.append(measure(argv, environ(cache_dir)))
        shutil.rmtree(cache_dir)
    return {"cold_s": round(statistics.median(cold), 2), "warm_s": round(statistics.median(warm), 2),
            "cold_runs_s": [round(t, 2) for t in cold], "warm_runs_s": [round(t, 2) for t in warm],
            "cache_entries": max(entries), "argv": argv[1:]}


def import_times(runs: int) -> dict[str, float]:
    return {name: round(statistics.median(run([sys.executable, "-c", code], environ(None)) for _ in range(runs)), 2)
            for name, code in IMPORTS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, metavar="RUN_DIR",
                        help="a trained run directory (default: train a short one here, see --preset)")
    parser.add_argument("--runs", type=int, default=5, help="processes per measurement; the JSON gives medians")
    parser.add_argument("--preset", default="demo", help="without --checkpoint: the preset of the run trained here")
    parser.add_argument("--train-steps", type=int, default=20, help="without --checkpoint: its training steps")
    parser.add_argument("--commands", default="generate,eval,serve", help="which of generate, eval, serve to time")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="start-time-") as scratch:
        scratch = Path(scratch)
        if args.checkpoint:
            run_dir, source = Path(args.checkpoint), args.checkpoint
        else:
            run_dir = train_run(args, scratch)
            source = f"trained here: preset {args.preset}, {args.train_steps} steps (untrained weights compile as trained ones)"
        report = {"checkpoint": source, "runs": args.runs, "import_s": import_times(args.runs)}
        selected = commands(run_dir)
        for name in args.commands.split(","):
            report[name] = time_command(name, selected[name], runs=args.runs, scratch=scratch)
    report["goals_s"] = GOALS_S
    report["host"] = {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                      "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                      "jax": importlib.metadata.version("jax"), "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
