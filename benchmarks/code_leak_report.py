"""A model's HumanEval and leak-free code scores side by side (prints JSON).

    python benchmarks/code_leak_report.py --checkpoint runs/demo
    python benchmarks/code_leak_report.py --checkpoint runs/demo --protocol cluster@10/1 --limit 40

HumanEval is on the web and may sit in a model's training data; leakfree_code
(src/gemini_jax/evals/leakfree_code.py) is built from installed packages that no corpus of this
project reads and that decontamination keeps out of every prepared mixture. A model that scores
well on HumanEval but not on leakfree_code has likely memorised HumanEval (the reason the Gemini
report built Natural2Code). Both tasks are asked with the same protocol (default pass@1, one
greedy program; pass@K and cluster@N/K sample at --temperature) and judged in the sandbox.
"gap" is HumanEval's score minus leakfree_code's, for each metric both report. The problems
differ in kind and difficulty, so only a gap that moves between models of the same family is
evidence of a leak, not the gap alone.
"""

from __future__ import annotations

import argparse
import json
import time

from gemini_jax.evals import leakfree_code
from gemini_jax.evals.registry import EvalOptions, evaluate_run

TASKS = ("humaneval", "leakfree_code")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo", help="a run directory written by `gemini-jax train`")
    parser.add_argument("--protocol", default="greedy", help="greedy (pass@1), pass@K or cluster@N/K")
    parser.add_argument("--limit", type=int, default=None, help="at most this many problems of each task")
    parser.add_argument("--temperature", type=float, default=0.7, help="of the sampled protocols")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", default=None, help="a JSONL file for every program and its verdict")
    args = parser.parse_args(argv)
    options = EvalOptions(protocol=args.protocol, limit=args.limit, seed=args.seed, records=args.records,
                          progress=False, **({} if args.protocol == "greedy" else {"temperature": args.temperature}))
    start = time.perf_counter()
    results = evaluate_run(args.checkpoint, list(TASKS), options)
    human, leakfree = (results[t] for t in TASKS)
    shared = [m for m in human if m in leakfree and m.startswith(("pass@", "cluster@"))]
    report = {
        "checkpoint": args.checkpoint, "protocol": args.protocol, "limit": args.limit,
        "humaneval": human, "leakfree_code": leakfree,
        "gap": {m: human[m] - leakfree[m] for m in shared},
        "leakfree_sources": leakfree_code.versions(), "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
