"""A behaviour the demo model lacks, taught by post-training: answering in a full sentence.

Asked "What color is the shape? Answer in a full sentence.", the demo run answers "blue". The
behaviour wanted is "The shape is blue." (for "what is the blue shape?": "The blue shape is a
rectangle."), while a question without the instruction keeps its short answer. `follows` is the
rule that judges a reply; it labels the data written here and judges held-out replies, and is
never the policy's training signal except through the reward model trained on its labels.

    python examples/post_training.py data data/post --wrong-answer-share 0.5   # sft, pairs, prompts;
                                                                                # validation, heldout
    python examples/post_training.py data data/mixed --sentence-share 0.3     # writers who follow the
                                                                                # instruction 3 times in 10
    python examples/post_training.py judge data/post/validation.jsonl runs/sft runs/rl   # to choose on
    python examples/post_training.py judge data/post/heldout.jsonl runs/sft runs/demo runs/rl   # once, at the end

Training data comes from easy-VQA's training images (which the demo trained on), the validation
prompts from other questions on them, the held-out prompts from its test images; only shape and
colour questions are used.

Demonstrations are written as the rule wants (`--sentence-share 1`) or, as a pool of writers
who often ignore the instruction would write them, with a share of the instructed ones answered
by the bare answer. Preference pairs always prefer the rule's reply: what is learnt from
demonstrations, and what from preferences, then differ.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import easy_vqa
import numpy as np

from gemini_jax.data.corpora.demo_tasks import easy_vqa_data_dir
from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES

INSTRUCTION = "Answer in a full sentence."
SHAPES, COLOURS = VQA_SHAPES, tuple(VQA_COLOURS)  # easy-VQA's, in its order
_SHAPE_QUESTION = re.compile(
    r"what (?:shape(?: is(?: in the image| present| this)?| does the image contain)|is the (?P<colour>\w+) shape)\?")
_COLOUR_QUESTION = re.compile(r"what (?:colou?r is|is the colou?r of) the (?P<shape>\w+)(?: in the image)?\?")


def kind_of(question: str) -> tuple[str, str | None] | None:
    """("shape", the colour named or None) or ("colour", the shape named), or None (another kind)."""
    if match := _SHAPE_QUESTION.fullmatch(question):
        return "shape", match["colour"]
    if match := _COLOUR_QUESTION.fullmatch(question):
        return "colour", match["shape"]
    return None


def sentence(question: str, answer: str) -> str:
    """The full-sentence answer that names what was asked about."""
    kind, named = kind_of(question)
    if kind == "shape":
        return f"The {named + ' ' if named else ''}shape is a {answer}."
    return f"The {named} is {answer}."


def follows(question: str, reply: str, answer: str) -> bool:
    """The rule: one sentence (a capital, a closing full stop, at least four words) that names what
    was asked about ("shape", or the shape named) and gives the right answer, and nothing else."""
    kind, named = kind_of(question)
    words = re.findall(r"[a-z]+", reply.lower())
    subject = "shape" if kind == "shape" else named
    others = set(SHAPES if kind == "shape" else COLOURS) - {answer}
    return (reply[:1].isupper() and reply.endswith(".") and reply.count(".") == 1 and len(words) >= 4
            and subject in words and answer in words and not others & set(words))


def _questions(split: str) -> list[tuple[str, str, str]]:
    questions, answers, ids = (easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions())
    images = Path(easy_vqa_data_dir()) / split / "images"
    return [(q, a, str(images / f"{i}.png")) for q, a, i in zip(questions, answers, ids) if kind_of(q)]


def _turn(role: str, *parts: dict) -> dict:
    return {"role": role, "parts": list(parts)}


def _prompt(question: str, image: str, instructed: bool) -> list[dict]:
    text = f"{question} {INSTRUCTION}" if instructed else question
    return [_turn("user", {"image": image}, {"text": text})]


def _wrong(question: str, answer: str, rng: np.random.Generator, wrong_answer_share: float) -> str:
    """A rejected reply: the sentence with a wrong answer (`wrong_answer_share` of them), else the
    bare answer or a sentence that does not name what was asked about, evenly."""
    kind, _ = kind_of(question)
    options = [o for o in (SHAPES if kind == "shape" else COLOURS) if o != answer]
    if rng.random() < wrong_answer_share:
        return sentence(question, options[int(rng.integers(len(options)))])
    if rng.random() < 0.5:
        return answer
    return f"It is {'a ' if kind == 'shape' else ''}{answer}."


def write_data(out: Path, *, sft: int = 400, pairs: int = 1200, prompts: int = 1200, heldout: int = 300,
               seed: int = 0, wrong_answer_share: float = 1 / 3, sentence_share: float = 1.0,
               replay: Path | None = None) -> None:
    """The files the loop trains and judges on, in `out`. `sentence_share`: of the instructed
    demonstrations, the share answered in the full sentence (the others give the bare answer).
    `replay`: the demo's prepared VQA, which sft.yaml then mixes in one to one with the
    demonstrations, so that the demo's accuracy holds."""
    rng = np.random.default_rng(seed)
    train, test = _questions("train"), _questions("test")
    order = rng.permutation(len(train))
    picked = [train[i] for i in order[: sft + pairs + prompts]]
    # Training-image questions none of the files above holds: what recipes are chosen on.
    validation = [train[i] for i in order[sft + pairs + prompts: sft + pairs + prompts + heldout]]
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, records: list[dict]) -> None:
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    demos = []
    writers = np.random.default_rng([seed, 2])  # its own, as the pairs' below
    for i, (q, a, image) in enumerate(picked[:sft]):
        instructed = i % 2 == 0  # half keep the short answer: the instruction, not the sentence, is taught
        reply = sentence(q, a) if instructed and writers.random() < sentence_share else a
        demos.append({"contents": _prompt(q, image, instructed) + [_turn("model", {"text": reply})]})
    write("sft.jsonl", demos)
    rejections = np.random.default_rng([seed, 1])  # its own: the other files do not depend on the pairs' mix
    write("pairs.jsonl", [{"contents": _prompt(q, image, True), "chosen": [{"text": sentence(q, a)}],
                           "rejected": [{"text": _wrong(q, a, rejections, wrong_answer_share)}]}
                          for q, a, image in picked[sft:sft + pairs]])
    write("prompts.jsonl", [{"contents": _prompt(q, image, True) + [_turn("model", {"text": sentence(q, a)})]}
                            for q, a, image in picked[sft + pairs:]])
    write("rl_questions.jsonl", [{"question": q, "answer": a, "image": image} for q, a, image in picked[sft + pairs:]])
    held = [test[i] for i in rng.permutation(len(test))[:heldout]]
    write("heldout.jsonl", [{"question": q, "answer": a, "image": image} for q, a, image in held])
    write("validation.jsonl", [{"question": q, "answer": a, "image": image} for q, a, image in validation])
    mixture = "sources:\n  sft: {path: sft}\n"
    if replay is not None:
        mixture += f"  vqa: {{path: {replay.resolve()}, cache: true}}\nweights: {{sft: 1.0, vqa: 1.0}}\n"
    (out / "sft.yaml").write_text(mixture + "eval_tasks: [vqa]\n")


