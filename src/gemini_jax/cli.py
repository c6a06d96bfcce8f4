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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_RUN_DIR = "runs/demo"
TRAIN_TASKS = ("demo", "kv_retrieval", "long_text")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it tells something: not for an unset option (None) or
    a switch (False), and not where the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    """The demo recipe's training schedule, shared by train and distill."""
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default: the demo recipe's)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: the recipe's)")


def _add_result_flags(p: argparse.ArgumentParser) -> None:
    """The final evaluation and its report, shared by train and distill."""
    p.add_argument("--eval-limit", type=int, default=None,
                   help="at most this many test examples per task in the final evaluation (kv_retrieval: per length "
                   "and position; long_text: held-out documents; default: all)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--output", default=None, help="also write the final results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the demo model on the embedded corpus (or the long-context retrieval recipe), then evaluate it",
        description="Builds the embedded demo corpus (cached), trains its tokenizer, trains one "
        "multimodal model on the mixture of tasks (easy-VQA, spoken-number transcription, video "
        "questions, standard-library code), then evaluates it on the held-out test sets. "
        "Re-running with the same --run-dir resumes from its last checkpoint. --task kv_retrieval instead "
        "trains the preset's decoder (text only) on synthetic key-value retrieval at --seq-len tokens and "
        "evaluates it by context length and position; --task long_text trains it on --seq-len-token "
        "windows of standard-library code and plots its loss by token position "
        "(src/gemini_jax/long_context.py).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--task", choices=TRAIN_TASKS, default="demo",
                   help="demo: the multimodal demo; kv_retrieval: the long-context recipe, a text-only decoder "
                   "trained on synthetic key-value retrieval, evaluated by context length and position; "
                   "long_text: that decoder trained on long documents, evaluated by NLL by token position")
    p.add_argument("--run-dir", default=None,
                   help="where checkpoints, metrics.jsonl and loss.png go (default: runs/<task>)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="kv_retrieval and long_text: training row length in tokens, the longest context "
                   "(default: the recipe's)")
    p.add_argument("--cache-dir", default=None,
                   help="where the demo corpus is built and cached (default: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax)")
    p.add_argument("--preset", default="demo", help="model preset (see gemini_jax.config.PRESETS)")
    _add_schedule_flags(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (parameters stay float32; default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order")
    p.add_argument("--eval-every", type=int, default=0, help="steps between quick evaluations (0: only at the end)")
    _add_result_flags(p)
    _add_scale_flags(p)


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
    """Sharding, multi-host and the goodput guards: the same for training and distillation."""
    p.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                   help="shard training over all devices of all processes on a (data, fsdp, tensor) mesh; "
                   "the product must equal the device count (default: one device, no mesh)")
    p.add_argument("--replica-every", type=int, default=0, metavar="N",
                   help="every N steps, copy the training state (parameters, optimizer state, data position) "
                   "in memory onto other devices (host memory on one device); a step that fails with a runtime "
                   "error then restarts from that copy instead of from storage. It costs the state's memory "
                   "again and does not survive the process dying (checkpoints do). 0: off")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: process 0's address (with --num-processes and --process-id); without "
                   "them a SLURM, MPI or Cloud TPU launcher is detected from its environment")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: processes in the run")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index, from 0")
    p.add_argument("--sdc-check-every", type=_non_negative_int, default=0, metavar="N",
                   help="every N steps compute the step twice from the same state and batch and compare the "
                   "gradients and updated state bit for bit; a difference (silent data corruption: faulty "
                   "hardware) stops the run, naming the step and the array, and is recorded in "
                   "metrics.jsonl. A checked step costs twice the compute and two more copies of the "
                   "parameters and optimizer state. It also sets XLA_FLAGS=--xla_gpu_deterministic_ops=true, "
                   "without which GPU replays differ, and which slows GPU scatter-adds in every step (0: never)")
    p.add_argument("--loss-spike-factor", type=_spike_factor, default=0.0, metavar="F",
                   help="skip (and count as spike_skips in metrics.jsonl) an update whose loss exceeds F times "
                   "the running mean of recent losses, after the first 100 steps; F must exceed 1 (0: off)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _spike_factor(text: str) -> float:
    value = float(text)
    if not (value == 0 or value > 1):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or above 1, got {text}")
    return value


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="train a student preset on the demo corpus from a trained teacher run, then evaluate it",
        description="Trains the student as `gemini-jax train --preset STUDENT` does (same corpus, data stream, "
        "seed, schedule and final evaluation) with the teacher run's tokenizer, on the loss "
        "alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy at the scored tokens, where _T is "
        "the softmax at temperature T. The teacher is frozen and runs in the same compiled step. Teacher and "
        "student must share the vocabulary and the teacher's encoders with their input settings. Re-running "
        "with the same --run-dir (and the same teacher) resumes from its last checkpoint.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--teacher", required=True, metavar="RUN_DIR",
                   help="the teacher: a run directory written by `gemini-jax train` (its latest checkpoint)")
    p.add_argument("--student-preset", default="demo-half",
                   help="the student's model preset (see `gemini-jax presets`); demo-half is half of demo")
    p.add_argument("--temperature", type=float, default=2.0,
                   help="softmax temperature T of both distributions in the KL term (> 0; higher is softer)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="the KL term's share of the loss, in [0, 1]; 0 is plain training on the targets")
    p.add_argument("--run-dir", default="runs/distill",
                   help="where the student's checkpoints, metrics.jsonl, loss.png and distillation.json go")
    p.add_argument("--cache-dir", default=None,
                   help="where the demo corpus is built and cached (default: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax)")
    _add_schedule_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed for the student's initialisation and data order")
    _add_result_flags(p)
    _add_scale_flags(p)


DEMO_TASKS = ("vqa", "asr", "video", "text")  # evals/demo_eval.py's, named here so that --help needs no JAX
LONG_CONTEXT_TASKS = ("kv_retrieval", "nll_by_position")  # long_context.py's
BENCHMARK_TASKS = ("mmlu", "gsm8k", "math", "bbh", "drop", "hellaswag", "wmt", "humaneval", "vqav2", "textvqa",
                   "docvqa", "infographicvqa", "chartqa", "ai2d", "mmmu", "asr_manifest", "videoqa")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on benchmarks (--data-dir) or on the demo's held-out test sets",
        description="Benchmarks: --tasks mmlu,gsm8k,... --data-dir DIR reads each task from DIR/<task>/ in the "
        "benchmark's published layout (see gemini_jax/evals/tasks/) and asks it with the Gemini report's "
        "protocol (k-shot multiple choice by log-likelihood, greedy or maj@k generation, pass@k for code, 0-shot "
        "greedy for images, audio and video). Without benchmark tasks: the demo's held-out test sets (exact "
        "match for easy-VQA, transcription and video questions; word error rate; perplexity of held-out "
        "standard-library code). Long context (kv_retrieval, nll_by_position): key-value retrieval exact match "
        "by context length and the queried pair's position, and NLL by token position on held-out long "
        "documents (plotted as a PNG). Prints a table of {task: {metric: value}}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN_DIR, help="a run directory written by `gemini-jax train`")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks: benchmarks (" + ",".join(BENCHMARK_TASKS) + "), or demo sets ("
                   + ",".join(DEMO_TASKS) + "), or long-context evaluations (" + ",".join(LONG_CONTEXT_TASKS)
                   + "); default: all demo sets")
    p.add_argument("--data-dir", default=None,
                   help="benchmarks: the folder holding one sub-folder per task (humaneval needs none)")
    p.add_argument("--cache-dir", default=None, help="demo sets: the demo corpus cache (as for train)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many examples per task (kv_retrieval: per length and position, default 100; "
                   "nll_by_position: documents, default 32)")
    p.add_argument("--lengths", default=None, metavar="N,N,...",
                   help="long context: context lengths in tokens (default: 128, 256, ... up to the model's context)")
    p.add_argument("--plot", default=None,
                   help="nll_by_position: the PNG to write (default: nll_by_position.png in the checkpoint directory)")
    p.add_argument("--shots", type=int, default=None,
                   help="benchmarks: k for the k-shot tasks (default: each task's, e.g. 5 for MMLU, 8 for GSM8K); 0-shot "
                   "tasks (images, audio, video, HellaSwag, WMT, HumanEval) ignore it")
    p.add_argument("--samples", type=int, default=1,
                   help="benchmarks: samples per question; >1 gives maj@k answers and pass@k for code")
    p.add_argument("--temperature", type=float, default=0.7, help="benchmarks: sampling temperature when --samples > 1")
    p.add_argument("--seed", type=int, default=0, help="benchmarks: sampling seed (sample i uses seed + i)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts decoded or scored together (default: 16 for benchmarks, 256 for the demo sets)")
    p.add_argument("--output", default=None, help="write the results as JSON: {task: {metric: value}}")
    p.add_argument("--records", default=None, help="write every example's prompt, output and score as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# The eval options that only some kinds of task read: given for another kind, they are refused
# rather than silently ignored (--shots with the demo sets would look like a 5-shot score).
EVAL_OPTIONS_BY_KIND = {
    "data_dir": ("--data-dir", ("benchmarks",)), "shots": ("--shots", ("benchmarks",)),
    "samples": ("--samples", ("benchmarks",)), "temperature": ("--temperature", ("benchmarks",)),
    "seed": ("--seed", ("benchmarks",)), "cache_dir": ("--cache-dir", ("demo sets",)),
    "lengths": ("--lengths", ("long context",)), "plot": ("--plot", ("long context",)),
    "records": ("--records", ("benchmarks", "demo sets")),
}


def _refuse_options_of_other_tasks(args: argparse.Namespace, kind: str) -> None:
    from gemini_jax.evals.tasks import TaskDataError

    defaults = build_parser().parse_args(["eval"])
    unused = [f"{option} (for {' and '.join(kinds)} only)" for dest, (option, kinds) in EVAL_OPTIONS_BY_KIND.items()
              if kind not in kinds and getattr(args, dest) != getattr(defaults, dest)]
    if unused:
        raise TaskDataError(f"these options do nothing for {kind}: {', '.join(unused)}; drop them")


def _eval(args: argparse.Namespace) -> None:
    from gemini_jax.evals.tasks import TaskDataError

    tasks = [t.strip() for t in (args.tasks or ",".join(DEMO_TASKS)).split(",") if t.strip()]
    unknown = [t for t in tasks if t not in DEMO_TASKS + BENCHMARK_TASKS + LONG_CONTEXT_TASKS]
    if unknown:
        raise TaskDataError(f"unknown task(s) {', '.join(unknown)}; known benchmarks: {', '.join(BENCHMARK_TASKS)}; "
                            f"demo sets: {', '.join(DEMO_TASKS)}; long context: {', '.join(LONG_CONTEXT_TASKS)}")
    long_context = [t for t in tasks if t in LONG_CONTEXT_TASKS]
    demo_tasks = [t for t in tasks if t in DEMO_TASKS]
    _refuse_options_of_other_tasks(args, "long context" if long_context else "demo sets" if demo_tasks
                                   else "benchmarks")
    if long_context:
        if len(long_context) < len(tasks):
            raise TaskDataError(f"evaluate the long-context tasks ({', '.join(long_context)}) in a run of their own")
        from gemini_jax.recipes import long_context as recipe

        lengths = _lengths(args.lengths)
        results = recipe.evaluate_checkpoint(
            args.checkpoint, tasks=tasks, lengths=lengths, per_cell=args.limit or 100, documents=args.limit or 32,
            plot_path=args.plot, batch_size=args.batch_size or 16, progress=not args.no_progress)
        _write_json(args.output, results)
        return
    if demo_tasks and len(demo_tasks) < len(tasks):
        raise TaskDataError(f"evaluate the demo sets ({', '.join(demo_tasks)}) and benchmarks in separate runs")
    if demo_tasks:
        from gemini_jax.recipes import demo

        results = demo.evaluate_checkpoint(
            args.checkpoint, cache_dir=args.cache_dir, tasks=tasks, limit=args.limit,
            batch_size=args.batch_size or 256, records_path=args.records, progress=not args.no_progress,
        )
    else:
        from gemini_jax.evals import benchmark
        from gemini_jax.evals.tasks import Settings

        settings = Settings(shots=args.shots, samples=args.samples, temperature=args.temperature, limit=args.limit,
                            seed=args.seed)
        results = benchmark.evaluate_checkpoint(
            args.checkpoint, tasks=tasks, data_dir=args.data_dir, settings=settings,
            batch_size=args.batch_size or 16, records_path=args.records, progress=not args.no_progress)
    _write_json(args.output, results)


def _lengths(text: str | None) -> list[int] | None:
    from gemini_jax.evals.tasks import TaskDataError

    if text is None:
        return None
    try:
        lengths = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise TaskDataError(f"--lengths takes positive token counts separated by commas (e.g. 256,512), got {text!r}")
    return lengths


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="answer a prompt, optionally with an image, audio clip or video",
        description="Runs one user turn through the model and prints its answer. Media parts come "
        "before the text, in the order image, video, audio.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("prompt", help="the text of the user's turn")
    p.add_argument("--checkpoint", default=DEFAULT_RUN_DIR, help="a run directory written by `gemini-jax train`")
    p.add_argument("--image", action="append", default=[], help="an image file (PNG, JPEG, ...); repeatable")
    p.add_argument("--video", action="append", default=[], help="a video file (animated GIF/WebP/PNG); repeatable")
    p.add_argument("--audio", action="append", default=[], help="an audio file (WAV, FLAC, ...; resampled to 16 kHz mono); repeatable")
    p.add_argument("--max-new-tokens", type=int, default=64, help="stop after this many new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set with this much probability")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API (continuous batching)",
        description="POST /v1/chat/completions (messages with text, base64 images and WAV audio; "
        "stream: true for server-sent events), GET /health, GET /metrics. Requests share the "
        "decode slots and join the batch at its next step.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN_DIR, help="a run directory written by `gemini-jax train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--slots", type=int, default=8, help="requests decoded together (rows of the KV cache)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; more are refused with 429")
    p.add_argument("--max-request-bytes", type=int, default=8 << 20, help="larger request bodies get 413")
    p.add_argument("--max-len", type=int, default=None,
                   help="cache positions per slot, prompt + answer (default: the model's context)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $GEMINI_JAX_API_KEY if set, else none)")


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help="list the model presets with their shapes and parameter counts",
        description="Shapes and parameter counts by component (decoder with its embedding, vision and "
        "audio encoders) of each preset, counted under jax.eval_shape: nothing is allocated.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output format")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="import a Hugging Face Gemma-1 or PaliGemma checkpoint as a run directory, or export a run to "
        "Gemma-1",
        description="Import: --from-hf DIR --to RUN_DIR reads a Hugging Face Gemma-1 or PaliGemma-1 directory "
        "(config.json of a GemmaForCausalLM or PaliGemmaForConditionalGeneration, chosen by its architectures, "
        "model.safetensors or sharded model-*-of-*.safetensors with "
        "model.safetensors.index.json, tokenizer.model) and writes a run directory (text-only for Gemma, "
        "with a SigLIP vision encoder for PaliGemma) whose checkpoint step 0 holds the weights in float32. Export: --from RUN_DIR --to-hf DIR writes a "
        "text-only, causal run as a Hugging Face directory (config.json, float32 model.safetensors, "
        "tokenizer.model) that transformers' GemmaForCausalLM.from_pretrained loads. Weights are read "
        "with safetensors only, never pickle.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--from-hf", metavar="DIR", default=None,
                   help="a Hugging Face Gemma-1 or PaliGemma-1 directory to import")
    p.add_argument("--to", metavar="RUN_DIR", default=None,
                   help="with --from-hf: the run directory to create (new or empty)")
    p.add_argument("--from", dest="from_run", metavar="RUN_DIR", default=None,
                   help="a run directory to export (text-only models with causal prompts)")
    p.add_argument("--to-hf", metavar="DIR", default=None,
                   help="with --from: the Hugging Face directory to write (new or empty)")
    p.add_argument("--step", type=int, default=None,
                   help="with --from: the checkpoint step to export; None: the latest")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="with --from-hf: the imported run's compute dtype (parameters are stored float32)")


def _convert(args: argparse.Namespace) -> None:
    from gemini_jax.convert.gemma import ConversionError, export_gemma
    from gemini_jax.convert.paligemma import import_hf

    if args.from_hf is not None and args.to is not None and args.from_run is None and args.to_hf is None:
        config = import_hf(args.from_hf, args.to, dtype=args.dtype)
        vision = "" if config.vision is None else f", SigLIP vision encoder ({config.vision.depth} layers)"
        print(f"imported {args.from_hf} -> {args.to}: Gemma-1 decoder, {config.depth} layers, "
              f"width {config.width}, vocabulary {config.vocab_size}{vision}")
    elif args.from_run is not None and args.to_hf is not None and args.from_hf is None and args.to is None:
        step = export_gemma(args.from_run, args.to_hf, step=args.step)
        print(f"exported {args.from_run} (step {step}) -> {args.to_hf}")
    else:
        raise ConversionError("give either --from-hf DIR --to RUN_DIR (import) or --from RUN_DIR --to-hf DIR (export)")


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="write a weight-only int4 (or int8) copy of a run for generate, eval and serve",
        description="Quantizes the dense weights (decoder attention and MLP, the tied embedding, and the "
        "encoders' dense layers whose input size the group size divides) with one symmetric scale per group of "
        "--group-size consecutive input features. The new run directory records its quantization "
        "(quantization.json); generate, eval and serve load it as they load a float run, and decoding "
        "dequantizes inside the compiled step. Training refuses it.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN_DIR, help="the float run directory to quantize")
    p.add_argument("--out", required=True, help="the quantized run directory to create (new or empty)")
    p.add_argument("--group-size", type=int, default=32, help="input features sharing one scale")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4, help="bits per weight")
    p.add_argument("--step", type=int, default=None, help="the checkpoint step to quantize (default: the latest)")


def _quantize(args: argparse.Namespace) -> None:
    from gemini_jax.sample.quantize import quantize_run

    report = quantize_run(args.checkpoint, args.out, group_size=args.group_size, bits=args.bits, step=args.step)
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-jax",
        description="Train, evaluate and run natively multimodal Gemini-style models in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_distill(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_serve(sub)
    _add_presets(sub)
    _add_convert(sub)
    _add_quantize(sub)
    return parser


def _write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def _run(args: argparse.Namespace) -> None:
    if args.command == "convert":  # needs neither the demo nor its data stack
        _convert(args)
        return
    if args.command == "quantize":
        _quantize(args)
        return
    if args.command == "serve":  # needs no training code
        import os

        from gemini_jax.sample.server import serve

        serve(args.checkpoint, host=args.host, port=args.port, slots=args.slots, max_queue=args.max_queue,
              max_request_bytes=args.max_request_bytes, max_len=args.max_len,
              api_key=args.api_key or os.environ.get("GEMINI_JAX_API_KEY"))
        return
    if args.command in ("train", "distill"):
        import os

        from gemini_jax.config import ConfigError
        from gemini_jax.sharding import MeshShape, make_mesh
        from gemini_jax.train import distributed
        from gemini_jax.train.replay import GPU_DETERMINISM_FLAG

        if args.sdc_check_every and GPU_DETERMINISM_FLAG not in os.environ.get("XLA_FLAGS", ""):
            # Read when the backend starts (below): replays on GPU agree only with it.
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {GPU_DETERMINISM_FLAG}".strip()

        if args.replica_every < 0:
            raise ConfigError(f"--replica-every must be 0 (off) or a number of steps, got {args.replica_every}")

        # Before anything else uses JAX (the demo's imports included): joining a cluster
        # must come before the first backend call.
        mesh = None if args.mesh is None else MeshShape.parse(args.mesh)
        distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
        if mesh is not None:
            make_mesh(mesh)  # a mesh that does not fit the devices fails now, not after the corpus is built
    if args.command == "eval":  # imports what its tasks need, no more
        _eval(args)
        return
    if args.command == "train" and args.task != "demo":
        _train_long_context(args, mesh)
        return
    # Imported here so that `--help` answers at once, without loading JAX.
    from gemini_jax.recipes import demo

    if args.command == "train":
        if args.seq_len is not None:
            from gemini_jax.config import ConfigError

            raise ConfigError("--seq-len is for --task kv_retrieval or long_text; the demo's lengths come from its "
                              "corpus")
        results = demo.train_and_evaluate(
            mesh=mesh,
            run_dir=args.run_dir or DEFAULT_RUN_DIR, cache_dir=args.cache_dir, preset=args.preset, steps=args.steps,
            batch_size=args.batch_size, learning_rate=args.learning_rate, dtype=args.dtype, seed=args.seed,
            eval_every=args.eval_every, eval_limit=args.eval_limit, evaluate_at_end=not args.no_eval,
            progress=not args.no_progress, sdc_check_every=args.sdc_check_every,
            loss_spike_factor=args.loss_spike_factor, replica_every=args.replica_every,
        )
        _write_json(args.output, results)
    elif args.command == "distill":
        from gemini_jax.train.distill import DistillConfig

        results = demo.distill_and_evaluate(
            teacher=args.teacher, student_preset=args.student_preset, run_dir=args.run_dir,
            distill_config=DistillConfig(temperature=args.temperature, alpha=args.alpha),
            cache_dir=args.cache_dir, steps=args.steps, batch_size=args.batch_size,
            learning_rate=args.learning_rate, seed=args.seed, eval_limit=args.eval_limit,
            evaluate_at_end=not args.no_eval, progress=not args.no_progress, mesh=mesh,
            sdc_check_every=args.sdc_check_every, loss_spike_factor=args.loss_spike_factor,
            replica_every=args.replica_every,
        )
        _write_json(args.output, results)
    elif args.command == "presets":
        from gemini_jax import family
        from gemini_jax.config import get_preset

        for name in args.names:
            get_preset(name)  # an unknown name is a ConfigError that lists the presets
        print(family.main(args.names or None, output_format=args.format))
    elif args.command == "generate":
        print(demo.generate_answer(
            args.checkpoint, prompt=args.prompt, images=args.image, videos=args.video, audios=args.audio,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed,
        ))


def _train_long_context(args: argparse.Namespace, mesh) -> None:
    import dataclasses

    from gemini_jax.recipes import long_context
    from gemini_jax.config import ConfigError, override

    if mesh is not None or args.num_processes:
        raise ConfigError(f"--task {args.task} trains on one device: drop --mesh and the multi-host flags")
    if args.cache_dir is not None:
        raise ConfigError(f"--task {args.task} reads no demo corpus (its text comes from the standard library): "
                          "drop --cache-dir")
    recipe = long_context.RECIPES[args.task](preset=args.preset, seed=args.seed)
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                 ("learning_rate", args.learning_rate), ("seq_len", args.seq_len)) if v is not None}
    recipe = dataclasses.replace(recipe, **changes)
    if args.eval_limit is not None:
        limit = "eval_per_cell" if args.task == "kv_retrieval" else "eval_documents"
        recipe = dataclasses.replace(recipe, **{limit: args.eval_limit})
    config = long_context.model_config(recipe)
    if args.dtype is not None:
        config = override(config, dtype=args.dtype)
    results = long_context.train_and_evaluate(run_dir=args.run_dir, recipe=recipe,
                                              config=config, evaluate_at_end=not args.no_eval,
                                              eval_every=args.eval_every, progress=not args.no_progress,
                                              sdc_check_every=args.sdc_check_every,
                                              replica_every=args.replica_every,
                                              loss_spike_factor=args.loss_spike_factor)
    _write_json(args.output, results)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input: printed as one clear line, not a traceback."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import ConfigError
    from gemini_jax.convert.gemma import ConversionError
    from gemini_jax.data.encode import EncodeError
    from gemini_jax.data.examples import ExampleError
    from gemini_jax.data.media import MediaError
    from gemini_jax.data.pipeline import DataError
    from gemini_jax.data.corpora.speech import SpeechError
    from gemini_jax.data.tokenizer import TokenizerError
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.model.quant import QuantizationError

    return (CheckpointError, ConfigError, ConversionError, EncodeError, ExampleError, MediaError, DataError,
            SpeechError, TokenizerError, TaskDataError, QuantizationError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
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


if __name__ == "__main__":
    sys.exit(main())
