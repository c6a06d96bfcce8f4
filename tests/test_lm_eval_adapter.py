"""The lm-evaluation-harness adapter on a random-weight model: local YAML tasks of every request
type (multiple choice, generate_until, rolling log-likelihood) answered through lm-eval's own
evaluator, its log-likelihoods equal to ours, and `python -m gemini_jax.evals.lm_eval_adapter`
(lm-eval's CLI with the model registered). The `test` extra installs lm-eval, so CI runs it; an
environment without lm-eval skips it."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local json files only
lm_eval = pytest.importorskip("lm_eval")

from evals_data import write_run  # noqa: E402

from gemini_jax.config import PRESETS  # noqa: E402
from gemini_jax.evals.lm_eval_adapter import NAME, GeminiJaxLM, split_trailing_space  # noqa: E402
from gemini_jax.evals.checkpoint_model import CheckpointModel  # noqa: E402

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=320, max_seq_len=128, vision=None, audio=None)
DOCS = [{"question": "Which planet is red?", "choices": ["Mars", "Venus", "Jupiter"], "label": 0,
         "text": "Mars is the red planet. Venus is hot."},
        {"question": "What is 2 + 3?", "choices": ["4", "5", "6"], "label": 1, "text": "Two and three make five."}]
TASKS = {
    "gj_choice": {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                  "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
                  "metric_list": [{"metric": "acc"}]},
    "gj_generate": {"output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                    "doc_to_target": "{{choices[label]}}",
                    "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
                    "metric_list": [{"metric": "exact_match"}]},
    "gj_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                   "metric_list": [{"metric": "word_perplexity"}]},
}


def write_tasks(folder: Path) -> Path:
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, spec in TASKS.items():
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **spec}
        (folder / f"{name}.yaml").write_text(json.dumps(task))  # JSON is YAML
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, build_model):
    root = tmp_path_factory.mktemp("lmeval")
    model = build_model(CONFIG)
    run_dir, tokenizer = write_run(root, model, config=CONFIG,
                                   texts=[d["question"] + " " + d["text"] for d in DOCS] * 30)
    tasks = root / "tasks"
    tasks.mkdir()
    return run_dir, CheckpointModel(model, tokenizer, batch_size=4), write_tasks(tasks)


def test_lm_eval_runs_every_request_type_through_the_adapter(setup):
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    _, ours, tasks = setup
    assert get_model(NAME) is GeminiJaxLM
    out = lm_eval.simple_evaluate(model=GeminiJaxLM(model=ours), tasks=list(TASKS),
                                  task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    results = out["results"]
    assert 0.0 <= results["gj_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["gj_generate"]["exact_match,none"] <= 1.0
    assert math.isfinite(results["gj_rolling"]["word_perplexity,none"])
    samples = out["samples"]
    assert all(len(samples[t]) == len(DOCS) for t in TASKS)
    # Each multiple-choice request's log-likelihood is our own scorer's value for that pair.
    for sample in samples["gj_choice"]:
        for (context, continuation), [(value, _)] in zip(sample["arguments"], sample["resps"]):
            [expected] = ours.loglikelihood([split_trailing_space(context, continuation)])
            assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-5)
    for sample in samples["gj_rolling"]:
        [expected] = ours.loglikelihood_rolling([sample["doc"]["text"]])
        assert sample["resps"][0][0] == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(s["resps"][0][0], str) and "\n" not in s["resps"][0][0] for s in samples["gj_generate"])


def test_lm_eval_command_line_with_the_model_registered(setup, tmp_path):
    run_dir, _, tasks = setup
    src = Path(__file__).parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "gemini_jax.evals.lm_eval_adapter", "--model", NAME, "--model_args",
         f"checkpoint={run_dir}", "--batch_size", "4", "--tasks", "gj_choice", "--include_path", str(tasks),
         "--output_path", str(tmp_path / "out")],
        check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gj_choice" in done.stdout and "acc" in done.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_split_trailing_space():
    assert split_trailing_space("Answer: ", "B") == ("Answer:", " B")
    assert split_trailing_space("Answer:", " B") == ("Answer:", " B")
