"""One short handler per command: the parsed flags in, one library call out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

# Flags that set a recipe's own field of the same name; a recipe without that field refuses the flag.
RECIPE_FLAGS = {"seq_len": "--seq-len", "cache_dir": "--cache-dir", "batch_size": "--batch-size", "dtype": "--dtype",
                "eval_samples": "--eval-samples"}


def _write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def _mesh(args: argparse.Namespace):
    from gemini_jax.sharding import MeshShape

    return None if args.mesh is None else MeshShape.parse(args.mesh)


def recipe_from_flags(recipe_class: type, args: argparse.Namespace, **fields: Any) -> Any:
    """The recipe with the flags' overrides: its own fields, its TrainConfig's and its optimizer's."""
    from gemini_jax.config import ConfigError

    recipe = recipe_class(**fields)
    names = {f.name for f in dataclasses.fields(recipe)}
    changes = {}
    for dest, flag in RECIPE_FLAGS.items():
        value = getattr(args, dest, None)  # distill has no --seq-len or --dtype
        if value is not None and dest not in names:
            raise ConfigError(f"{flag} does nothing for --task {recipe.name} (its recipe has no {dest}): drop it")
        if value is not None:
            changes[dest] = value
    if args.eval_limit is not None:
        changes[recipe.eval_limit_field] = args.eval_limit
    if (args.mesh is not None or args.num_processes) and not recipe.multi_device:
        raise ConfigError(f"--task {recipe.name} trains on one device: drop --mesh and the multi-host flags")
    train = recipe.train
    optimizer = dataclasses.replace(
        train.optimizer, loss_spike_factor=args.loss_spike_factor,
        learning_rate=train.optimizer.learning_rate if args.learning_rate is None else args.learning_rate)
    train = dataclasses.replace(
        train, optimizer=optimizer, steps=args.steps or train.steps, seed=args.seed,
        eval_every=getattr(args, "eval_every", 0), progress=not args.no_progress, mesh=_mesh(args),
        sdc_check_every=args.sdc_check_every, replica_every=args.replica_every)
    return dataclasses.replace(recipe, train=train, evaluate_at_end=not args.no_eval, **changes)


def _start_backend(args: argparse.Namespace, recipe: Any) -> None:
    from gemini_jax.recipes.runner import start_backend

    start_backend(recipe.train, coordinator=args.coordinator, num_processes=args.num_processes,
                  process_id=args.process_id)


def _lora(args: argparse.Namespace) -> Any:
    """The LoraConfig that --lora-rank, --lora-alpha and --lora-targets set, or None without --lora-rank."""
    from gemini_jax.config import ConfigError
    from gemini_jax.model.lora import TARGETS, LoraConfig

    if getattr(args, "lora_rank", None) is None:  # reward has no LoRA flags
        if getattr(args, "lora_alpha", None) is not None or getattr(args, "lora_targets", None) is not None:
            raise ConfigError("--lora-alpha and --lora-targets set up LoRA adapters: give --lora-rank R too")
        return None
    if args.init_from is None:
        raise ConfigError("--lora-rank adapts a trained model: give --data MIXTURE --init-from RUN_DIR")
    alpha = 2.0 * args.lora_rank if args.lora_alpha is None else args.lora_alpha
    return LoraConfig(rank=args.lora_rank, alpha=alpha, targets=args.lora_targets or tuple(TARGETS))


def train(args: argparse.Namespace) -> None:
    from gemini_jax.config import ConfigError
    from gemini_jax.recipes import RECIPES, train_and_evaluate
    from gemini_jax.recipes.custom import DataRecipe, train_on_data

    fields = {"run_dir": args.run_dir} | ({} if args.preset is None else {"preset": args.preset})
    lora = _lora(args)
    if args.data is None:
        if args.init_from is not None:
            raise ConfigError("--init-from needs --data MIXTURE (the demo and long-context recipes start afresh)")
        if args.image_tokenizer is not None:
            if args.task != "image_generation":
                raise ConfigError("--image-tokenizer is for --task image_generation: drop it")
            fields["image_tokenizer"] = args.image_tokenizer
        recipe = recipe_from_flags(RECIPES[args.task or "demo"], args, **fields)
        _start_backend(args, recipe)
        _write_json(args.output, train_and_evaluate(recipe))
        return
    if args.task is not None:
        raise ConfigError(f"--data trains on your mixture, --task {args.task} on a built-in one: give one of them")
    if args.init_from is not None and args.preset is not None:
        raise ConfigError("--init-from keeps its run's model: drop --preset")
    recipe = recipe_from_flags(DataRecipe, args, mixture=args.data, init_from=args.init_from, lora=lora, **fields)
    _start_backend(args, recipe)
    _write_json(args.output, train_on_data(recipe))


