"""int4 against float on the demo's test sets, over several seeds' runs (prints JSON).

    python benchmarks/int4_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2 --out runs/int4-seeds

For each float run (a `gemini-jax train --seed S` run) the script writes its quantized copy,

    gemini-jax quantize --checkpoint RUN --out OUT/<run>-int4-g32 --group-size 32

and evaluates both on the demo's test sets as `gemini-jax eval --checkpoint ...` does (vqa, asr,
video, text). The JSON gives per seed and as mean +- sample std (ddof=1): float, int4, and int4
minus float for every metric. `--calibrate N` rounds by GPTQ on N demo training examples
(`gemini-jax quantize --calibrate N`) instead of to nearest; `--split validation` scores the
validation sets instead, to choose such settings without looking at test. Quantized runs and
evaluations are kept under --out, so a rerun (or one with other settings) evaluates only what
is missing; --limit evaluates the first examples of each set only (a quick look, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import seed_stats

from gemini_jax.evals.registry import DEFAULT_TASKS
from gemini_jax.model.gptq import DEFAULT_DAMP
from gemini_jax.sample.quantize import quantize_run

HEADLINE = {"vqa": "exact_match", "asr": "exact_match", "video": "exact_match", "text": "perplexity"}


def quantized(run: Path, out: Path, *, group_size: int, bits: int, calibrate: int, damp: float) -> dict:
    """quantize_run's report for `out`, quantizing `run` into it first unless that is done."""
    report_file = out / "quantize_report.json"
    if not report_file.is_file():
        report = quantize_run(run, out, group_size=group_size, bits=bits, calibrate=calibrate, damp=damp)
        report_file.write_text(json.dumps(report, indent=2) + "\n")
    return json.loads(report_file.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="float run directories, one per seed")
    parser.add_argument("--group-size", type=int, default=32, help="input features sharing one scale")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/int4-seeds"),
                        help="where the quantized runs and the evaluations are kept")
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="GPTQ rounding on N demo training examples (default 0: round to nearest)")
    parser.add_argument("--damp", type=float, default=DEFAULT_DAMP, help="GPTQ's damping of H, times its mean diagonal")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="the demo sets' split scored")
    parser.add_argument("--limit", type=int, default=None, help="at most this many examples per set")
    args = parser.parse_args(argv)
    if len({r.resolve().name for r in args.runs}) != len(args.runs):
        raise SystemExit("runs must have different directory names: their copies are kept under --out by name")
    start = time.perf_counter()
    suffix = ("" if args.split == "test" else f"-{args.split}") + (f"-n{args.limit}" if args.limit else "")
    tag = f"int{args.bits}-g{args.group_size}"
    if args.calibrate:
        tag += f"-gptq{args.calibrate}" + ("" if args.damp == DEFAULT_DAMP else f"-damp{args.damp:g}")
    floats, ints, reports = [], [], []
    for run in args.runs:
        name = run.resolve().name
        out = args.out / f"{name}-{tag}"
        reports.append(quantized(run, out, group_size=args.group_size, bits=args.bits, calibrate=args.calibrate,
                                 damp=args.damp))
        float_results = seed_stats.evaluated(run, args.out / f"{name}-float{suffix}.json", split=args.split,
                                             limit=args.limit)
        int_results = seed_stats.evaluated(out, out / f"eval{suffix}.json", split=args.split, limit=args.limit)
        floats.append(seed_stats.numeric_metrics(float_results, DEFAULT_TASKS))
        ints.append(seed_stats.numeric_metrics(int_results, DEFAULT_TASKS))
    diff = seed_stats.difference(ints, floats)
    summary = {"float": seed_stats.summarize(floats), tag: seed_stats.summarize(ints),
               f"{tag} - float": seed_stats.summarize(diff)}
    report = {
        "command": "python benchmarks/int4_seeds.py " + " ".join(map(str, args.runs))
        + f" --group-size {args.group_size} --bits {args.bits} --out {args.out}"
        + (f" --calibrate {args.calibrate}" if args.calibrate else "")
        + (f" --damp {args.damp:g}" if args.damp != DEFAULT_DAMP else "")
        + (f" --split {args.split}" if args.split != "test" else "") + (f" --limit {args.limit}" if args.limit else ""),
        "runs": [str(r) for r in args.runs], "group_size": args.group_size, "bits": args.bits,
        "method": f"gptq on {args.calibrate} training examples, damp {args.damp:g}" if args.calibrate
        else "round-to-nearest", "split": args.split, "limit": args.limit,
        "headline": {arm: seed_stats.brief(s, HEADLINE) for arm, s in summary.items()},
        "float": {"per_seed": floats, **summary["float"]},
        tag: {"per_seed": ints, **summary[tag]},
        f"{tag} - float": {"per_seed": diff, **summary[f"{tag} - float"]},
        "bytes_per_param": [r["bytes_per_param"] for r in reports],
        "decoder_payload_bytes_per_param": [r["decoder_payload_bytes_per_param"] for r in reports],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
