"""The model family: every preset builds abstractly, its size matches the report and the docs."""

from pathlib import Path

import pytest

from gemini_jax import family
from gemini_jax.cli import main
from gemini_jax.config import PRESETS, REPORTED_PARAMS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "presets.md"


@pytest.fixture(scope="module")
def rows():
    return {name: family.describe(name, config) for name, config in PRESETS.items()}


def test_every_preset_builds_abstractly_with_the_expected_decoder(rows, decoder_params):
    for name, config in PRESETS.items():
        row = rows[name]
        assert row["decoder"] == decoder_params(config), name
        assert row["total"] == row["decoder"] + row["vision_params"] + row["audio_params"], name
        assert (row["vision_params"] > 0) == (config.vision is not None), name
        assert (row["audio_params"] > 0) == (config.audio is not None), name


def test_nano_sizes_match_the_report_within_3_percent(rows):
    for name, reported in REPORTED_PARAMS.items():
        assert abs(rows[name]["total"] / reported - 1) <= 0.03, (name, rows[name]["total"])
        config = PRESETS[name]
        assert config.num_kv_heads == 1 and config.vocab_size == 256_000 and config.max_seq_len == 32_768
    assert rows["nano-1"]["total"] < rows["nano-2"]["total"] < rows["pro"]["total"] < rows["ultra"]["total"]


def test_the_documented_table_is_the_computed_one(rows):
    table = family.table(list(rows.values()), markdown=True)
    assert table in DOCS.read_text(), f"{DOCS} is out of date: regenerate it with `gemini-jax presets --format markdown`"


def test_presets_command(capsys):
    assert main(["presets", "nano-1", "--format", "json"]) == 0
    assert '"preset": "nano-1"' in capsys.readouterr().out
    assert main(["presets", "nano-9"]) == 2
    assert "unknown preset 'nano-9'" in capsys.readouterr().err
