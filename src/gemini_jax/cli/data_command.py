"""`gemini-jax data prepare SOURCES... --out DATA_DIR`: the user's own data, checked, filtered,
deduplicated and sharded for `gemini-jax train --data`. Every flag is a field of
`PrepareOptions`; nothing here imports JAX."""

from __future__ import annotations

import argparse
import dataclasses

from gemini_jax.cli.types import non_negative_int, positive_int, unit_interval


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="check, filter, deduplicate and shard JSONL or text sources into a prepared data directory",
        description="Reads JSONL files (one example a line, the Gemini `contents` shape, media paths relative to "
        "the file), text files (one document each) and folders (read recursively), and writes DATA_DIR: "
        "ArrayRecord shards split by a hash of each record, report.json (what every stage removed and why) and "
        "manifest.json (written last). Media are embedded: DATA_DIR is self-contained. See docs/data.md.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="a .jsonl file, a text file or a folder")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the prepared directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DATA_DIR when it already holds prepared data")
    split = p.add_argument_group("splits and shards")
    split.add_argument("--validation-fraction", type=unit_interval, default=0.05,
                       help="share of records in the validation split (default: %(default)s)")
    split.add_argument("--test-fraction", type=unit_interval, default=0.0,
                       help="share of records in the test split (default: %(default)s: no test split)")
    split.add_argument("--records-per-shard", type=positive_int, default=10_000,
                       help="records per ArrayRecord file (default: %(default)s)")
    stages = p.add_argument_group("stages (all on by default)")
    stages.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="keep text as written (default: NFC, unified whitespace, control characters dropped)")
    stages.add_argument("--no-quality", dest="quality", action="store_false",
                        help="skip the heuristic (Gopher/C4) quality rules on text documents")
    stages.add_argument("--classifier-good", nargs="+", default=(), metavar="SOURCE",
                        help="examples of text to keep: trains a quality classifier (needs --classifier-bad)")
    stages.add_argument("--classifier-bad", nargs="+", default=(), metavar="SOURCE",
                        help="examples of text to drop, for the quality classifier")
    stages.add_argument("--classifier-threshold", type=unit_interval, default=0.5,
                        help="records the classifier scores below this are removed (default: %(default)s)")
    stages.add_argument("--no-safety", dest="safety", action="store_false", help="skip the word-list safety filter")
    stages.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicates")
    stages.add_argument("--no-near-dedup", dest="near_dedup", action="store_false",
                        help="keep near duplicates (MinHash over words; text-only records)")
    stages.add_argument("--near-dedup-threshold", type=unit_interval, default=0.6,
                        help="estimated Jaccard similarity from which records are near duplicates "
                        "(default: %(default)s)")
    stages.add_argument("--no-decontaminate", dest="decontaminate", action="store_false",
                        help="keep records that share n-grams with evaluation sets")
    stages.add_argument("--decontaminate-n", type=positive_int, default=13,
                        help="the n of the word n-grams compared with evaluation sets (default: %(default)s)")
    stages.add_argument("--eval-jsonl", nargs="+", default=(), metavar="FILE",
                        help="more evaluation sets to decontaminate against (JSONL in the contents shape)")
    stages.add_argument("--eval-data-dir", default=None, metavar="DIR",
                        help="the benchmarks folder `gemini-jax eval --data-dir` reads, to decontaminate against")
    tokenizer = p.add_argument_group("tokenizer").add_mutually_exclusive_group()
    tokenizer.add_argument("--vocab-size", type=positive_int, default=None,
                           help="train a SentencePiece tokenizer of this size on a sample of the train split")
    tokenizer.add_argument("--tokenizer", default=None, metavar="RUN_DIR|FILE",
                           help="copy this tokenizer instead: a run directory's or a .model file")
    p.add_argument("--case-markers", action="store_true",
                   help="with --vocab-size: the tokenizer reads text lower-cased with a <cap> piece before each "
                   "capital, so 'What' and 'what' share their pieces (exactly reversible; docs/robustness.md)")
    p.add_argument("--tokenizer-sample-bytes", type=positive_int, default=100 << 20,
                   help="at most this much train text for --vocab-size (default: %(default)s)")
    p.add_argument("--max-bad-records", type=non_negative_int, default=0,
                   help="bad records to skip and count before stopping with an error (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes for checking and filtering records (default: %(default)s); with --executor "
                   "local: tasks run at once; with --executor slurm: processes (and CPUs) of each task")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and summary table")
    cluster = p.add_argument_group(
        "as datatrove tasks, here or on Slurm (pip install \"gemini-jax[distributed]\")",
        "The per-record work runs as --tasks map tasks, each on its share of the records; one reduce task then "
        "deduplicates, shards and writes DATA_DIR, the same bytes as without --executor. Run the same command "
        "again after a failure: finished map tasks are kept. See docs/data.md, \"On a cluster\".")
    cluster.add_argument("--executor", choices=("local", "slurm"), default=None,
                         help="local: run the tasks on this machine, --workers at a time; slurm: submit them as "
                         "sbatch job arrays and return (DATA_DIR appears when the reduce job ends)")
    cluster.add_argument("--tasks", type=positive_int, default=1, metavar="N",
                         help="map tasks, each processing every N-th chunk of 256 records (default: %(default)s)")
    cluster.add_argument("--logging-dir", default=None, metavar="DIR",
                         help="datatrove's logs, stats and completion markers (default: DATA_DIR.logs; on a "
                         "shared file system for slurm, like DATA_DIR)")
    cluster.add_argument("--slurm-partition", default=None, metavar="NAME", help="the partition to submit to")
    cluster.add_argument("--slurm-time", default=None, metavar="TIME",
                         help="time limit of each task, as sbatch takes it (e.g. 4:00:00)")
    cluster.add_argument("--slurm-mem-per-cpu-gb", type=positive_int, default=2, metavar="GB",
                         help="memory per CPU (each task has --workers CPUs; default: %(default)s)")
    cluster.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="KEY[=VALUE]",
                         help="one more #SBATCH --KEY=VALUE line, e.g. account=myproject or qos=high (repeatable)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds `data` and its sub-command `prepare`."""
    p = sub.add_parser("data", help="prepare your own data for training (see docs/data.md)",
                       description="Commands for your own data.")
    _add_prepare(p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND",
                                    help="prepare: sources to a prepared data directory"))


def options_from_args(args: argparse.Namespace):
    from gemini_jax.data.prepare.pipeline import PrepareOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}
    for name in ("classifier_good", "classifier_bad", "eval_jsonl", "sbatch_args"):
        values[name] = tuple(values[name])
    return PrepareOptions(**values)


def run(args: argparse.Namespace) -> None:
    from gemini_jax.data.prepare.pipeline import prepare

    prepare(args.sources, args.out, options_from_args(args), progress=not args.no_progress)
