"""Answer-level metrics of the benchmarks the Gemini report uses, each as its benchmark defines it.

Per example (a prediction against one or more gold answers; the best gold counts):
exact match, VQA accuracy (VQAv2 and similar), ANLS (DocVQA, InfographicVQA), relaxed accuracy
(ChartQA), DROP F1. Per corpus: BLEU and chrF (sacrebleu, the reference implementation), WER and
CER (jiwer), CIDEr-D (COCO captions; written here because pycocoevalcap ships ~100 MB of Java
tools for the other caption metrics, checked against it in the tests when it is installed).

    compute("vqa_accuracy", ["two"], [["2"] * 10])  # -> 1.0 (mean over examples, in [0, 1])
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import jiwer
import sacrebleu
from rapidfuzz.distance import Levenshtein

# --- normalisation -----------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = frozenset(string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = "".join(" " if c in _PUNCTUATION else c for c in text.lower())
    return " ".join(w for w in text.split() if w not in _ARTICLES)


# VQA: the official evaluation's normalisation (Antol et al. 2015, github.com/GT-Vision-Lab/VQA).
_VQA_PUNCT = tuple(";/[]\"{}()=+\\_-><@`,?!")
_VQA_NUMBERS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))} | {"none": "0"}
# Contractions written without their apostrophe are restored ("dont" -> "don't"), so that both
# spellings of an answer match.
_VQA_CONTRACTIONS = {c.replace("'", ""): c for c in (  # noqa: SIM905 - a word list reads best as words
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll let's "
    "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at "
    "shan't she'd she'd've she'll she's should've shouldn't shouldn't've somebody'd somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "twas wasn't we'd we'd've we're we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't "
    "wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split() if "'" in c}
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) lookahead that
# always holds, so in effect a period is dropped unless a digit follows it ("2.5" keeps its point).
_PERIOD = re.compile(r"\.(?!\d)")


def normalize_vqa(answer: str) -> str:
    """The VQA evaluation's answer processing: punctuation, periods, number words, articles,
    contractions. ("Two dogs." -> "2 dogs", "dont" -> "don't", "the sky" -> "sky")."""
    original = text = answer.replace("\n", " ").replace("\t", " ").strip()
    for p in _VQA_PUNCT:  # a mark next to a space (or a comma inside a number) vanishes; else a space
        if f"{p} " in original or f" {p}" in original or _COMMA_BETWEEN_DIGITS.search(original):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = [_VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


# --- per-example metrics -----------------------------------------------------------------------


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(normalize_text(prediction) == normalize_text(g) for g in golds))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """min(#humans who gave the answer / 3, 1), averaged over the 10 leave-one-out subsets of 9
    humans, as the official evaluation does (so 3 of 10 agreeing gives 0.9, not 1.0).

    Unlike the official script, answers are normalised even when all humans agree (it skips that
    case, which only penalises a prediction that differs from them in form: "Yes." vs "yes").
    """
    if len(human_answers) < 2:
        raise ValueError(f"vqa_accuracy needs the answers of several humans (VQAv2 has 10), got {len(human_answers)}")
    pred = normalize_vqa(prediction)
    matches = [normalize_vqa(a) == pred for a in human_answers]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(matches)


def anls(prediction: str, golds: Sequence[str], *, threshold: float = 0.5) -> float:
    """Average normalised Levenshtein similarity (Biten et al. 2019): 1 - edit distance / longer
    length, with 0 when that normalised distance reaches `threshold` (a wrong answer, not a typo)."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for gold in golds:
        gold = " ".join(gold.lower().split())
        longest = max(len(pred), len(gold))
        distance = Levenshtein.distance(pred, gold) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def _to_float(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, golds: Sequence[str], *, tolerance: float = 0.05) -> float:
    """ChartQA (Masry et al. 2022): a number within 5% of a non-zero gold number is right (charts
    are read by eye); anything else must match exactly, ignoring case. "12%" reads as 0.12."""
    for gold in golds:
        p, g = _to_float(prediction), _to_float(gold)
        if p is not None and g:  # a gold of 0 has no relative tolerance: exact match below
            if abs(p - g) / abs(g) <= tolerance:
                return 1.0
        elif prediction.strip().lower() == gold.strip().lower():
            return 1.0
    return 0.0


def _drop_tokens(text: str) -> list[str]:
    tokens = []
    for word in text.lower().split():
        number = word.replace(",", "")
        try:
            tokens.append(str(float(number.rstrip("."))))  # "1,000" and "1000.0" -> "1000.0"
            continue
        except ValueError:
            pass
        word = "".join(c for c in word if c not in _PUNCTUATION)
        if word and word not in _ARTICLES:
            tokens.append(word)
    return tokens


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def drop_f1(prediction: str, golds: Sequence[str]) -> float:
    """DROP (Dua et al. 2019) F1 for single-span answers: bag-of-words F1 after normalisation
    (numbers to one spelling), and 0 when the gold has numbers and the prediction's numbers
    differ from them (a wrong number is wrong, however many words overlap). Multi-span answers
    (DROP's optimal alignment of spans) are not handled: join them as one span."""
    pred = _drop_tokens(prediction)
    best = 0.0
    for gold in golds:
        ref = _drop_tokens(gold)
        gold_numbers = {t for t in ref if _is_number(t)}
        if gold_numbers and gold_numbers != {t for t in pred if _is_number(t)}:
            continue
        overlap = sum((Counter(pred) & Counter(ref)).values())
        if not pred and not ref:
            best = 1.0
        elif overlap:
            precision, recall = overlap / len(pred), overlap / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# --- corpus metrics ----------------------------------------------------------------------------


def _as_reference_streams(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; every example needs the same count."""
    counts = {len(r) for r in references}
    if len(counts) != 1:
        raise ValueError(f"BLEU/chrF need the same number of references per example, got counts {sorted(counts)}")
    return [list(stream) for stream in zip(*references)]


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU in [0, 100] with sacrebleu's default (13a tokenisation, 4-grams)."""
    return sacrebleu.corpus_bleu(list(predictions), _as_reference_streams(references)).score


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF (character 6-grams, beta 2) in [0, 100], sacrebleu's default."""
    return sacrebleu.corpus_chrf(list(predictions), _as_reference_streams(references)).score


def wer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Word error rate over the corpus (edits / reference words), as a fraction."""
    return jiwer.wer(list(references), list(predictions))


def cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    return jiwer.cer(list(references), list(predictions))


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], *, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015) as the COCO caption evaluation computes it, x10.

    For n = 1..4: tf-idf vectors of n-grams (raw counts times log(#images / #images whose
    references hold the n-gram), the idf taken from this corpus's references), a cosine between
    candidate and each reference where the candidate's weights are clipped to the reference's
    (no reward for repeating a word), times a Gaussian penalty on the length difference. The
    mean over n and over references, times 10, averaged over images. Text is lower-cased and split
    on spaces (COCO first runs the PTB tokenizer; tokenise alike before calling this).
    """
    if not references:
        raise ValueError("cider_d needs at least one example")
    orders = range(1, 5)
    refs = [[r.lower().split() for r in rs] for rs in references]
    if any(not rs for rs in refs):
        raise ValueError("cider_d needs at least one reference per example")
    doc_freq: Counter = Counter()
    for rs in refs:
        doc_freq.update({g for r in rs for n in orders for g in _ngrams(r, n)})
    log_images = math.log(len(refs))

    def vectors(words):
        vecs = [{g: c * (log_images - math.log(max(1.0, doc_freq[g]))) for g, c in _ngrams(words, n).items()} for n in orders]
        return vecs, [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs], len(words)

    scores = []
    for prediction, rs in zip(predictions, refs):
        hyp, hyp_norms, hyp_len = vectors(prediction.lower().split())
        per_order = [0.0] * len(orders)
        for r in rs:
            ref, ref_norms, ref_len = vectors(r)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
            for k in range(len(orders)):
                dot = sum(min(w, ref[k].get(g, 0.0)) * ref[k].get(g, 0.0) for g, w in hyp[k].items())
                if hyp_norms[k] and ref_norms[k]:
                    per_order[k] += dot / (hyp_norms[k] * ref_norms[k]) * penalty
        scores.append(10.0 * sum(per_order) / len(orders) / len(rs))
    return sum(scores) / len(scores)


# --- by name -----------------------------------------------------------------------------------

PER_EXAMPLE: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": exact_match, "vqa_accuracy": vqa_accuracy, "anls": anls,
    "relaxed_accuracy": relaxed_accuracy, "drop_f1": drop_f1,
}
CORPUS: dict[str, Callable[..., float]] = {"bleu": bleu, "chrf": chrf, "wer": wer, "cer": cer, "cider_d": cider_d}
METRICS = tuple(PER_EXAMPLE) + tuple(CORPUS)


def compute(metric: str, predictions: Sequence[str], references: Sequence) -> float:
    """One metric over a corpus. Per-example metrics are averaged; `references[i]` is a list of gold
    answers (one string per reference for WER and CER)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; accepted: {', '.join(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{metric}: no predictions to score")
    if metric in CORPUS:
        return CORPUS[metric](predictions, references)
    for i, golds in enumerate(references):
        if isinstance(golds, str) or not golds:
            raise ValueError(f"{metric}: references[{i}] must be a non-empty list of gold answers, got {golds!r}")
    fn = PER_EXAMPLE[metric]
    return sum(fn(p, g) for p, g in zip(predictions, references)) / len(predictions)
