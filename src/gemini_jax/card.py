"""A Markdown model card from what a run directory holds (`gemini-jax card RUN`).

    path = write_card("runs/demo")                                  # runs/demo/MODEL_CARD.md
    text = model_card("runs/demo", extra_results=["runs/demo-eval.json"])

Sections: Model (config.json, the parameter count, quantization.json), Data (the recipe's
corpus or mixture file, and each prepared directory's report.json where it can be found),
Training (results.json's recipe and phase timings, metrics.jsonl's last logged step),
Evaluation (one table per task of results.json and of each extra results file), Safety
evaluations, Intended use and Limitations. Nothing is estimated: a fact the run does not
hold is left out or said to be unknown.

Evaluation tables have two columns, metric | value. A value is written as JSON: an integer as
an integer, a float as the shortest decimal that reads back as the same double (Python's
repr; NaN and infinities as JSON's NaN and Infinity), anything else as its JSON text; a `|`
in a cell is escaped as `\\|`. So `json.loads` of a cell gives back the results file's value
exactly, and the card's tables can be checked against the file they came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gemini_jax import checkpoint
from gemini_jax.cache_root import cache_root
from gemini_jax.config import PRESETS, ModelConfig, config_to_dict

CARD_FILE = "MODEL_CARD.md"
RESULTS_FILE = "results.json"  # recipes/runner.py's: the final evaluation, the recipe and its timings
METRICS_FILE = "metrics.jsonl"
DISTILLATION_FILE = "distillation.json"  # recipes/distill.py's: the teacher
REPORT_FILE = "report.json"  # data/prepare/pipeline.py's: what each stage removed
RUN_KEYS = ("task", "recipe", "run")  # results.json's keys that are not evaluation tasks
SAFETY_METRICS = ("violation_rate", "over_refusal_rate", "hedge_rate", "supported_rate")
SAFETY_TASK_PREFIXES = ("safety", "hedging", "attribution")  # the registry's (evals/tasks/safety.py), and their _validation twins
NO_SAFETY = "No safety evaluation has been run on this model."
DEMO_TASKS = ("demo",)  # recipes trained on the embedded synthetic demo corpus (distill's student too)
LONG_CONTEXT_TASKS = ("kv_retrieval", "long_text")


class CardError(checkpoint.CheckpointError):
    """A run or results file a model card cannot be written from."""


def model_card(run_dir: str | os.PathLike, *, extra_results: Iterable[str | os.PathLike] = ()) -> str:
    """The run's model card as Markdown. `extra_results`: results files of `gemini-jax eval
    --output` ({task: {metric: value}}), each shown as its own set of tables."""
    run_dir = Path(run_dir)
    config = checkpoint.read_config(run_dir)  # names the run and what is missing from it
    extra = [(Path(p), _task_results(_read_json(Path(p)), Path(p))) for p in extra_results]
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file() and not extra:
        raise CardError(
            f"{str(run_dir)!r} has no {RESULTS_FILE} (the final evaluation `gemini-jax train` writes): run "
            f"`gemini-jax eval --checkpoint {run_dir} --output eval.json` and pass it with `--results eval.json`")
    summary = _read_json(results_path) if results_path.is_file() else {}
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else {}
    task = summary.get("task")
    evaluations = ([(results_path, _task_results(summary, results_path))] if summary else []) + extra
    data = _data_facts(run_dir, task, recipe)
    sections = [
        f"# Model card: {run_dir.name}",
        f"Written by `gemini-jax card` from the run directory `{run_dir}`"
        + ("" if not extra else " and " + ", ".join(f"`{p}`" for p, _ in extra)) + ".",
        _model_section(run_dir, config, recipe),
        _data_section(data),
        _training_section(run_dir, config, task, recipe, summary.get("run")),
        _evaluation_section(evaluations),
        _safety_section(evaluations),
        _use_section(run_dir, task, recipe, summary.get("run"), data),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def write_card(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
               extra_results: Iterable[str | os.PathLike] = ()) -> Path:
    """Writes `model_card(run_dir)` to `out` (default RUN_DIR/MODEL_CARD.md), atomically; returns its path."""
    text = model_card(run_dir, extra_results=extra_results)
    path = Path(out) if out is not None else Path(run_dir) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def format_value(value: Any) -> str:
    """A table cell: the value as JSON text (see the module docstring), `|` escaped."""
    return _escape(json.dumps(value, sort_keys=True))


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


# -- Reading the run's files ---------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CardError(f"results file {str(path)!r} does not exist (write one with `gemini-jax eval --output FILE`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CardError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CardError(f"{path}: unreadable: {e}") from None


def _task_results(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} of a results file (results.json's recipe and timings left out)."""
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected a JSON object {{task: {{metric: value}}}}, got {type(data).__name__}")
    tasks = {}
    for name, metrics in data.items():
        if name in RUN_KEYS:
            continue
        if not isinstance(metrics, dict):
            raise CardError(f"{path}: {name}: expected {{metric: value}}, got {json.dumps(metrics)[:80]}")
        tasks[name] = metrics
    return tasks


def _latest_step(run_dir: Path) -> int | None:
    steps = [int(p.name) for p in (run_dir / checkpoint.CHECKPOINTS_DIR).iterdir() if p.name.isdigit() and p.is_dir()]
    return max(steps, default=None)


def _last_logged(run_dir: Path) -> dict[str, Any] | None:
    """metrics.jsonl's last training line (step, loss, ...), or None."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("kind") == "train":
            last = record
    return last


# -- Model ----------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _plain(config: ModelConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config_to_dict(config)))


def _preset_line(config: ModelConfig, recipe: Mapping[str, Any]) -> str:
    matching = [name for name, preset in PRESETS.items() if not checkpoint.model_differences(_plain(preset), config)]
    if matching:
        return f"preset `{matching[0]}` (config.json matches it)"
    named = recipe.get("preset") if recipe.get("init_from") is None else None
    if named in PRESETS:
        differences = checkpoint.model_differences(_plain(PRESETS[named]), config)
        return f"preset `{named}` with changes: {'; '.join(differences)}"
    if recipe.get("init_from"):
        return f"the model of the run it started from, `{recipe['init_from']}` (no preset matches)"
    return "a configuration of its own (no preset matches)"


def _model_section(run_dir: Path, config: ModelConfig, recipe: Mapping[str, Any]) -> str:
    from gemini_jax.model.gemini import count_params

    kv = "multi-query" if config.num_kv_heads == 1 else "grouped-query"
    lines = [
        f"- Model: {_preset_line(config, recipe)}",
        "- Architecture: decoder-only Transformer (the Gemma-1 layout: RMSNorm, GeGLU MLP, rotary positions, "
        "tied input and output embedding)",
        f"- Decoder: {_count(config.depth, 'layer')} of width {config.width}, MLP width {config.mlp_dim}",
        f"- Attention: {config.num_heads} query heads of dimension {config.head_dim}; "
        f"{config.num_kv_heads} KV head{'s' if config.num_kv_heads > 1 else ''} ({kv})",
        f"- Vocabulary: {config.vocab_size:,} tokens (SentencePiece, tokenizer.model)",
        f"- Context: {config.max_seq_len:,} tokens",
    ]
    vision, audio = config.vision, config.audio
    if vision is not None:
        block = {"vit": "ViT", "siglip": "SigLIP ViT"}.get(vision.block.value, vision.block.value)
        lines.append(f"- Vision encoder: {block}, {_count(vision.depth, 'layer')} of width {vision.width}, patches of "
                     f"{vision.patch_size} px (up to {vision.max_patches}), {vision.image_soft_tokens} soft tokens per "
                     f"image; video: {vision.num_frames} frames of {vision.frame_soft_tokens} soft tokens each")
    if audio is not None:
        lines.append(f"- Audio encoder: Conformer, {_count(audio.depth, 'layer')} of width {audio.width}, {audio.num_mels} mel "
                     f"bins at {audio.sample_rate:,} Hz, clips up to {audio.max_seconds:g} s")
    if vision is None and audio is None:
        lines.append("- Encoders: none (text only)")
    counts = count_params(config)
    parts = ", ".join(f"{name} {counts[name]:,}" for name in ("vision", "audio") if counts[name])
    lines.append(f"- Parameters: {counts['total']:,} (decoder with its embedding {counts['decoder']:,}"
                 + (f"; {parts}" if parts else "") + ")")
    quantization = checkpoint.read_quantization(run_dir)
    if quantization is not None:
        lines.append(f"- Weights: int{quantization['bits']}, one scale per {quantization['group_size']} inputs "
                     f"({checkpoint.QUANTIZATION_FILE})")
    else:
        lines.append(f"- Weights: float32 parameters, computing in {config.dtype.value}")
    step = _latest_step(run_dir)
    lines.append(f"- Checkpoint: step {step:,} (the latest)" if step is not None else "- Checkpoint: none finished")
    return "## Model\n\n" + "\n".join(lines)


# -- Data -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What the card knows of a run's data: its lines, and the modalities and languages trained on."""

    lines: list[str]
    modalities: tuple[str, ...] = ()
    languages: str | None = None  # None: not recorded


def _report_summary(name: str, directory: Path) -> tuple[str, tuple[str, ...]]:
    """One line on a prepared directory's report.json, and its manifest's modalities."""
    from gemini_jax.data.prepared import open_prepared
    from gemini_jax.data.records import DataError

    try:
        modalities = open_prepared(directory).modalities
    except DataError:
        modalities = ()
    path = directory / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        totals, stages, splits = report["totals"], report["stages"], report["splits"]
        removed = "; ".join(f"{stage} {s['records_removed']:,} of {s['records_in']:,}" for stage, s in stages.items())
        line = (f"  - `{name}` (`{directory}`): {totals['records_in']:,} records read, {totals['bad_records']:,} bad, "
                f"{totals['records_removed']:,} removed, {totals['records_kept']:,} kept ("
                + ", ".join(f"{split} {n:,}" for split, n in splits.items()) + "); removed by stage: "
                + (removed or "no filtering stage ran"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        line = f"  - `{name}` (`{directory}`): no readable {REPORT_FILE}"
    return line, tuple(modalities)


def _mixture_lines(mixture_path: str | Path, *, base: Path | None = None) -> tuple[list[str], tuple[str, ...]]:
    from gemini_jax.data.mixture_file import load_mixture
    from gemini_jax.data.records import DataError

    try:
        mixture = load_mixture(mixture_path, base=base)
    except DataError as e:
        return [f"- Mixture file `{mixture_path}` (it cannot be read now: {e})"], ()
    lines = [f"- Mixture file `{mixture_path}`: sources " + ", ".join(f"`{n}`" for n in mixture.sources)
             + f"; {_count(len(mixture.stages), 'stage')}",
             f"- Data preparation ({REPORT_FILE} of each prepared directory):"]
    modalities: list[str] = []
    seen: set[Path] = set()
    for name, source in mixture.sources.items():
        if source.path is None:
            lines.append(f"  - `{name}`: generated on the fly ({source.generate})")
            continue
        if source.path in seen:
            continue
        seen.add(source.path)
        line, found = _report_summary(name, source.path)
        lines.append(line)
        modalities += [m for m in found if m not in modalities]
    return lines, tuple(modalities)


def _demo_prepared_root(recipe: Mapping[str, Any]) -> Path | None:
    """The demo corpus's prepared directories for the recipe's corpus sizes, if they are in the cache."""
    from gemini_jax.data.corpora import demo, demo_prepared

    for manifest in sorted(cache_root(recipe.get("cache_dir")).glob(f"demo-v{demo.VERSION}*/{demo.MANIFEST}")):
        if ".partial" in manifest.parent.name:
            continue
        try:
            sizes = json.loads(manifest.read_text()).get("sizes")
        except (OSError, ValueError, AttributeError):
            continue
        root = manifest.parent / f"prepared-v{demo_prepared.VERSION}"
        if sizes == recipe.get("corpus") and root.is_dir():
            return root
    return None


def _data_facts(run_dir: Path, task: str | None, recipe: Mapping[str, Any]) -> DataFacts:
    if task is None:
        return DataFacts([f"- Not recorded: the run has no {RESULTS_FILE}, which names the recipe and its data "
                          "(a run imported by `gemini-jax convert` or a quantized copy holds none)"])
    if task in DEMO_TASKS:
        from gemini_jax.recipes.demo import demo_mixture

        corpus = recipe.get("corpus") or {}
        lines = ["- The embedded demo corpus, built offline: easy-VQA images and questions, spoken numbers "
                 "synthesized with eSpeak NG (transcription), short videos of moving shapes (questions), and the "
                 "Python standard library's source (language modelling)",
                 "- Corpus sizes: " + ", ".join(f"{k} {v if v is not None else 'all'}" for k, v in corpus.items())]
        if (run_dir / DISTILLATION_FILE).is_file():
            try:
                teacher = f"`{json.loads((run_dir / DISTILLATION_FILE).read_text())['teacher']}`"
            except (OSError, ValueError, KeyError, TypeError):
                teacher = f"named in {DISTILLATION_FILE} (unreadable)"
            lines.append(f"- Distilled from the teacher run {teacher}")
        root = _demo_prepared_root(recipe)
        if root is None:
            lines.append("- Data preparation reports: not found (the demo corpus is not in this machine's cache)")
            mixture_lines: list[str] = []
        else:
            mixture_lines, _ = _mixture_lines(recipe.get("mixture") or demo_mixture(), base=root)
        return DataFacts(lines + mixture_lines, modalities=("text", "image", "audio", "video"), languages="English")
    if task in LONG_CONTEXT_TASKS:
        what = ("synthetic key-value retrieval examples whose filler is Python standard-library source"
                if task == "kv_retrieval" else "long windows of the Python standard library's source")
        return DataFacts([f"- {what} (recipe `{task}`)"], modalities=("text",), languages="English and Python")
    lines = []
    if recipe.get("init_from"):
        lines.append(f"- Started from the run `{recipe['init_from']}`: its own data is described by its card")
    if task in ("reward", "dpo"):
        lines.append(f"- Preference pairs: `{recipe.get('data')}`")
    elif task == "rl":
        lines.append(f"- Prompts: `{recipe.get('data')}`; reward: `{recipe.get('reward')}`")
    if recipe.get("mixture"):
        mixture_lines, modalities = _mixture_lines(recipe["mixture"])
        return DataFacts(lines + mixture_lines, modalities=modalities)
    return DataFacts(lines or [f"- Recipe `{task}`: its data is not recorded in {RESULTS_FILE}"])


def _data_section(data: DataFacts) -> str:
    lines = list(data.lines)
    if data.modalities:
        lines.append(f"- Modalities trained on: {', '.join(data.modalities)}")
    lines.append(f"- Languages: {data.languages or 'not recorded by the data pipeline'}")
    return "## Data\n\n" + "\n".join(lines)


# -- Training -------------------------------------------------------------------------------------


def _training_section(run_dir: Path, config: ModelConfig, task: str | None, recipe: Mapping[str, Any],
                      run: Any) -> str:
    if task is None:
        return f"## Training\n\n- Not recorded (no {RESULTS_FILE})"
    train = recipe.get("train") or {}
    optimizer = train.get("optimizer") or {}
    lines = [f"- Recipe: `{task}`"]
    if train.get("steps") is not None:
        lines.append(f"- Steps: {train['steps']:,}")
    last = _last_logged(run_dir)
    if last is not None and "loss" in last:
        lines.append(f"- Last logged training loss ({METRICS_FILE}, step {last.get('step')}): {last['loss']:.4g}")
    if task == "rl":
        lines.append(f"- Batch: {recipe.get('prompts_per_step')} prompts x {recipe.get('group_size')} replies; "
                     f"KL coefficient {recipe.get('kl_coef')}")
    elif recipe.get("batch_size") is not None:
        lines.append(f"- Batch size: {recipe['batch_size']}" + (" pairs" if task in ("reward", "dpo") else ""))
    if task == "dpo":
        lines.append(f"- DPO beta: {recipe.get('beta')}")
    if optimizer:
        lines.append(f"- Optimizer: AdamW (b1 {optimizer.get('b1')}, b2 {optimizer.get('b2')}, weight decay "
                     f"{optimizer.get('weight_decay')}), gradient norm clipped at {optimizer.get('clip_norm')}")
        lines.append(f"- Learning rate: peak {optimizer.get('learning_rate')}, {optimizer.get('warmup_steps')} warmup "
                     f"steps, cosine decay to {optimizer.get('final_lr_fraction')} of the peak")
    if train.get("seed") is not None:
        lines.append(f"- Seed: {train['seed']}")
    lines.append(f"- Compute dtype: {config.dtype.value}")
    if isinstance(run, dict):
        phases = {k: v for k, v in run.items()
                  if k.endswith("_s") and not k.endswith("_per_s") and isinstance(v, (int, float))}
        if phases:
            lines.append(f"- Wall time: {sum(phases.values()):,.1f} s ("
                         + ", ".join(f"{k.removesuffix('_s')} {v:,.1f} s" for k, v in phases.items()) + ")")
        if isinstance(run.get("training_tokens_per_s"), (int, float)):
            lines.append(f"- Training throughput: {run['training_tokens_per_s']:,.0f} tokens/s")
        if isinstance(run.get("peak_memory_mb"), (int, float)):
            lines.append(f"- Peak host memory: {run['peak_memory_mb']:,.0f} MB")
        if isinstance(run.get("data_wait_percent"), (int, float)):
            lines.append(f"- Time waiting for data: {run['data_wait_percent']:.1f}%")
    details = json.dumps(recipe, indent=2, sort_keys=True)
    lines.append(f"\n<details><summary>The recipe as {RESULTS_FILE} records it</summary>\n\n```json\n{details}\n```\n"
                 "</details>")
    return "## Training\n\n" + "\n".join(lines)


# -- Evaluation and safety ------------------------------------------------------------------------


def _table(metrics: Mapping[str, Any]) -> str:
    rows = [f"| {_escape(str(name))} | {format_value(value)} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def _is_safety_task(name: str) -> bool:
    return name.startswith(SAFETY_TASK_PREFIXES)


def _evaluation_section(evaluations: list[tuple[Path, dict[str, dict[str, Any]]]]) -> str:
    parts = ["## Evaluation",
             "Values as the results file holds them (JSON numbers: every digit kept, so each table reads back "
             "to its file exactly). Safety tasks are in the next section."]
    for path, tasks in evaluations:
        parts.append(f"### `{path.name}`" + (" (the run's final evaluation)" if path.name == RESULTS_FILE else ""))
        shown = {name: metrics for name, metrics in tasks.items() if not _is_safety_task(name)}
        if not shown:
            parts.append("No tasks besides safety ones." if tasks else "No evaluation tasks.")
        parts += [f"#### {name}\n\n{_table(metrics)}" for name, metrics in shown.items()]
    return "\n\n".join(parts)


def _safety_section(evaluations: list[tuple[Path, dict[str, dict[str, Any]]]]) -> str:
    parts = ["## Safety evaluations"]
    for path, tasks in evaluations:
        for name, metrics in tasks.items():
            if _is_safety_task(name):
                parts.append(f"#### {name} (`{path.name}`)\n\n{_table(metrics)}")
            elif any(m in metrics for m in SAFETY_METRICS):
                rates = {m: metrics[m] for m in SAFETY_METRICS if m in metrics}
                parts.append(f"#### {name} (`{path.name}`, its safety metrics)\n\n{_table(rates)}")
    if len(parts) == 1:
        parts.append(NO_SAFETY)
    return "\n\n".join(parts)


# -- Intended use and limitations -----------------------------------------------------------------


def _use_section(run_dir: Path, task: str | None, recipe: Mapping[str, Any], run: Any, data: DataFacts) -> str:
    minutes = (run or {}).get("training_s") if isinstance(run, dict) else None
    trained = f" ({minutes / 60:.0f} minutes of training in this run)" if isinstance(minutes, (int, float)) else ""
    if task in DEMO_TASKS or task in LONG_CONTEXT_TASKS:
        what = ("the embedded synthetic demo tasks (shape and color questions, spoken numbers, moving shapes, "
                "standard-library code)" if task in DEMO_TASKS else f"the synthetic `{task}` task")
        use = (f"A demonstration model: small enough to train in minutes on 2 CPU cores{trained}, trained only on "
               f"{what}. It shows that the code works end to end. It is not for any real use.")
        limits = ["- It knows only its synthetic tasks: on any other input its output is meaningless.",
                  "- It has had no safety training and no safety evaluation beyond what the section above shows.",
                  "- Its scores are on held-out examples of the same synthetic tasks, not on any benchmark."]
    else:
        use = ("A model trained with gemini-jax on the data described above, for research and for the uses that "
               "data and the evaluations above support. Evaluate it on your own use, including for safety, "
               "before deploying it.")
        limits = [f"- Trained on: {', '.join(data.modalities) if data.modalities else 'modalities not recorded'}; "
                  f"languages: {data.languages or 'not recorded'}. Other inputs are outside what it learned.",
                  "- Its scores hold for the evaluation sets above only.",
                  "- It may produce wrong, biased or unsafe output; safety evaluations are as shown above."]
        if recipe.get("init_from"):
            limits.append(f"- It inherits the limitations of `{recipe['init_from']}`, which it started from.")
    return f"## Intended use\n\n{use}\n\n## Limitations\n\n" + "\n".join(limits)
