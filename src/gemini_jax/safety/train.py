"""`gemini-jax safety train`: a policy's requests -> classifiers fitted on the train split,
thresholds chosen on validation, figures on test (plain and red-team wrapped) -> a directory.

    gemini-jax safety train --out runs/safety            # the shipped policy
    gemini-jax safety train --policy my_policy.yaml --out runs/safety
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from gemini_jax.safety.classifier import SafetyClassifier
from gemini_jax.safety.evaluate import evaluate
from gemini_jax.safety.policy import Policy, load_policy
from gemini_jax.safety.requests import MAX_PER_TEMPLATE, SafetyRequest, policy_requests, red_team

REPORT_FILE = "report.json"


def fit(requests: Sequence[SafetyRequest], *, categories: Sequence[str],
        min_precision: float | None = None) -> SafetyClassifier:
    """Trained on the train split, thresholds from the validation split; test is not read."""
    train = [r for r in requests if r.split == "train"]
    validation = [r for r in requests if r.split == "validation"]
    if not train or not validation:
        raise ValueError(f"need train and validation requests; got {len(train)} and {len(validation)}")
    classifier = SafetyClassifier.train([r.text for r in train], [r.harmful_in for r in train], categories=categories)
    return classifier.with_thresholds_from([r.text for r in validation], [r.harmful_in for r in validation],
                                           min_precision=min_precision)


def train_and_report(out: str | os.PathLike, *, policy: Policy | None = None, min_precision: float | None = None,
                     max_per_template: int = MAX_PER_TEMPLATE) -> dict:
    """Fits, saves the classifier to `out` and writes `out/report.json`: the policy, request
    counts, thresholds, and metrics on validation, test and red-team-wrapped test."""
    policy = policy or load_policy()
    requests = policy_requests(policy, max_per_template=max_per_template)
    classifier = fit(requests, categories=policy.category_names, min_precision=min_precision)
    classifier.save(out)
    test = [r for r in requests if r.split == "test"]
    wrapped = red_team(test)
    results = {"validation": evaluate(classifier, [r for r in requests if r.split == "validation"]),
               "test": evaluate(classifier, test), "red_team_test": evaluate(classifier, wrapped)}
    counts: dict[str, dict[str, int]] = {}
    for r in requests:
        counts.setdefault(r.split, {}).setdefault(f"{r.category}/{r.label}", 0)
        counts[r.split][f"{r.category}/{r.label}"] += 1
    report = {"policy": {"name": policy.name, "version": policy.version, "source": policy.source},
              "requests": counts, "min_precision": min_precision, "max_per_template": max_per_template,
              "thresholds": classifier.thresholds, "threshold_rules": classifier.rules,
              "metrics": {name: {c: m.to_json() for c, m in metrics.items()} for name, metrics in results.items()},
              "red_team_by_wrapper": _by_wrapper(classifier, wrapped)}
    Path(out, REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    report["results"] = results  # for the caller's table; not in the JSON
    return report


def _by_wrapper(classifier: SafetyClassifier, wrapped: Sequence[SafetyRequest]) -> dict[str, dict]:
    """The serving decision's ("any") metrics under each red-team wrapper."""
    out = {}
    for name in dict.fromkeys(r.wrapper for r in wrapped):
        out[name] = evaluate(classifier, [r for r in wrapped if r.wrapper == name])["any"].to_json()
    return out
