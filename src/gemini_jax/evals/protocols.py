"""How the Gemini report asks its questions: k-shot prompts, multiple choice, greedy 0-shot,
maj@k, pass@k, and uncertainty-routed chain-of-thought (CoT@k); `ProtocolSpec` names one of them
as `gemini-jax eval --protocol` does (greedy, loglikelihood, maj@K, cot-routed@K, pass@K, and
cluster@N/K, whose selection of programs is code_clustering.py's).

Pure Python over a two-method `Model` interface, so any sampler (ours, a remote API, a scripted
fake in the tests) can be evaluated the same way. The functions take batches of prompts where a
sampler gains from batching; the single-question forms call them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Model(Protocol):
    def generate(
        self, prompts: Sequence[str], *, temperature: float, num_samples: int, seed: int, max_tokens: int,
        stop: Sequence[str],
    ) -> list[list[str]]:
        """`num_samples` continuations per prompt (temperature 0: greedy, all samples equal)."""
        ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """log p(continuation | context) for each (context, continuation), summed over its tokens."""
        ...


class Method(enum.Enum):
    """How a question is answered (`gemini-jax eval --protocol`)."""

    GREEDY = "greedy"  # one greedy generation
    LOGLIKELIHOOD = "loglikelihood"  # the most likely of the choices
    MAJORITY = "maj"  # maj@K: the most common answer of K samples
    COT_ROUTED = "cot-routed"  # CoT@K routed by uncertainty, its threshold chosen on a dev split
    PASS = "pass"  # K programs per problem, judged by their tests: pass@1 and pass@K
    CLUSTER = "cluster"  # AlphaCode 2: N programs filtered by the examples, clustered, K submitted


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
    """A protocol by name: "greedy", "loglikelihood", or "maj@K", "cot-routed@K", "pass@K" with K
    samples per question, or "cluster@N/K": N samples, K of them submitted."""

    method: Method
    k: int = 1  # samples per question
    submitted: int = 0  # cluster@N/K: K, the programs submitted

    ACCEPTED = ("greedy, loglikelihood, maj@K, cot-routed@K or pass@K (K: samples per question, 1 or more), or "
                "cluster@N/K (N programs sampled, K <= N submitted)")

    @property
    def samples(self) -> bool:
        return self.method in (Method.MAJORITY, Method.COT_ROUTED, Method.PASS, Method.CLUSTER)

    @classmethod
    def parse(cls, text: str) -> ProtocolSpec:
        name, at, count = text.strip().partition("@")
        try:
            method = Method(name)
        except ValueError:
            raise ValueError(f"unknown protocol {text!r}; accepted: {cls.ACCEPTED}") from None
        if not at:
            if method in (Method.GREEDY, Method.LOGLIKELIHOOD):
                return cls(method)
            example = "cluster@10/1" if method is Method.CLUSTER else f"{name}@8"
            raise ValueError(f"protocol {text!r} needs its number of samples, e.g. {example}")
        if method in (Method.GREEDY, Method.LOGLIKELIHOOD):
            raise ValueError(f"protocol {name} takes no number of samples: give {name!r}, not {text!r}")
        if method is Method.CLUSTER:
            return cls._cluster(text, count)
        if "/" in count:
            raise ValueError(f"protocol {text!r}: only cluster@N/K takes a '/K'; give {name}@{count.split('/')[0]}")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"protocol {text!r}: the number after '@' must be an integer of 1 or more")
        return cls(method, int(count))

    @classmethod
    def _cluster(cls, text: str, count: str) -> ProtocolSpec:
        n, slash, k = count.partition("/")
        if not slash:
            raise ValueError(f"protocol {text!r}: cluster takes N/K, N programs sampled and K submitted, "
                             "e.g. cluster@10/1")
        if not (n.isdigit() and k.isdigit() and int(n) >= 1 and int(k) >= 1):
            raise ValueError(f"protocol {text!r}: N and K in cluster@N/K must be integers of 1 or more")
        if int(k) > int(n):
            raise ValueError(f"protocol {text!r}: K (programs submitted, {k}) cannot exceed N (programs "
                             f"sampled, {n})")
        return cls(Method.CLUSTER, int(n), int(k))

    def __str__(self) -> str:
        if self.method is Method.CLUSTER:
            return f"{self.method.value}@{self.k}/{self.submitted}"
        return f"{self.method.value}@{self.k}" if self.samples else self.method.value


# --- prompts -----------------------------------------------------------------------------------


def few_shot_prompt(
    question: str, shots: Sequence[tuple[str, str]], *, k: int, template: str = "Q: {question}\nA:",
    separator: str = "\n\n",
) -> str:
    """The first `k` (question, answer) shots, each as `template` followed by " answer", then the
    question with the answer left open. Taking the first k (not a random k) keeps runs comparable."""
    if k < 0 or k > len(shots):
        raise ValueError(f"k-shot prompt: k must be in [0, {len(shots)}] (the number of shots given), got {k}")
    if "{question}" not in template:
        raise ValueError(f"prompt template must contain '{{question}}', got {template!r}")
    blocks = [f"{template.format(question=q)} {a}" for q, a in shots[:k]]
    return separator.join([*blocks, template.format(question=question)])


def multiple_choice_question(question: str, choices: Sequence[str]) -> str:
    """"question\\nA. first\\nB. second ..." (the MMLU layout)."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"multiple choice needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    return "\n".join([question, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))])