def distill(args: argparse.Namespace) -> None:
    from gemini_jax.recipes import DemoRecipe, distill_and_evaluate
    from gemini_jax.train.distill import DistillConfig

    student = recipe_from_flags(DemoRecipe, args, run_dir=args.run_dir, preset=args.student_preset)
    _start_backend(args, student)
    results = distill_and_evaluate(student, teacher=args.teacher,
                                   config=DistillConfig(temperature=args.temperature, alpha=args.alpha))
    _write_json(args.output, results)


def preference(args: argparse.Namespace) -> None:
    from gemini_jax.recipes.preference import PreferenceRecipe, train_on_preferences

    recipe = recipe_from_flags(PreferenceRecipe, args, kind=args.command, data=args.data, init_from=args.init_from,
                               run_dir=args.run_dir, beta=getattr(args, "beta", 0.1),
                               likelihood=getattr(args, "likelihood", False),
                               validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                               max_bad_records=args.max_bad_records, lora=_lora(args))
    _start_backend(args, recipe)
    _write_json(args.output, train_on_preferences(recipe))


def rl(args: argparse.Namespace) -> None:
    from gemini_jax.recipes.rl import RLRecipe, train_with_rl

    recipe = recipe_from_flags(RLRecipe, args, data=args.data, init_from=args.init_from, reward=args.reward,
                               run_dir=args.run_dir, prompts_per_step=args.prompts_per_step,
                               group_size=args.group_size, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, kl_coef=args.kl_coef, advantage=args.advantage,
                               validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                               max_bad_records=args.max_bad_records, lora=_lora(args))
    _start_backend(args, recipe)
    _write_json(args.output, train_with_rl(recipe))


def evaluate(args: argparse.Namespace) -> None:
    from gemini_jax.evals import benchmark
    from gemini_jax.evals.registry import (
        DEFAULT_TASKS,
        EvalOptions,
        evaluate_run,
        format_results,
        refuse_unused_options,
        resolve,
    )

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(DEFAULT_TASKS)
    options = EvalOptions(limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir,
                          cache_dir=args.cache_dir, shots=args.shots, samples=args.samples,
                          temperature=args.temperature, seed=args.seed, guidance=args.guidance, top_k=args.top_k,
                          top_p=args.top_p, protocol=args.protocol, lengths=args.lengths, plot=args.plot,
                          records=args.records, progress=not args.no_progress)
    refuse_unused_options(tasks, options)
    # Before the checkpoint loads: a protocol or sampling flag that would do nothing for a chosen benchmark.
    benchmark.check_settings([t.task for t in resolve(tasks) if isinstance(t, benchmark.Benchmark)],
                             benchmark.settings(options))
    results = evaluate_run(args.checkpoint, tasks, options, step=args.step)
    print(format_results(results))
    _write_json(args.output, results)


def _safety_flags(args: argparse.Namespace):
    """(SafetyFilter or None, settings) from --safety and --safety-setting, checked before any model loads."""
    from gemini_jax.config import ConfigError
    from gemini_jax.safety.filter import SafetyFilter, SettingsError, parse_settings

    if args.safety is None:
        if args.safety_setting:
            raise ConfigError("--safety-setting needs --safety DIR (a classifier from `gemini-jax safety train`)")
        return None, None
    try:
        check = SafetyFilter.load(args.safety)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--safety {args.safety}: {e}") from None
    settings = {}
    for item in args.safety_setting:
        category, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--safety-setting {item!r}: expected CATEGORY=THRESHOLD (a number in [0, 1] or 'off')")
        try:
            settings[category] = float(value)
        except ValueError:
            settings[category] = value  # "off", or a mistake parse_settings names
    try:
        return check, parse_settings(settings, check.categories, where="--safety-setting")
    except SettingsError as e:
        raise ConfigError(str(e)) from None


def generate(args: argparse.Namespace) -> None:
    from gemini_jax import api
    from gemini_jax.safety.filter import SafetyBlocked

    check, settings = _safety_flags(args)
    out = None
    if args.save_images is not None:
        from gemini_jax.config import ConfigError
        from gemini_jax.sample.image_output import ImageWriter, check_output_dir

        try:
            out = check_output_dir(args.save_images)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    run = api.load(args.checkpoint, step=args.step)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, safety=check, safety_settings=settings, guidance=args.guidance,
                   best_of=args.best_of)
    prompt = args.prompt
    if args.edit is None:
        options.update(images=args.image, videos=args.video, audios=args.audio)
    else:
        prompt = _edit_prompt(run, args)
    try:
        if out is None:
            print(api.generate(run, prompt, **options))
        else:
            print(ImageWriter.save(api.generate_parts(run, prompt, **options), out, stem="reply"))
    except SafetyBlocked as e:
        print(e)