def demo_vqa() -> Path:
    """The demo's prepared VQA source (prepared now if the demo has not run in this cache)."""
    from gemini_jax.data.corpora.demo import DemoCorpus
    from gemini_jax.data.corpora.demo_prepared import prepare_demo_sources

    return prepare_demo_sources(DemoCorpus.build(None)) / "vqa"


def _replies(run_dir: str, items: list[dict], params: list, *, batch: int = 32) -> list[str]:
    """`run_dir`'s replies to the instructed question of each item, item i sampled with params[i]."""
    from gemini_jax.checkpoint import load_run
    from gemini_jax.data.examples import from_json
    from gemini_jax.sample.sampler import Sampler

    run = load_run(run_dir)
    sampler = Sampler(run.model, run.tokenizer)
    examples = [from_json({"contents": _prompt(it["question"], it["image"], True)}) for it in items]
    replies = []
    for start in range(0, len(examples), batch):
        replies += sampler.generate(examples[start:start + batch], params[start:start + batch])
    return [r.strip() for r in replies]


def label(run_dir: str, data: Path, out: Path, *, replies: int = 4, seed: int = 0) -> dict[str, int]:
    """Preference pairs on the policy's own replies, labelled by the rule (a rater judging what
    the policy now writes): `replies` samples (temperature 1) to each RL question of `data`;
    where one fails the rule, a pair prefers a passing sample (or the rule's sentence when none
    passes) to it. Written after data/pairs.jsonl's pairs into `out`, for a reward model that
    knows the mistakes of the policy it will train."""
    from gemini_jax.sample.token_choice import SamplingParams

    items = [json.loads(line) for line in (data / "rl_questions.jsonl").read_text().splitlines()]
    asked = [it for it in items for _ in range(replies)]
    params = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=seed * len(asked) + i) for i in range(len(asked))]
    sampled = _replies(run_dir, asked, params)
    pairs, counts = [], {"questions": len(items), "all_pass": 0, "none_pass": 0}
    for i, it in enumerate(items):
        own = sampled[i * replies:(i + 1) * replies]
        verdicts = [follows(it["question"], r, it["answer"]) for r in own]
        passing = [r for r, ok in zip(own, verdicts) if ok]
        failing = [r for r, ok in zip(own, verdicts) if not ok]
        counts["all_pass"] += not failing
        counts["none_pass"] += not passing
        if failing:
            chosen = passing[0] if passing else sentence(it["question"], it["answer"])
            pairs.append({"contents": _prompt(it["question"], it["image"], True), "chosen": [{"text": chosen}],
                          "rejected": [{"text": failing[0]}]})
    out.write_text((data / "pairs.jsonl").read_text() + "".join(json.dumps(p) + "\n" for p in pairs))
    return {**counts, "new_pairs": len(pairs)}


