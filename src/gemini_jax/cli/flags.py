"""The command line's flags: one parser per command, every flag explained in --help and its
value checked as it is parsed, so a bad value is a one-line usage error before anything loads.
Nothing here imports JAX: `--help` answers at once."""

from __future__ import annotations

import argparse

from gemini_jax.cli.data_command import add_parser as add_data_command
from gemini_jax.cli.image_scorer_command import add_parser as add_image_scorer_command
from gemini_jax.cli.image_tokenizer_command import add_parser as add_image_tokenizer_command
from gemini_jax.cli.types import (
    lengths,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    probability,
    seed,
    spike_factor,
    unit_interval,
)

DEFAULT_RUN_DIR = "runs/demo"
TRAIN_TASKS = ("demo", "kv_retrieval", "long_text", "image_generation")


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
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="examples per batch (default: the demo recipe's)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="peak learning rate (default: the recipe's)")


def _add_result_flags(p: argparse.ArgumentParser) -> None:
    """The final evaluation and its report, shared by train and distill."""
    p.add_argument("--eval-limit", type=positive_int, default=None,
                   help="at most this many test examples per task in the final evaluation (kv_retrieval: per length "
                   "and position; long_text: held-out documents; default: all)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--output", default=None, help="also write the final results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the demo model on the embedded corpus (or a long-context recipe, or your own data), then evaluate it",
        description="Builds the embedded demo corpus (cached), trains its tokenizer, trains one "
        "multimodal model on the mixture of tasks (easy-VQA, spoken-number transcription, video "
        "questions, standard-library code), then evaluates it on the held-out test sets. "
        "Re-running with the same --run-dir resumes from its last checkpoint. --task kv_retrieval instead "
        "trains the preset's decoder (text only) on synthetic key-value retrieval at --seq-len tokens and "
        "evaluates it by context length and position; --task long_text trains it on --seq-len-token "
        "windows of standard-library code and plots its loss by token position "
        "(src/gemini_jax/recipes/long_context.py). --data MIXTURE trains on your own prepared data "
        "(src/gemini_jax/recipes/custom.py), from the --preset's random initialisation or from --init-from RUN_DIR.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--task", choices=TRAIN_TASKS, default=None,
                   help="demo (the default): the multimodal demo; kv_retrieval: the long-context recipe, a text-only "
                   "decoder trained on synthetic key-value retrieval, evaluated by context length and position; "
                   "long_text: that decoder trained on long documents, evaluated by NLL by token position; "
                   "image_generation: a model that draws and edits easy-VQA-style pictures as image codes, with an "
                   "image scorer to choose among its samples, judged on held-out requests, the best of 8 samples each "
                   "(src/gemini_jax/recipes/image_generation.py)")
    p.add_argument("--image-tokenizer", default=None, metavar="DIR",
                   help="image_generation: use this trained image tokenizer (`gemini-jax image-tokenizer train --out "
                   "DIR`) instead of training one on the drawings (default: trained by the recipe)")
    p.add_argument("--eval-samples", type=positive_int, default=None, metavar="K",
                   help="image_generation: the final evaluation samples each test request K times and judges the one "
                   "the run's image scorer rates highest (default: 8; 1: the first sample alone)")

    def mixture_file(text: str) -> str:
        if not text.endswith((".yaml", ".yml", ".json")):
            raise argparse.ArgumentTypeError(f"expected a mixture file ending in .yaml, .yml or .json, got {text!r}")
        return text

    p.add_argument("--data", type=mixture_file, default=None, metavar="MIXTURE",
                   help="train on your own data instead of a --task: a mixture file (YAML or JSON) naming directories "
                   "written by `gemini-jax data prepare`, their weights or stages and metrics (docs/your-data.md); "
                   "validation splits are scored during training (--eval-every), test splits and the file's eval "
                   "sets at the end")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="with --data: start from this run's latest parameters, keeping its model config and "
                   "tokenizer (a `gemini-jax train` run or one imported by `gemini-jax convert`); the data must be "
                   "prepared with its tokenizer (`data prepare --tokenizer RUN_DIR`); --preset does not apply")
    p.add_argument("--run-dir", default=None,
                   help="where checkpoints, metrics.jsonl and loss.png go (default: runs/<task>; with --data: runs/data)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="kv_retrieval and long_text: training row length in tokens, the longest context; --data: "
                   "row length of the sources without their own seq_len (default: the recipe's; --data: the longest "
                   "validation example, at most the model's context)")
    p.add_argument("--cache-dir", default=None,
                   help="where the demo corpus (kv_retrieval and long_text: their prepared training text) is built "
                   "and cached (default: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax)")
    p.add_argument("--preset", default=None,
                   help="model preset (see `gemini-jax presets`; default: the recipe's, demo); with --data its "
                   "vocabulary takes the prepared tokenizer's size")
    _add_schedule_flags(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (parameters stay float32; default: the preset's)")
    p.add_argument("--seed", type=seed, default=0, help="seed for initialisation and data order")
    p.add_argument("--eval-every", type=non_negative_int, default=0, help="steps between quick evaluations (0: only at the end)")
    _add_result_flags(p)
    _add_lora_flags(p)
    _add_scale_flags(p)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # model/lora.py's TARGETS, named here so that --help needs no JAX


def lora_targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in LORA_TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown LoRA target(s) {', '.join(map(repr, unknown)) or 'none given'}; "
                                         f"accepted (comma-separated): {','.join(LORA_TARGETS)}")
    return names


def _add_lora_flags(p: argparse.ArgumentParser) -> None:
    """LoRA adapters on --init-from's model instead of training all of its weights."""
    g = p.add_argument_group(
        "LoRA", "train low-rank adapters on --init-from's decoder instead of all its weights (docs/post-training.md): "
        "the base stays as it was, checkpoints hold the adapters alone, and generate, eval, serve, quantize and "
        "convert read the run with its adapters merged in")
    g.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                   help="turns LoRA on: each targeted weight W becomes W + (alpha / R) A B, A [in, R] and B [R, out] "
                   "trained, B starting at zero (default: off, every weight trains)")
    g.add_argument("--lora-alpha", type=positive_float, default=None, metavar="A",
                   help="scale numerator of the update (alpha / rank); default: 2 x rank")
    g.add_argument("--lora-targets", type=lora_targets, default=None, metavar=",".join(LORA_TARGETS),
                   help="the decoder weights that get adapters, comma-separated: attention q, k, v, o and MLP "
                   "gate, up, down (default: all seven)")


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
    """Sharding, multi-host and the goodput guards: the same for training and distillation."""
    p.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                   help="shard training over all devices of all processes on a (data, fsdp, tensor) mesh; "
                   "the product must equal the device count (default: one device, no mesh)")
    p.add_argument("--replica-every", type=non_negative_int, default=0, metavar="N",
                   help="every N steps, copy the training state (parameters, optimizer state, data position) "
                   "in memory onto other devices (host memory on one device); a step that fails with a runtime "
                   "error then restarts from that copy instead of from storage. It costs the state's memory "
                   "again and does not survive the process dying (checkpoints do). 0: off")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: process 0's address (with --num-processes and --process-id); without "
                   "them a SLURM, MPI or Cloud TPU launcher is detected from its environment")
    p.add_argument("--num-processes", type=positive_int, default=None, help="multi-host: processes in the run")
    p.add_argument("--process-id", type=non_negative_int, default=None, help="multi-host: this process's index, from 0")
    p.add_argument("--sdc-check-every", type=non_negative_int, default=0, metavar="N",
                   help="every N steps compute the step twice from the same state and batch and compare the "
                   "gradients and updated state bit for bit; a difference (silent data corruption: faulty "
                   "hardware) stops the run, naming the step and the array, and is recorded in "
                   "metrics.jsonl. A checked step costs twice the compute and two more copies of the "
                   "parameters and optimizer state. It also sets XLA_FLAGS=--xla_gpu_deterministic_ops=true, "
                   "without which GPU replays differ, and which slows GPU scatter-adds in every step (0: never)")
    p.add_argument("--loss-spike-factor", type=spike_factor, default=0.0, metavar="F",
                   help="skip (and count as spike_skips in metrics.jsonl) an update whose loss exceeds F times "
                   "the running mean of recent losses, after the first 100 steps; F must exceed 1 (0: off)")


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
    p.add_argument("--temperature", type=positive_float, default=2.0,
                   help="softmax temperature T of both distributions in the KL term (> 0; higher is softer)")
    p.add_argument("--alpha", type=unit_interval, default=0.5,
                   help="the KL term's share of the loss, in [0, 1]; 0 is plain training on the targets")
    p.add_argument("--run-dir", default="runs/distill",
                   help="where the student's checkpoints, metrics.jsonl, loss.png and distillation.json go")
    p.add_argument("--cache-dir", default=None,
                   help="where the demo corpus is built and cached (default: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax)")
    _add_schedule_flags(p)
    p.add_argument("--seed", type=seed, default=0, help="seed for the student's initialisation and data order")
    _add_result_flags(p)
    _add_scale_flags(p)