def _edit_prompt(run, args: argparse.Namespace):
    """--edit PICTURE: the conversation that asks a run which writes images to change a picture."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.config import ConfigError
    from gemini_jax.sample.image_output import edit_request, unconditional_prompt

    if run.config.image_output is None:
        raise ConfigError(f"--edit: {args.checkpoint} writes text only; editing needs a run that writes images "
                          "(`gemini-jax train --task image_generation`)")
    if args.image or args.video or args.audio:
        raise ConfigError("--edit takes the picture to change; --image, --video and --audio do not go with it")
    if not Path(args.edit).is_file():
        raise ConfigError(f"--edit {args.edit}: no such file")
    try:
        first = unconditional_prompt(args.checkpoint)
    except CheckpointError as e:
        raise ConfigError(f"--edit: {e}") from None
    return edit_request(args.edit, args.prompt, first_request=first)


def serve(args: argparse.Namespace) -> None:
    from gemini_jax.sample.server import serve as serve_run  # needs no training code

    serve_run(args.checkpoint, host=args.host, port=args.port, slots=args.slots, max_queue=args.max_queue,
              max_request_bytes=args.max_request_bytes, max_len=args.max_len, step=args.step,
              max_image_pixels=args.max_image_pixels, media_workers=args.media_workers,
              api_key=args.api_key or os.environ.get("GEMINI_JAX_API_KEY"), safety=args.safety)


def presets(args: argparse.Namespace) -> None:
    from gemini_jax import family
    from gemini_jax.config import get_preset

    for name in args.names:
        get_preset(name)  # an unknown name is a ConfigError that lists the presets
    print(family.main(args.names or None, output_format=args.format))


def convert(args: argparse.Namespace) -> None:
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


def quantize(args: argparse.Namespace) -> None:
    from gemini_jax.sample.quantize import quantize_run

    report = quantize_run(args.checkpoint, args.out, group_size=args.group_size, bits=args.bits, step=args.step,
                          calibrate=args.calibrate)
    print(json.dumps(report, indent=2))


def data(args: argparse.Namespace) -> None:
    from gemini_jax.cli.data_command import run

    run(args)


def card(args: argparse.Namespace) -> None:
    from gemini_jax.card import write_card

    print(write_card(args.run, args.out, extra_results=args.results or ()))


def safety(args: argparse.Namespace) -> None:
    if args.safety_command == "data":
        return safety_data(args)
    from gemini_jax.safety.evaluate import format_table
    from gemini_jax.safety.policy import load_policy
    from gemini_jax.safety.train import REPORT_FILE, train_and_report

    report = train_and_report(args.out, policy=load_policy(args.policy), min_precision=args.min_precision,
                              max_per_template=args.max_per_template)
    print(format_table(report["results"]))
    print(f"thresholds (chosen on validation): {json.dumps(report['thresholds'])}")
    print(f"wrote {Path(args.out, REPORT_FILE)}")


def safety_data(args: argparse.Namespace) -> None:
    from gemini_jax.data.corpora.demo import DemoCorpus
    from gemini_jax.data.corpora.demo_prepared import prepare_demo_sources
    from gemini_jax.safety.policy import load_policy
    from gemini_jax.safety.tuning_data import run_lengths, write_tuning_data

    policy = load_policy(args.policy)  # a bad policy fails before the corpus is built
    length = run_lengths(args.init_from) if Path(args.init_from, "config.json").is_file() else None
    corpus = DemoCorpus.build(args.cache_dir)
    replay = prepare_demo_sources(corpus) if args.replay else None
    files = write_tuning_data(args.out, policy=policy, corpus=corpus, replay=replay,
                              max_per_template=args.max_per_template, train_passages=args.passages, length=length)
    for name, count in files.counts.items():
        dropped = files.too_long[name]
        print(f"wrote {files.out / (name + '.jsonl')}: {count:,} examples"
              + (f" ({dropped:,} longer than {args.init_from}'s context left out)" if dropped else ""))
    if length is None:
        print(f"note: {args.init_from} is not a run yet, so no example was checked against its context")
    print(f"wrote {files.mixture}" + (f" (replaying {replay})" if replay else " (no replay)"))
    print(f"next:\n  {files.prepare_command(args.init_from)}\n  {files.train_command(args.init_from)}")


def image_tokenizer(args: argparse.Namespace) -> None:
    from gemini_jax.cli.image_tokenizer_command import run

    run(args)


def image_scorer(args: argparse.Namespace) -> None:
    from gemini_jax.cli.image_scorer_command import run

    run(args)


HANDLERS = {"train": train, "distill": distill, "reward": preference, "dpo": preference, "rl": rl, "eval": evaluate, "generate": generate, "serve": serve,
            "presets": presets, "convert": convert, "quantize": quantize, "data": data,
            "card": card, "safety": safety, "image-tokenizer": image_tokenizer,
            "image-scorer": image_scorer}
