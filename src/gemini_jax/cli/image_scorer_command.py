"""`gemini-jax image-scorer train --run RUN`: the image scorer (model/image_scorer.py) of a run that
draws, trained on the drawing corpus's real train requests into RUN/image_scorer/, for choosing the
best of several sampled pictures (`gemini-jax eval --samples K`, `gemini-jax generate --best-of K`),
after `gemini-jax train --task image_generation`. Defining the flags imports no JAX, so `--help`
answers at once."""

from __future__ import annotations

import argparse
import json

from gemini_jax.cli.types import positive_float, positive_int, seed


def add_parser(sub: argparse._SubParsersAction,
               formatter_class: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Adds `image-scorer` and its sub-command `train`; returns `train`'s parser."""
    p = sub.add_parser("image-scorer", help="the image scorer: how well a picture answers a drawing request "
                       "(docs/image-output.md)", description="Commands for the image scorer.")
    actions = p.add_subparsers(dest="image_scorer_command", required=True, metavar="ACTION",
                               help="train: train one for a run that draws")
    t = actions.add_parser(
        "train", help="train a run's image scorer on the drawing corpus's real train requests",
        description="Trains the image scorer (a convolutional picture encoder and hashed words, scored "
        "together) on the drawing corpus's real train requests and their target pictures, never on a generated "
        "picture, and writes it to RUN/image_scorer/ with its report (how often a right picture is ranked "
        "first among a batch's candidates on validation requests). `gemini-jax eval --samples K` and `gemini-jax "
        "generate --best-of K` then keep, of K pictures sampled for each request, the one it rates highest.",
        formatter_class=formatter_class)
    t.add_argument("--run", required=True, metavar="RUN", help="a run that draws (`gemini-jax train --task "
                   "image_generation`); its image_scorer/ is replaced")
    t.add_argument("--steps", type=positive_int, default=1000, help="training steps")
    t.add_argument("--batch-size", type=positive_int, default=64, help="requests per step (each scores 3x as many "
                   "candidate pictures)")
    t.add_argument("--learning-rate", type=positive_float, default=3e-3,
                   help="peak AdamW learning rate, after a linear warmup, before a cosine decay")
    t.add_argument("--seed", type=seed, default=0, help="seed for initialisation and the order of the requests")
    t.add_argument("--cache-dir", default=None,
                   help="where the drawing corpus is (built there when missing; default: $GEMINI_JAX_CACHE, else "
                   "~/.cache/gemini-jax)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return t


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from gemini_jax.checkpoint import read_config
    from gemini_jax.config import ConfigError
    from gemini_jax.data.corpora.drawings import DrawingCorpus
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR
    from gemini_jax.train.image_scorer import ScorerSettings, train_and_save

    if read_config(args.run).image_output is None:
        raise ConfigError(f"{args.run} writes text only (config.image_output is None): an image scorer chooses among "
                          "pictures a run draws")
    settings = ScorerSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              seed=args.seed, progress=not args.no_progress)
    out = Path(args.run) / IMAGE_SCORER_DIR
    report = train_and_save(DrawingCorpus.build(args.cache_dir), out, settings=settings)
    print(json.dumps(report["validation"], indent=2))
    print(f"wrote {out} ({report['train_seconds']:.0f} s)")