PREFERENCE_HELP = {
    "reward": ("train a reward model (a run's decoder with a scalar head) on preference pairs",
               "Trains a reward model on preference pairs (one JSONL line each: 'contents', the prompt, ending on a "
               "user turn; 'chosen' and 'rejected', the parts of two replies; docs/post-training.md) with the "
               "pairwise Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected). It starts from --init-from's "
               "decoder; the score of a reply is a linear head, started at zero, on the hidden state that "
               "predicts its <end_of_turn>. Pairs are split by a hash of their prompt into train, validation "
               "(scored every --eval-every steps) and test (scored once, at the end); it reports pairwise "
               "accuracy. Re-running with the same --run-dir resumes from its last checkpoint."),
    "dpo": ("train a policy on preference pairs with DPO (direct preference optimization)",
            "Trains --init-from's model on preference pairs (the format `gemini-jax reward` reads) with the DPO "
            "loss, -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log "
            "ref(rejected)))), where ref is --init-from's model, frozen, and log pi sums the reply's token "
            "log-probabilities. Pairs are split by a hash of their prompt; validation is scored every "
            "--eval-every steps and test at the end, as the share of pairs whose implicit reward beta * (log pi "
            "- log ref) is higher for the chosen reply. Re-running with the same --run-dir resumes."),
}