# --- single answers ----------------------------------------------------------------------------


def greedy(model: Model, prompts: Sequence[str], *, max_tokens: int = 256, stop: Sequence[str] = ("\n\n",)) -> list[str]:
    """0-shot (or k-shot, by the prompt) greedy decoding: one continuation per prompt."""
    outputs = model.generate(list(prompts), temperature=0.0, num_samples=1, seed=0, max_tokens=max_tokens, stop=stop)
    return [samples[0] for samples in outputs]


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int  # the chosen choice
    loglikelihoods: list[float]  # of each choice, summed over its tokens


def choices_by_loglikelihood(
    model: Model, prompts: Sequence[str], choices: Sequence[Sequence[str]], *, per_char: bool = False,
) -> list[Choice]:
    """For each prompt, the most likely continuation " choice" among its choices, in one batch of
    log-likelihoods. `per_char` divides by the choice's length, so that long choices are not
    penalised for having more tokens. Ties go to the first."""
    if len(prompts) != len(choices):
        raise ValueError(f"got {len(prompts)} prompts but {len(choices)} lists of choices: need one per prompt")
    if not all(choices):
        raise ValueError("choose_by_loglikelihood needs at least one choice per prompt")
    scores = model.loglikelihood([(p, f" {c}") for p, options in zip(prompts, choices) for c in options])
    out, at = [], 0
    for options in choices:
        own = list(scores[at : at + len(options)])
        at += len(options)
        ranked = [s / max(len(c), 1) for s, c in zip(own, options)] if per_char else own
        out.append(Choice(max(range(len(options)), key=lambda i: (ranked[i], -i)), own))
    return out


def choose_by_loglikelihood(model: Model, prompt: str, choices: Sequence[str], *, per_char: bool = False) -> int:
    """The index of the most likely continuation " choice" (see `choices_by_loglikelihood`)."""
    return choices_by_loglikelihood(model, [prompt], [choices], per_char=per_char)[0].index


def read_choice(output: str, num_choices: int) -> int | None:
    """The first standalone letter among the first `num_choices` in a generation, as an index;
    None when it names none."""
    if not 1 <= num_choices <= len(LETTERS):
        raise ValueError(f"num_choices must be in [1, {len(LETTERS)}], got {num_choices}")
    match = re.search(rf"\b([{LETTERS[:num_choices]}])\b", output)
    return LETTERS.index(match.group(1)) if match else None


def choose_by_generation(model: Model, prompt: str, num_choices: int) -> int | None:
    """Greedy-generates after a lettered prompt (see `multiple_choice_question`) and reads the first
    standalone letter among the choices; None when the model names none."""
    if not 1 <= num_choices <= len(LETTERS):
        raise ValueError(f"num_choices must be in [1, {len(LETTERS)}], got {num_choices}")
    [output] = greedy(model, [prompt], max_tokens=8, stop=("\n",))
    return read_choice(output, num_choices)


# --- sampling: maj@k, pass@k -------------------------------------------------------------------


def answer_after(marker: str = "The answer is") -> Callable[[str], str | None]:
    """An extractor for chain-of-thought outputs: the text after the last `marker`, up to the end
    of its line, without a final period; None when the marker is missing."""

    def extract(text: str) -> str | None:
        at = text.rfind(marker)
        if at < 0:
            return None
        answer = text[at + len(marker):].strip().splitlines()
        return answer[0].strip().rstrip(".").strip() if answer else None

    return extract


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """The most common answer and its share of all samples (None answers, unparseable samples,
    count in the share's denominator but never win). Ties go to the answer seen first, so the
    result does not depend on hashing or on sorting answers of different kinds."""
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    first_seen = {a: i for i, a in reversed(list(enumerate(answers)))}
    best = max(counts, key=lambda a: (counts[a], -first_seen[a]))
    return best, counts[best] / len(answers)


