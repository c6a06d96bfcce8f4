"""What the serving filter costs to check a prompt, and a streamed reply at every chunk (prints JSON).

    python benchmarks/safety_reply_check.py [--chars 40,200,1000] [--chunk 4] [--repeats 5]

A reply of each length, grown `--chunk` characters at a time and scored after each chunk, once
with the whole text hashed again each time (`SafetyClassifier.scores`) and once by
`SafetyFilter.reply_check` (only the words since the last whitespace hashed:
safety/growing_text.py). A prompt of each length checked once by `SafetyFilter.check` (every
reading of it: as written, base64 decoded, ROT13; safety/readings.py), beside the text as written
alone. All in this process, the best of `--repeats`; the classifier has the shipped layout (4
categories over 2 x 2^18 hashed features) with random weights, which cost what trained ones do.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gemini_jax.data.prepare.classifier import HASHED_FEATURES
from gemini_jax.safety.classifier import SafetyClassifier
from gemini_jax.safety.filter import SafetyFilter

CATEGORIES = ("weapons", "harassment", "self_harm", "privacy")
WORDS = ("the red ball is on the shelf and you can find it there if you look for it "
         "carefully before anyone else comes home tonight").split()


def reply(chars: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    text = ""
    while len(text) < chars:
        text += str(rng.choice(WORDS)) + ("." if rng.random() < 0.1 else "") + " "
    return text[:chars]


def best_seconds(check, text: str, chunk: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for end in range(chunk, len(text) + chunk, chunk):
            check(text[:end])
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", default="40,200,1000", help="reply lengths in characters, comma-separated")
    parser.add_argument("--chunk", type=int, default=4, help="characters a chunk (a streamed token is 2-5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case; the best is kept")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    classifier = SafetyClassifier(categories=CATEGORIES, intercept=np.zeros(len(CATEGORIES)),
                                  coef=rng.normal(size=(len(CATEGORIES), 2 * HASHED_FEATURES)).astype(np.float32))
    safety = SafetyFilter(classifier)
    results = []
    for chars in (int(c) for c in args.chars.split(",")):
        text = reply(chars)
        checks = -(-len(text) // args.chunk)
        whole = best_seconds(lambda t: classifier.scores([t]), text, args.chunk, args.repeats)
        # A new reply check per repeat: each starts from an empty reply, as a request does.
        growing = min(best_seconds(safety.reply_check(), text, args.chunk, 1) for _ in range(args.repeats))
        as_written = best_seconds(lambda t: classifier.scores([t]), text, len(text), args.repeats)
        prompt = best_seconds(safety.check, text, len(text), args.repeats)
        results.append({"chars": len(text), "checks": checks, "whole_text_ms_per_check": 1e3 * whole / checks,
                        "growing_ms_per_check": 1e3 * growing / checks, "speedup": whole / growing,
                        "prompt_as_written_ms": 1e3 * as_written, "prompt_check_ms": 1e3 * prompt,
                        "prompt_readings_cost": prompt / as_written})
    print(json.dumps({"chunk_chars": args.chunk, "repeats": args.repeats, "results": results}, indent=1))


if __name__ == "__main__":
    main()