def _add_preference(sub: argparse._SubParsersAction, kind: str) -> None:
    summary, description = PREFERENCE_HELP[kind]
    p = sub.add_parser(kind, help=summary, description=description, formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, metavar="PAIRS_JSONL", help="the preference pairs, one JSON object a line")
    p.add_argument("--init-from", required=True, metavar="RUN_DIR",
                   help="the run to start from (its config, tokenizer and latest parameters): an SFT run, the demo, "
                   "or any `gemini-jax train` or `convert` run")
    p.add_argument("--run-dir", default=f"runs/{kind}", help="where checkpoints, metrics.jsonl and loss.png go")
    if kind == "dpo":
        p.add_argument("--beta", type=positive_float, default=0.1,
                       help="scale of the implicit reward: higher keeps the policy closer to --init-from")
    if kind == "reward":
        p.add_argument("--likelihood", action="store_true",
                       help="the score also weighs the reply's log-probability under --init-from's own language model "
                       "head (its mean and sum over the reply's tokens, two weights learnt beside the head)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: 300)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="pairs per batch (default: 16)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="peak learning rate (default: 1e-4)")
    p.add_argument("--seed", type=seed, default=0, help="seed for the data order")
    _add_held_out_flags(p, "pairs")
    if kind == "dpo":
        _add_lora_flags(p)
    _add_scale_flags(p)


