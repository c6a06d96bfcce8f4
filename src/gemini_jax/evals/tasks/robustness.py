"""The robustness suite as one registry task (`gemini-jax eval --tasks robustness`): per kind of
change (data/corpora/robustness.py), the accuracy on the changed set, on the plain set it is
compared with, and the gap between them (plain minus changed, in points).

0-shot greedy exact match, as the demo sets are scored (tasks/demo.py); the plain sets are
answered once and shared by every kind that compares with them.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from gemini_jax.evals.eval_task import EvalContext, TaskOutcome
from gemini_jax.evals.tasks.demo import ANSWER_TOKENS, _DemoSet, answer_questions, demo_corpus, demo_sampler, exact_match


@dataclasses.dataclass(frozen=True, kw_only=True)
class Robustness(_DemoSet):
    default_batch_size: ClassVar[int] = 256

    name: str = "robustness"
    split: str = "test"  # "validation" while choosing

    def run(self, context: EvalContext) -> TaskOutcome:
        from tqdm.auto import tqdm

        from gemini_jax.data.corpora.robustness import KINDS, SIZES, TEXT_KINDS, RobustnessSuite

        corpus = context.shared(demo_corpus)
        limit = context.options.limit
        # --limit N draws only N of each kind of media.
        sizes = None if limit is None else {kind: min(count, limit) for kind, count in SIZES.items()}
        suite = RobustnessSuite.build(corpus, self.split, sizes=sizes)
        changed = {kind: suite.records(kind) for kind in KINDS}
        plain = {kind: suite.plain(kind) for kind in KINDS}
        if limit is not None:
            # The same records asked both ways: a text kind's changed set is cut where its plain set is.
            kept = {id(r) for task in ("vqa", "video") for r in corpus.records(task, self.split)[:limit]}
            for kind in TEXT_KINDS:
                pairs = [(c, p) for c, p in zip(changed[kind], plain[kind]) if id(p) in kept]
                changed[kind], plain[kind] = [c for c, _ in pairs], [p for _, p in pairs]
            for kind in set(KINDS) - set(TEXT_KINDS):
                changed[kind], plain[kind] = changed[kind][:limit], plain[kind][:limit]

        # Every distinct plain record once, then every changed set.
        plain_records = list({id(r): r for kind in KINDS for r in plain[kind]}.values())
        total = len(plain_records) + sum(len(v) for v in changed.values())
        bar = tqdm(total=total, desc="eval robustness", disable=not context.options.progress, unit="ex", leave=False)
        sampler = context.shared(demo_sampler)

        def score(records):
            scored = []
            for tokens, group in ((ANSWER_TOKENS["asr"], [r for r in records if r.example.task == "asr"]),
                                  (ANSWER_TOKENS["vqa"], [r for r in records if r.example.task != "asr"])):
                if group:
                    answers = answer_questions(sampler, [r.example for r in group], batch_size=self.batch_size(context.options),
                                               max_new_tokens=tokens, on_batch=bar.update)
                    scored += zip(group, answers)
            return scored

        plain_correct = {id(r): s.correct for r, s in score(plain_records)}
        metrics, rows = {}, []
        for kind in KINDS:
            scored = score(changed[kind])
            accuracy = exact_match([s for _, s in scored])
            baseline = 100.0 * sum(plain_correct[id(r)] for r in plain[kind]) / max(len(plain[kind]), 1)
            metrics |= {kind: accuracy, f"{kind}_plain": baseline, f"{kind}_gap": baseline - accuracy}
            rows += [dataclasses.asdict(dataclasses.replace(s, kind=f"{kind}:{r.kind}")) for r, s in scored]
        bar.close()
        metrics["examples"] = sum(len(v) for v in changed.values())
        return TaskOutcome(metrics, rows)
