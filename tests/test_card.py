"""Model cards (`gemini-jax card`): their tables read back to the results files exactly, the
safety section shows what was measured and nothing else, and a run without results says what
to do."""

import json
import re

import pytest

from gemini_jax import checkpoint, cli
from gemini_jax.card import NO_SAFETY, CardError, model_card, write_card
from gemini_jax.config import PRESETS

# Values whose shortest round-trip text is long, tiny, huge, integral or negative, and a
# metric name holding a table's separator: a card that rounds or mangles any of them fails.
RESULTS = {
    "vqa": {"exact_match": 93.9419001343947, "exact_match_yes|no": 0.1 + 0.2, "examples": 9673},
    "text": {"loss": 1 / 3, "perplexity": 2.5e20, "tokens": 200718.0, "delta": -1e-12, "documents": 135},
}
SAFETY = {"safety_text": {"violation_rate": 0.0125, "over_refusal_rate": 0.2, "examples": 80},
          "hedging": {"hedge_rate": 97.5, "answerable_accuracy": 90.25}}


def write_run(run_dir, *, summary=None, cache_dir=None):
    """A run directory of the `test` preset as training writes its files, with one finished step."""
    tokenizer = run_dir.parent / f"{run_dir.name}-tokenizer.model"
    tokenizer.write_bytes(b"the card reads only the config")  # never loaded by the card
    checkpoint.write_run_files(run_dir, config=PRESETS["test"], tokenizer_path=tokenizer)
    (run_dir / checkpoint.CHECKPOINTS_DIR / "40").mkdir(parents=True)
    if summary is not None:
        (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def demo_summary(results, cache_dir):
    recipe = {"preset": "test", "batch_size": 8, "mixture": None, "cache_dir": str(cache_dir), "corpus": {},
              "train": {"steps": 40, "seed": 3, "optimizer": {"learning_rate": 0.003, "warmup_steps": 5}}}
    return {**results, "task": "demo", "recipe": recipe,
            "run": {"training_s": 61.0, "peak_memory_mb": 900.5, "training_tokens_per_s": 1234.5}}


def _cells(row):
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def tables(markdown, section):
    """{"### heading": {"#### task": {metric: value}}} of a card's section, its cells read as JSON."""
    body = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for group in re.split(r"\n(?=### )", body):
        heading = group.splitlines()[0] if group.startswith("### ") else ""
        for block in group.split("\n#### ")[1:]:
            task, _, rest = block.partition("\n")
            rows = [_cells(line) for line in rest.splitlines() if line.startswith("|")]
            assert rows[:2] == [["metric", "value"], ["---", "---"]], rows[:2]
            found.setdefault(heading, {})[task] = {name: json.loads(value) for name, value in rows[2:]}
    return found


def test_the_card_tables_read_back_to_results_json_exactly(tmp_path):
    run = write_run(tmp_path / "run", summary=demo_summary(RESULTS, tmp_path / "cache"))
    card = model_card(run)
    assert tables(card, "Evaluation") == {"### `results.json` (the run's final evaluation)": RESULTS}
    assert "- Model: preset `test` (config.json matches it)" in card
    assert "1 KV head" not in card and "2 KV heads (grouped-query)" in card  # the test preset: 4 heads, 2 KV
    from gemini_jax.model.gemini import count_params
    assert f"- Parameters: {count_params(PRESETS['test'])['total']:,} " in card
    assert "- Checkpoint: step 40 (the latest)" in card
    assert "- Steps: 40" in card and "- Seed: 3" in card and "- Peak host memory: 900 MB" in card
    assert "not for any real use" in card
    assert f"## Safety evaluations\n\n{NO_SAFETY}" in card
    assert card == model_card(run)  # deterministic: nothing but the run's files goes in


def test_safety_tasks_and_rates_are_shown_as_measured(tmp_path):
    results = {**RESULTS, "vqa": {**RESULTS["vqa"], "hedge_rate": 0.05}, **SAFETY}
    run = write_run(tmp_path / "run", summary=demo_summary(results, tmp_path / "cache"))
    card = model_card(run)
    assert NO_SAFETY not in card
    evaluation = tables(card, "Evaluation")["### `results.json` (the run's final evaluation)"]
    safety = tables(card, "Safety evaluations")[""]
    assert evaluation == {k: v for k, v in results.items() if k not in SAFETY}
    assert safety == {"safety_text (`results.json`)": SAFETY["safety_text"],
                      "hedging (`results.json`)": SAFETY["hedging"],
                      "vqa (`results.json`, its safety metrics)": {"hedge_rate": 0.05}}


def test_a_run_without_results_needs_an_eval_file(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    with pytest.raises(CardError, match=r"no results\.json .*`gemini-jax eval --checkpoint .* --output eval\.json` .*`--results eval\.json`"):
        model_card(run)
    assert cli.main(["card", str(run)]) == 2
    assert "gemini-jax card: error:" in capsys.readouterr().err and not (run / "MODEL_CARD.md").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"vqa": {"exact_match": 1.0,}}')
    with pytest.raises(CardError, match=r"bad\.json:1: not valid JSON"):
        model_card(run, extra_results=[bad])
    with pytest.raises(checkpoint.CheckpointError, match=r"'.*nowhere' does not exist"):
        model_card(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match=r"'.*empty' is not a gemini-jax run directory: missing config"):
        model_card(tmp_path / "empty")
    # An eval file is enough: its tables, and training said to be unrecorded.
    extra = tmp_path / "eval.json"
    extra.write_text(json.dumps(RESULTS))
    card = model_card(run, extra_results=[extra])
    assert tables(card, "Evaluation") == {"### `eval.json`": RESULTS}
    assert "- Not recorded (no results.json)" in card


def test_a_data_run_summarises_its_prepared_data_report(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps(
        {"format": 1, "splits": {"train": {"files": [], "records": 0}}, "modalities": ["text", "image"]}))
    (prepared / "report.json").write_text(json.dumps({
        "stages": {"quality": {"records_in": 120, "records_removed": 15, "bytes_removed": 900, "examples": []},
                   "dedup": {"records_in": 105, "records_removed": 5, "bytes_removed": 300, "examples": []}},
        "totals": {"records_in": 121, "bytes_in": 5000, "bad_records": 1, "records_removed": 20,
                   "records_kept": 100},
        "splits": {"train": 90, "validation": 10}}))
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"sources": {"mine": {"path": "prepared"}}}))
    summary = {**RESULTS, "task": "data", "recipe": {"mixture": str(mixture), "preset": "test", "train": {}},
               "run": {}}
    card = model_card(write_run(tmp_path / "run", summary=summary))
    assert (f"- `mine` (`{prepared}`): 121 records read, 1 bad, 20 removed, 100 kept (train 90, validation 10); "
            "removed by stage: quality 15 of 120; dedup 5 of 105") in card
    assert "- Modalities trained on: text, image" in card
    assert "not for any real use" not in card and "Evaluate it on your own use" in card


def test_the_command_writes_the_card(tmp_path, capsys):
    run = write_run(tmp_path / "run", summary=demo_summary(RESULTS, tmp_path / "cache"))
    extra = tmp_path / "eval.json"
    extra.write_text(json.dumps(SAFETY))
    assert cli.main(["card", str(run), "--results", str(extra)]) == 0
    written = run / "MODEL_CARD.md"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_text() == model_card(run, extra_results=[extra])
    assert tables(written.read_text(), "Safety evaluations")[""] == {f"{name} (`eval.json`)": metrics for name, metrics in SAFETY.items()}
    out = tmp_path / "cards" / "card.md"
    assert write_card(run, out) == out and out.read_text() == model_card(run)
    assert not list(out.parent.glob("*.tmp"))