def _add_held_out_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The split by hash, the bad-record budget and the evaluations: the same for reward, dpo and rl."""
    p.add_argument("--validation-fraction", type=unit_interval, default=0.1,
                   help=f"share of {what} (by a hash of their prompt) held out for validation")
    p.add_argument("--test-fraction", type=unit_interval, default=0.1,
                   help=f"share of {what} (by a hash of their prompt) held out for test")
    p.add_argument("--max-bad-records", type=non_negative_int, default=0,
                   help=f"malformed {what} that may be skipped (and counted) before the run refuses the file")
    p.add_argument("--eval-every", type=non_negative_int, default=0,
                   help="steps between validation scores (0: only at the end)")
    p.add_argument("--eval-limit", type=positive_int, default=None,
                   help=f"at most this many {what} per held-out split in the evaluations (default: all)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--output", default=None, help="also write the final results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_rl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rl", help="train a policy from a reward: exact match with reference answers, or a reward model run",
        description="Reinforcement learning from a reward, group-relative (GRPO-style) with a KL penalty to "
        "--init-from's model. Each step samples --group-size replies to each of --prompts-per-step training "
        "prompts with the current policy (through the project's compiled sampler), scores them with --reward, "
        "gives each reply an advantage (--advantage: its reward minus its group's mean over the group's standard "
        "deviation, or 1 for the group's best reply and 0 for the rest), and takes one update on -advantage * "
        "log pi(reply) + --kl-coef * KL(pi || init). Prompts are "
        "conversations (JSONL, the contents format) ending on the model turn that answers them, the reference; "
        "they are split by a hash of their prompt. Validation prompts are answered greedily and scored every "
        "--eval-every steps, test prompts at the end. A non-finite reward skips its update (counted as "
        "skipped_updates). Re-running with the same --run-dir resumes, sampling what the uninterrupted run would.",
        formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, metavar="PROMPTS_JSONL",
                   help="conversations, one JSON object a line, each ending on its reference answer (a model turn)")
    p.add_argument("--init-from", required=True, metavar="RUN_DIR",
                   help="the starting policy, also the KL penalty's reference: its config, tokenizer and latest parameters")
    p.add_argument("--reward", default="exact_match", metavar="exact_match|RUN_DIR",
                   help="exact_match: 1 when the reply equals the reference (lower case, no punctuation or articles), "
                   "else 0; or a reward model run written by `gemini-jax reward` from the policy's run (same tokenizer)")
    p.add_argument("--run-dir", default="runs/rl", help="where checkpoints, metrics.jsonl and loss.png go")
    p.add_argument("--prompts-per-step", type=positive_int, default=8, help="training prompts per update")
    p.add_argument("--group-size", type=positive_int, default=4, help="replies sampled per prompt (at least 2)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--max-new-tokens", type=positive_int, default=16, help="longest reply sampled")
    p.add_argument("--kl-coef", type=non_negative_float, default=0.05, help="weight of the KL penalty to --init-from")
    p.add_argument("--advantage", choices=("group", "best"), default="group",
                   help="group: each reply's reward minus its group's mean over the group's standard deviation "
                   "(GRPO); best: 1 for the group's highest-rewarded reply and 0 for the others, i.e. supervised "
                   "training on the reply the reward prefers (rejection sampling)")
    p.add_argument("--steps", type=positive_int, default=None, help="updates (default: 100)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="peak learning rate (default: 1e-4)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the prompt order and of every rollout")
    _add_held_out_flags(p, "prompts")
    _add_lora_flags(p)
    _add_scale_flags(p)


DEMO_TASKS = ("vqa", "asr", "video", "text")  # evals/demo_eval.py's, named here so that --help needs no JAX
LONG_CONTEXT_TASKS = ("kv_retrieval", "nll_by_position")  # long_context.py's
PREPARED_TASKS = ("prepared", "prepared_validation")  # evals/tasks/prepared.py's
ROBUSTNESS_TASKS = ("robustness", "robustness_validation")  # evals/tasks/robustness.py's
IMAGE_GENERATION_TASKS = ("image_generation", "image_generation_validation")  # evals/tasks/image_generation.py's
SAFETY_TASKS = ("safety", "safety_validation", "hedging", "hedging_validation", "attribution",
                "attribution_validation")  # evals/tasks/safety.py's
BENCHMARK_TASKS = ("mmlu", "gsm8k", "math", "bbh", "drop", "hellaswag", "wmt", "humaneval", "vqav2", "textvqa",
                   "docvqa", "infographicvqa", "chartqa", "ai2d", "mmmu", "mathvista", "asr_manifest", "videoqa", "vatex",
                   "covost2", "leakfree_code")


def protocol(text: str) -> str:
    """A --protocol value, checked as it is parsed: greedy, loglikelihood, maj@K, cot-routed@K, pass@K or
    cluster@N/K."""
    from gemini_jax.evals.protocols import ProtocolSpec  # pure Python: --help stays fast

    try:
        return str(ProtocolSpec.parse(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on benchmarks (--data-dir) or on the demo's held-out test sets",
        description="Benchmarks: --tasks mmlu,gsm8k,... --data-dir DIR reads each task from DIR/<task>/ in the "
        "benchmark's published layout (see gemini_jax/evals/tasks/) and asks it with the Gemini report's "
        "protocol (k-shot multiple choice by log-likelihood, greedy or maj@k generation, pass@k for code, 0-shot "
        "greedy for images, audio and video). Without benchmark tasks: the demo's held-out test sets (exact "
        "match for easy-VQA, transcription and video questions; word error rate; perplexity of held-out "
        "standard-library code). Robustness (robustness): the demo's held-out questions with the first letter's "
        "case flipped, without the question mark, in British spelling and in paraphrases never trained on, and "
        "re-drawn images, clips and speech outside the training ranges, each beside the plain set it is compared "
        "with. Long context (kv_retrieval, nll_by_position): key-value retrieval exact match "
        "by context length and the queried pair's position, and NLL by token position on held-out long "
        "documents (plotted as a PNG). Your data (prepared, prepared_validation): exact match, loss and "
        "perplexity on a prepared data directory's test or validation split, or on a .jsonl file. "
        "Prints a table of {task: {metric: value}}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_RUN_DIR, help="a run directory written by `gemini-jax train`")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks: benchmarks (" + ",".join(BENCHMARK_TASKS) + "), or demo sets ("
                   + ",".join(DEMO_TASKS) + "), or the demo's robustness suite (" + ",".join(ROBUSTNESS_TASKS)
                   + "), or the pictures a model draws (" + ",".join(IMAGE_GENERATION_TASKS)
                   + "), or safety, hedging and attribution (" + ",".join(SAFETY_TASKS)
                   + "), or long-context evaluations (" + ",".join(LONG_CONTEXT_TASKS)
                   + "), or your data (" + ",".join(PREPARED_TASKS) + "), in any mixture; default: all demo sets")
    p.add_argument("--data-dir", default=None,
                   help="benchmarks: the folder holding one sub-folder per task (humaneval and leakfree_code need none); your "
                   "data: a prepared data directory (`gemini-jax data prepare`) or a .jsonl file")
    p.add_argument("--cache-dir", default=None, help="demo sets: the demo corpus cache (as for train)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="at most this many examples per task (kv_retrieval: per length and position, default 100; "
                   "nll_by_position: documents, default 32)")
    p.add_argument("--lengths", type=lengths, default=None, metavar="N,N,...",
                   help="long context: context lengths in tokens (default: 128, 256, ... up to the model's context)")
    p.add_argument("--plot", default=None,
                   help="nll_by_position: the PNG to write (default: nll_by_position.png in the checkpoint directory)")
    p.add_argument("--shots", type=non_negative_int, default=None,
                   help="benchmarks: k for the k-shot tasks (default: each task's, e.g. 5 for MMLU, 8 for GSM8K); 0-shot "
                   "tasks (images, audio, video, HellaSwag, WMT, HumanEval) ignore it")
    p.add_argument("--protocol", type=protocol, default=None, metavar="PROTOCOL",
                   help="benchmarks: how every chosen task is asked: greedy; loglikelihood (multiple choice); maj@K "
                   "(the most common answer of K samples); cot-routed@K (K chains of thought, their majority when "
                   "it reaches a threshold chosen on the task's dev split, else the direct answer; mmlu); pass@K "
                   "(code: pass@1 and pass@K of K programs); cluster@N/K (code, as AlphaCode 2: N programs, those "
                   "failing the docstring's examples dropped, the rest clustered by their outputs on generated "
                   "inputs, one of each of the K largest clusters submitted; reported beside pass@K of the same N "
                   "samples). A protocol that does not apply to a chosen task is "
                   "refused (default: each task's own, as --samples sets it)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="benchmarks without --protocol: samples per question; >1 gives maj@k answers and pass@k for "
                   "code (refused for multiple-choice and corpus tasks, which it would not change). image_generation: "
                   "pictures sampled per request, the one the run's image scorer rates highest judged (reported "
                   "beside the first sample's score and the share with any right picture)")
    p.add_argument("--temperature", type=non_negative_float, default=0.7,
                   help="benchmarks: sampling temperature of maj@K, cot-routed@K and pass@K (refused where nothing is "
                   "sampled)")
    p.add_argument("--seed", type=seed, default=0, help="benchmarks: sampling seed (sample i uses seed + i)")
    p.add_argument("--guidance", type=non_negative_float, default=None, metavar="S",
                   help="image_generation: classifier-free guidance scale of the drawn images' codes (1: as "
                   "without it; docs/image-output.md); refused for the other tasks")
    p.add_argument("--top-k", type=non_negative_int, default=0, metavar="K",
                   help="image_generation: sample each code among the K most likely, after guidance (0: all); "
                   "refused for the other tasks")
    p.add_argument("--top-p", type=probability, default=1.0, metavar="P",
                   help="image_generation: sample each code from the smallest set with probability P, after "
                   "guidance (1: all); refused for the other tasks")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="prompts decoded or scored together (default: 16 for benchmarks, 256 for the demo sets)")
    p.add_argument("--step", type=non_negative_int, default=None,
                   help="the checkpoint step to evaluate (default: the latest)")
    p.add_argument("--output", default=None, help="write the results as JSON: {task: {metric: value}}")
    p.add_argument("--records", default=None, help="write every example's prompt, output and score as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="stop after this many new tokens (default: 64, and room for one image more for a run that "
                   "writes images)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=probability, default=1.0, help="sample from the smallest set with this much probability")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed")
    p.add_argument("--step", type=non_negative_int, default=None,
                   help="the checkpoint step to load (default: the latest)")
    p.add_argument("--safety", default=None, metavar="DIR",
                   help="a safety classifier (`gemini-jax safety train --out DIR`): the prompt and the answer are "
                   "checked, and a blocked one prints its category and score instead of the text")
    p.add_argument("--safety-setting", action="append", default=[], metavar="CATEGORY=THRESHOLD",
                   help="with --safety: block CATEGORY at this score in [0, 1] (lower blocks more) or 'off'; "
                   "repeatable; unnamed categories keep the classifier's thresholds")
    p.add_argument("--save-images", default=None, metavar="DIR",
                   help="for a run that writes images: save each one as DIR/reply-N.png (DIR made if missing) and "
                   "print the text with each image's path in its place")
    p.add_argument("--edit", default=None, metavar="PICTURE",
                   help="for a run that writes images: change this picture as PROMPT asks (\"Make the shape red.\"); "
                   "the picture is given as the model's own earlier reply to the run's unconditional prompt, then "
                   "PROMPT asks for the change (docs/image-output.md)")
    p.add_argument("--guidance", type=non_negative_float, default=None, metavar="S",
                   help="for a run that writes images: classifier-free guidance of the images' codes, u + S (c - u) "
                   "with u the logits of the run's unconditional prompt (1: as without it; larger follows the "
                   "request more closely); the run must have been trained with guidance_dropout > 0")
    p.add_argument("--best-of", type=positive_int, default=1, metavar="K",
                   help="for a run that writes images and has an image scorer (RUN/image_scorer/: `gemini-jax "
                   "image-scorer train --run RUN`): sample K replies (the k-th with seed SEED + k * 2^20) and print "
                   "the one whose first picture the scorer rates highest for the request (default 1: one reply)")


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
    p.add_argument("--port", type=port, default=8000, help="TCP port")
    p.add_argument("--slots", type=positive_int, default=8, help="requests decoded together (rows of the KV cache)")
    p.add_argument("--max-queue", type=non_negative_int, default=64,
                   help="requests that may wait for a slot; more are refused with 429")
    p.add_argument("--max-request-bytes", type=positive_int, default=8 << 20, help="larger request bodies get 413")
    p.add_argument("--step", type=non_negative_int, default=None,
                   help="the checkpoint step to serve (default: the latest)")
    p.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096,
                   help="larger uploaded images (width x height, read from the header) get 413")
    p.add_argument("--media-workers", type=positive_int, default=2,
                   help="threads that parse requests and decode their media, off the event loop")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="cache positions per slot, prompt + answer (default: the model's context)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $GEMINI_JAX_API_KEY if set, else none)")
    p.add_argument("--safety", default=None, metavar="DIR",
                   help="a safety classifier (`gemini-jax safety train --out DIR`): requests may carry "
                   "safety_settings; prompts and replies over threshold end with finish_reason content_filter")


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
    p.add_argument("--step", type=non_negative_int, default=None,
                   help="with --from: the checkpoint step to export; None: the latest")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="with --from-hf: the imported run's compute dtype (parameters are stored float32)")


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
    p.add_argument("--group-size", type=positive_int, default=32, help="input features sharing one scale")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4, help="bits per weight")
    p.add_argument("--step", type=non_negative_int, default=None, help="the checkpoint step to quantize (default: the latest)")
    p.add_argument("--calibrate", type=non_negative_int, default=0, metavar="N",
                   help="round by GPTQ (each layer's output error least on N training examples of the demo corpus) "
                   "instead of to nearest (default 0: to nearest)")


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "card",
        help="write a Markdown model card for a run: model, data, training, evaluation, safety, intended use",
        description="Writes a model card from what the run directory holds: the model (config.json, parameter "
        "count), its data (the recipe's corpus or mixture file, with each prepared directory's report.json where "
        "it is found), its training (results.json's recipe and timings, metrics.jsonl), one table per evaluation "
        "task of results.json and of each --results file (values exactly as the file holds them), its safety "
        "evaluations (tasks named safety*, or violation, over-refusal, hedging and attribution rates; otherwise "
        "it says none has been run), and its intended use and limitations. Nothing is compiled or loaded but "
        "the config.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by `gemini-jax train` (or reward, dpo, rl, "
                   "distill, convert, quantize)")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write the card (default: RUN/MODEL_CARD.md)")
    p.add_argument("--results", action="append", default=None, metavar="FILE",
                   help="a results file written by `gemini-jax eval --output FILE` ({task: {metric: value}}), "
                   "shown as its own tables; repeat the flag for more files. A run without results.json needs one")


def _add_safety(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("safety", help="safety classifiers from a policy of harm categories (docs/safety.md)",
                       description="Safety classifiers built from a policy file (docs/safety.md).")
    actions = p.add_subparsers(dest="safety_command", required=True, metavar="ACTION",
                               help="train: build the classifiers from a policy; data: safety-tuning data")
    t = actions.add_parser(
        "train",
        help="train per-category safety classifiers on a policy's requests and report them on held-out templates",
        description="Fills every request template of the policy from its slots (refuse and allow look-alikes), "
        "splits the requests by template (about 70/15/15: test requests come from templates never trained on), "
        "trains one logistic regression per category (hashed word and character n-grams) on train, chooses each "
        "category's threshold on validation, and prints per-category precision and recall on test, plain and "
        "under red-team wrappers (role play, ignore-instructions, base64, ROT13, two turns, research framing). "
        "Writes DIR/classifier.npz, DIR/classifier.json and DIR/report.json. Nothing is compiled; no JAX.",
        formatter_class=_HelpFormatter,
    )
    t.add_argument("--policy", default=None, metavar="FILE",
                   help="a policy YAML file (default: the shipped policy, src/gemini_jax/safety/default_policy.yaml)")
    t.add_argument("--out", required=True, metavar="DIR", help="the directory to write the classifier and report to")
    t.add_argument("--min-precision", type=unit_interval, default=None,
                   help="choose each category's threshold as the lowest whose validation precision reaches this (the "
                   "best validation F1 where none does) (default: the threshold with the best validation F1)")
    t.add_argument("--max-per-template", type=positive_int, default=40,
                   help="slot fillings per template, at most (a fixed sample where there are more)")
    d = actions.add_parser(
        "data",
        help="write safety-tuning data (refusals, allowed look-alikes, hedging, attribution) and a mixture file",
        description="Writes DIR/refusals.jsonl (the policy's train refuse requests, plain and red-team wrapped, "
        "answered with its refusal), DIR/allowed.jsonl (its train allow requests, answered with a short helpful "
        "reply), DIR/hedging.jsonl (the demo's train images asked about a shape they do not hold, answered 'There "
        "is no triangle in the image.'), DIR/attribution.jsonl (train passages and questions, answered from the "
        "passage) and DIR/mixture.yaml (those, once prepared, and a replay of the demo's own tasks). Nothing of "
        "validation or test is written. Prints the `data prepare` and `train` commands (docs/safety.md).",
        formatter_class=_HelpFormatter,
    )
    d.add_argument("--out", required=True, metavar="DIR", help="the directory to write the files to")
    d.add_argument("--policy", default=None, metavar="FILE",
                   help="a policy YAML file (default: the shipped policy, src/gemini_jax/safety/default_policy.yaml)")
    d.add_argument("--cache-dir", default=None, help="the demo corpus cache (as for train): its images and replay")
    d.add_argument("--max-per-template", type=positive_int, default=40,
                   help="slot fillings per template, at most (a fixed sample where there are more)")
    d.add_argument("--passages", type=positive_int, default=3000, help="attribution passages to write")
    d.add_argument("--no-replay", dest="replay", action="store_false",
                   help="a mixture of the safety data alone (default: it also replays the demo's prepared tasks, "
                   "prepared first if they are not yet)")
    d.add_argument("--init-from", default="runs/demo", metavar="RUN_DIR",
                   help="the run the printed commands prepare with and tune (default: %(default)s)")


# The commands that compile XLA programs: each takes --no-compile-cache.
COMPILING_COMMANDS = ("train", "distill", "reward", "dpo", "rl", "eval", "generate", "serve", "convert", "quantize")


def _add_compile_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-compile-cache", action="store_true",
                   help="compile every program afresh instead of loading those an earlier command compiled from "
                   "JAX's persistent compilation cache (default: on, in $GEMINI_JAX_CACHE/jax-compile or "
                   "~/.cache/gemini-jax/jax-compile, or $JAX_COMPILATION_CACHE_DIR if set; "
                   "GEMINI_JAX_NO_COMPILE_CACHE=1 also turns it off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-jax",
        description="Train, evaluate and run natively multimodal Gemini-style models in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_distill(sub)
    for kind in PREFERENCE_HELP:
        _add_preference(sub, kind)
    _add_rl(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_serve(sub)
    _add_presets(sub)
    _add_convert(sub)
    _add_quantize(sub)
    add_data_command(sub)
    _add_card(sub)
    _add_safety(sub)
    for name in COMPILING_COMMANDS:
        _add_compile_cache_flag(sub.choices[name])
    _add_compile_cache_flag(add_image_tokenizer_command(sub, _HelpFormatter))
    _add_compile_cache_flag(add_image_scorer_command(sub, _HelpFormatter))
    return parser
