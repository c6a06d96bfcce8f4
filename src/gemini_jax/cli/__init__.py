"""The `gemini-jax` command: thin argument parsing over the library.

    gemini-jax train                     # the embedded demo: build corpus, train, evaluate
    gemini-jax train --task kv_retrieval --seq-len 512   # long context: key-value retrieval
    gemini-jax train --task long_text --seq-len 2048     # long context: language modelling of long files
    gemini-jax eval --checkpoint runs/demo --output results.json
    gemini-jax eval --checkpoint runs/demo --tasks mmlu,gsm8k --data-dir ~/benchmarks --limit 100
    gemini-jax eval --checkpoint runs/kv_retrieval --tasks kv_retrieval,nll_by_position
    gemini-jax generate --checkpoint runs/demo --image shape.png "What color is the shape?"
    gemini-jax serve --checkpoint runs/demo --port 8000   # OpenAI-compatible chat API
    gemini-jax presets                   # the model family: shapes and parameter counts
    gemini-jax convert --from-hf gemma-2b --to runs/gemma-2b     # a Hugging Face Gemma-1 checkpoint
    gemini-jax convert --from runs/gemma-2b --to-hf gemma-2b-hf  # and back
    gemini-jax quantize --checkpoint runs/demo --out runs/demo-int4   # int4 weights for generate/eval/serve
    gemini-jax distill --teacher runs/demo --student-preset demo-half  # a half-size student of a run
    gemini-jax reward --data pairs.jsonl --init-from runs/demo   # a reward model on preference pairs
    gemini-jax dpo --data pairs.jsonl --init-from runs/demo      # a policy trained on them with DPO
    gemini-jax rl --data prompts.jsonl --init-from runs/demo --reward runs/reward   # RL from a reward
    gemini-jax card runs/demo --results eval.json   # a Markdown model card: runs/demo/MODEL_CARD.md
    gemini-jax safety train --out runs/safety   # safety classifiers per category of the shipped policy
    gemini-jax safety data --out data/safety    # safety-tuning data and a mixture that replays the demo
    gemini-jax image-tokenizer train --out runs/image-tokenizer   # images <-> discrete codes (issue 22)

flags.py defines the flags, commands.py one handler per command; this module runs them.
"""

from __future__ import annotations

import argparse
import os
import sys

from gemini_jax.cli.flags import (
    BENCHMARK_TASKS,
    DEMO_TASKS,
    IMAGE_GENERATION_TASKS,
    LONG_CONTEXT_TASKS,
    PREPARED_TASKS,
    ROBUSTNESS_TASKS,
    SAFETY_TASKS,
    build_parser,
)

__all__ = ["BENCHMARK_TASKS", "DEMO_TASKS", "IMAGE_GENERATION_TASKS", "LONG_CONTEXT_TASKS", "PREPARED_TASKS",
           "ROBUSTNESS_TASKS", "SAFETY_TASKS", "build_parser", "entry",
           "huge_pages_environ", "main"]


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input: printed as one clear line, not a traceback."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import ConfigError
    from gemini_jax.convert.gemma import ConversionError
    from gemini_jax.data.corpora.speech import SpeechError
    from gemini_jax.data.encode import EncodeError
    from gemini_jax.data.examples import ExampleError
    from gemini_jax.data.media import MediaError
    from gemini_jax.data.pipeline import DataError
    from gemini_jax.data.tokenizer import TokenizerError
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.model.quant import QuantizationError

    return (CheckpointError, ConfigError, ConversionError, EncodeError, ExampleError, MediaError, DataError,
            SpeechError, TokenizerError, TaskDataError, QuantizationError)


def _enable_compile_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache for a command that compiles, unless turned off."""
    from gemini_jax import compile_cache

    if hasattr(args, "no_compile_cache") and not args.no_compile_cache and not os.environ.get(compile_cache.OFF_ENV):
        compile_cache.enable()


def main(argv: list[str] | None = None) -> int:
    from gemini_jax.cli.commands import HANDLERS

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (2, its line printed) or --help (0)
        return int(e.code or 0)
    _enable_compile_cache(args)
    try:
        HANDLERS[args.command](args)
    except _user_errors() as e:
        print(f"gemini-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


# XLA on CPUs allocates each step's temporaries afresh (40 to 140 MB for the demo's batches),
# and glibc maps an allocation that large with mmap of its own: every 4 KiB page of it faults
# in, zeroed by the kernel, at every step. Asked to, glibc advises transparent huge pages
# (2 MiB) for those maps, where the kernel allows them on request, as most Linux
# distributions do. glibc reads its tunables when a process starts, so the command sets the
# tunable and starts itself again.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_environ(environ: dict[str, str], platform: str = sys.platform) -> dict[str, str] | None:
    """The environment to start the command again in, or None when it needs no restart (not
    Linux, the tunable already set, or GEMINI_JAX_NO_HUGE_PAGES set)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if platform != "linux" or "glibc.malloc.hugetlb" in tunables or environ.get("GEMINI_JAX_NO_HUGE_PAGES"):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE}


def entry() -> None:
    """The `gemini-jax` console script: `main`, in a process whose large allocations glibc
    backs with huge pages."""
    environ = huge_pages_environ(dict(os.environ))
    if environ is not None:
        os.execve(sys.executable, [sys.executable, sys.argv[0], *sys.argv[1:]], environ)
    sys.exit(main())