def sample(
    model: Model, prompts: Sequence[str], *, k: int, temperature: float = 0.7, seed: int = 0, max_tokens: int = 512,
    stop: Sequence[str] = (),
) -> list[list[str]]:
    """k samples per prompt at `temperature`, in one batch; checks the model returned k of each."""
    if k < 1:
        raise ValueError(f"k (samples per question) must be >= 1, got {k}")
    outputs = model.generate(list(prompts), temperature=temperature, num_samples=k, seed=seed, max_tokens=max_tokens,
                             stop=stop)
    for samples in outputs:
        if len(samples) != k:
            raise ValueError(f"the model returned {len(samples)} samples, {k} were asked for")
    return outputs


def sample_answers(
    model: Model, prompt: str, *, k: int, extract: Callable[[str], str | None], **sampling,
) -> list[str | None]:
    """The answers `extract` reads from k samples of one prompt (see `sample` for the settings)."""
    [samples] = sample(model, [prompt], k=k, **sampling)
    return [extract(s) for s in samples]


def maj_at_k(model: Model, prompt: str, *, k: int, extract: Callable[[str], str | None], **sampling) -> str | None:
    """maj@k: the majority answer of k samples (see `majority_vote` for ties)."""
    return majority_vote(sample_answers(model, prompt, k=k, extract=extract, **sampling))[0]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# --- uncertainty-routed chain of thought (Gemini report, section 5.1.1) ------------------------


@dataclasses.dataclass(frozen=True)
class RoutedAnswer:
    answer: str | None
    consensus: float  # the majority answer's share of the k chains of thought
    route: str  # "cot": the majority of the chains; "greedy": the greedy answer without them


def route(majority: str | None, consensus: float, greedy_answer: str | None, threshold: float) -> RoutedAnswer:
    """The majority of the chains of thought when their consensus reaches `threshold`, else the
    answer without them."""
    if majority is not None and consensus >= threshold:
        return RoutedAnswer(majority, consensus, "cot")
    return RoutedAnswer(greedy_answer, consensus, "greedy")


def uncertainty_routed_cot(
    model: Model, cot_prompt: str, direct_prompt: str, *, k: int, threshold: float,
    extract: Callable[[str], str | None], direct_extract: Callable[[str], str | None] = str.strip, **sampling,
) -> RoutedAnswer:
    """CoT@k routed by uncertainty: sample k chains of thought; when their majority answer's share
    reaches `threshold` the model is consistent enough to trust it, else answer greedily without
    chain of thought (which the report found better than a low-consensus vote)."""
    if not threshold >= 0.0:
        raise ValueError(f"threshold is a share of samples, >= 0 (above 1: always greedy), got {threshold}")
    majority, consensus = majority_vote(sample_answers(model, cot_prompt, k=k, extract=extract, **sampling))
    [direct] = greedy(model, [direct_prompt])
    return route(majority, consensus, direct_extract(direct), threshold)


@dataclasses.dataclass(frozen=True)
class ValidationItem:
    """What routing needs of one validation question, computed once for all thresholds."""

    majority: str | None
    consensus: float
    greedy_answer: str | None
    gold: str


def choose_threshold(items: Sequence[ValidationItem], candidates: Sequence[float] | None = None) -> tuple[float, float]:
    """(threshold, validation accuracy) maximising accuracy over `candidates`, by default every
    observed consensus plus one above 1 (always greedy). Ties go to the lowest threshold: among
    equally good ones it trusts the chains of thought most often."""
    if not items:
        raise ValueError("choose_threshold needs at least one validation item")
    if candidates is None:
        candidates = sorted({i.consensus for i in items} | {math.inf})
    if not candidates:
        raise ValueError("choose_threshold needs at least one candidate threshold")

    def accuracy(t: float) -> float:
        return sum(route(i.majority, i.consensus, i.greedy_answer, t).answer == i.gold for i in items) / len(items)

    return max(((t, accuracy(t)) for t in sorted(candidates)), key=lambda ta: (ta[1], -ta[0]))