def judge(heldout: Path, runs: list[str], *, batch: int = 32) -> dict[str, dict[str, float]]:
    """Each run's greedy replies to the held-out prompts, judged by `follows`; and, beside the
    first run, each later run's win rate over it (wins + ties / 2 over all prompts)."""
    from gemini_jax.sample.token_choice import SamplingParams

    items = [json.loads(line) for line in heldout.read_text().splitlines()]
    judged = {}
    for run_dir in runs:
        replies = _replies(run_dir, items, [SamplingParams(max_new_tokens=16)] * len(items), batch=batch)
        judged[run_dir] = np.array([follows(it["question"], r, it["answer"]) for it, r in zip(items, replies)])
    base = judged[runs[0]]
    return {run: {"follows": float(j.mean()), f"win_rate_over_{Path(runs[0]).name}": float(np.mean((j > base) + 0.5 * (j == base)))}
            for run, j in judged.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write the SFT conversations, preference pairs, RL prompts, "
                                            "validation and held-out prompts into DIR")
    data.add_argument("out", metavar="DIR", type=Path, help="the directory to write the files into")
    data.add_argument("--wrong-answer-share", type=float, default=1 / 3,
                      help="share of rejected replies that are the sentence with a wrong answer (default: 1/3; "
                           "the others are the bare answer or a sentence that does not name the subject)")
    data.add_argument("--sentence-share", type=float, default=1.0,
                      help="share of the instructed demonstrations answered in the full sentence; the others "
                           "give the bare answer (default: 1, every one)")
    data.add_argument("--seed", type=int, default=0, help="which questions and images are drawn (default: 0)")
    judged = commands.add_parser("judge", help="judge each run's greedy replies to the prompts of FILE by the "
                                               "rule; win rates over the first run")
    judged.add_argument("prompts", metavar="FILE", type=Path, help="validation.jsonl or heldout.jsonl")
    judged.add_argument("runs", metavar="RUN", nargs="+", help="run directories, the first the baseline")
    labelled = commands.add_parser("label", help="preference pairs on RUN's own sampled replies to DIR's RL "
                                                 "questions, labelled by the rule, after DIR/pairs.jsonl's")
    labelled.add_argument("run", metavar="RUN", help="the policy whose replies are labelled (e.g. the RL run)")
    labelled.add_argument("data", metavar="DIR", type=Path, help="the directory `data` wrote")
    labelled.add_argument("--out", type=Path, required=True, help="the JSONL file of pairs to write")
    labelled.add_argument("--replies", type=int, default=4, help="replies sampled per question (default: 4)")
    labelled.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    args = parser.parse_args()
    if args.command == "data":
        for name in ("wrong_answer_share", "sentence_share"):
            if not 0.0 <= getattr(args, name) <= 1.0:
                parser.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
        write_data(args.out, replay=demo_vqa(), seed=args.seed, wrong_answer_share=args.wrong_answer_share,
                   sentence_share=args.sentence_share)
    elif args.command == "label":
        print(json.dumps(label(args.run, args.data, args.out, replies=args.replies, seed=args.seed)))
    else:
        print(json.dumps(judge(args.prompts, args.runs), indent=2))


if __name__ == "__main__":
    main()
