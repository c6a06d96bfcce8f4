"""benchmarks/seed_stats.py: the mean and sample spread the *_seeds.py benchmarks print."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_stats  # noqa: E402


def test_spread_is_numpys_mean_and_sample_std():
    values = [88.2, 91.5, 86.9]
    s = seed_stats.spread(values)
    assert s["mean"] == pytest.approx(np.mean(values)) and s["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["values"] == values and seed_stats.spread([3.0])["std"] is None


def test_paired_differences_and_summary_keep_metrics_every_seed_has():
    a = [{"vqa": {"exact_match": 90.0, "examples": 10}}, {"vqa": {"exact_match": 80.0, "examples": 10}}]
    b = [{"vqa": {"exact_match": 89.0}}, {"vqa": {"exact_match": 83.0}}]
    a = [seed_stats.numeric_metrics(r, ["vqa"]) for r in a]  # counts are dropped
    diff = seed_stats.difference(a, b)
    assert diff == [{"vqa": {"exact_match": 1.0}}, {"vqa": {"exact_match": -3.0}}]
    summary = seed_stats.summarize(diff)
    assert summary["vqa"]["exact_match"]["mean"] == -1.0
    assert seed_stats.brief(summary, {"vqa": "exact_match"}) == {"vqa": f"-1.00 +- {np.std([1, -3], ddof=1):.2f}"}
