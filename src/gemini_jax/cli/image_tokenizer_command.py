"""`gemini-jax image-tokenizer train --out DIR`: the image tokenizer (model/image_tokenizer.py)
trained on the demo's easy-VQA images, with its held-out report. Defining the flags imports no
JAX, so `--help` answers at once."""

from __future__ import annotations

import argparse
import json

from gemini_jax.cli.types import int_list, non_negative_float, positive_float, positive_int, seed


def fsq_levels(text: str) -> tuple[int, ...]:
    """FSQ levels separated by commas, each an integer >= 3, e.g. 8,5,5,5."""
    return int_list(text, least=3, what="integers >= 3", example="8,5,5,5")


def widths(text: str) -> tuple[int, ...]:
    """Channel counts separated by commas, e.g. 32,64,128."""
    return int_list(text, least=1, what="positive channel counts", example="32,64,128")


def power_of_two(text: str) -> int:
    value = positive_int(text)
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two >= 2 (2, 4, 8, 16), got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction,
               formatter_class: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Adds `image-tokenizer` and its sub-command `train`; returns `train`'s parser."""
    p = sub.add_parser("image-tokenizer", help="the image tokenizer: images to discrete codes and back "
                       "(docs/image-output.md)", description="Commands for the image tokenizer.")
    actions = p.add_subparsers(dest="image_tokenizer_command", required=True, metavar="ACTION",
                               help="train: train one on the easy-VQA images and report it on held-out images")
    t = actions.add_parser(
        "train",
        help="train an image tokenizer on the demo's easy-VQA images and report PSNR and codebook usage",
        description="Trains a convolutional autoencoder with a finite-scalar-quantization bottleneck on the "
        "easy-VQA images (64x64; split train/validation/test by a hash of each file's path), then writes DIR: "
        "image_tokenizer.json (config, codebook_size, codes_per_image) and image_tokenizer.safetensors (the "
        "weights), metrics.jsonl, reconstructions.png (test images above their reconstructions) and "
        "report.json (PSNR and codebook usage on validation and test). An image becomes (64/FACTOR)^2 codes, "
        "each one of prod(LEVELS).",
        formatter_class=formatter_class,
    )
    t.add_argument("--out", required=True, metavar="DIR", help="the directory to write the tokenizer and report to")
    t.add_argument("--steps", type=positive_int, default=1000, help="training steps")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    t.add_argument("--learning-rate", type=positive_float, default=2e-3,
                   help="peak AdamW learning rate, after a linear warmup, before a cosine decay")
    t.add_argument("--seed", type=seed, default=0, help="seed for initialisation and the order of the images")
    t.add_argument("--edge-weight", type=non_negative_float, default=0.0,
                   help="weight of the error in the differences between neighbouring pixels, added to the pixels' "
                   "own: keeps small shapes' outlines sharp (0: pixels alone; measured in docs/image-output.md)")
    t.add_argument("--factor", type=power_of_two, default=8,
                   help="pixels per code along each side: 8 gives 8x8 = 64 codes for a 64x64 image, 4 gives 256")
    t.add_argument("--levels", type=fsq_levels, default=(8, 5, 5, 5), metavar="L1,L2,...",
                   help="FSQ levels, one per latent channel; the codebook holds their product (default: 8,5,5,5: "
                   "1,000 codes)")
    t.add_argument("--widths", type=widths, default=None, metavar="W1,W2,...",
                   help="channels of each encoder stage, one per halving (log2 FACTOR of them), full resolution "
                   "first (default: doubling from 32, e.g. 32,64,128 for factor 8)")
    t.add_argument("--limit", type=positive_int, default=None,
                   help="use only the first this many images (sorted by path) before splitting: quick trials")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return t


def run(args: argparse.Namespace) -> None:
    from gemini_jax.model.image_tokenizer import ImageTokenizerConfig
    from gemini_jax.train.image_tokenizer import REPORT_FILE, TrainSettings, train_and_report

    stages = args.factor.bit_length() - 1
    config = ImageTokenizerConfig(factor=args.factor, levels=args.levels,
                                  widths=args.widths or tuple(32 << i for i in range(stages)))
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             seed=args.seed, edge_weight=args.edge_weight, progress=not args.no_progress)
    report = train_and_report(args.out, config=config, settings=settings, limit=args.limit)
    test = report["test"]
    print(json.dumps({"test": test, "train_seconds": report["train_seconds"]}, indent=2))
    print(f"test PSNR {test['psnr_db']:.2f} dB, codebook usage {test['codebook_usage']:.1%} of "
          f"{test['codebook_size']} codes, {test['codes_per_image']} codes per image; wrote {args.out}/{REPORT_FILE}")
