"""`data prepare`: sources and their errors, the pipeline's output, workers, a killed run, the command."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from gemini_jax.data.examples import text_document
from gemini_jax.data.prepare.pipeline import PrepareOptions, prepare
from gemini_jax.data.prepare.sources import RecordInvalid, iter_sources, load_record
from gemini_jax.data.prepared import PreparedDataError, open_prepared
from gemini_jax.data.records import DataError
from gemini_jax.data.tokenizer import Tokenizer

# Only the stages this file owns: the filters have their own tests.
BARE = dict(normalize=False, quality=False, safety=False, dedup=False, near_dedup=False, decontaminate=False)

PROSE = ("The river runs past the old mill and the children watch the water turn the wheel. "
         "In the evening the miller walks to the village with a sack of flour on his back, "
         "and the baker thanks him and gives him bread for his family. When winter comes the river "
         "freezes, the wheel stops, and the miller mends his nets by the fire.")


VOCAB = ("the of and to in that with have be river mill children water wheel evening miller village flour baker "
         "bread family winter frozen nets fire stone bridge market morning garden apple orchard lantern window "
         "teacher letter journey harbour sailor weather mountain valley shepherd meadow kitchen kettle candle").split()


def _prose(seed: int) -> str:
    """Eight sentences of ten random words: passes the quality rules, shares no 5-gram run with another seed."""
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(VOCAB) for _ in range(10)).capitalize() + "." for _ in range(8))


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _chat(i: int, image: str | None = None) -> dict:
    parts = ([{"image": image}] if image else []) + [{"text": f"What is item {i}?"}]
    return {"contents": [{"role": "user", "parts": parts}, {"role": "model", "parts": [{"text": f"Item {i}."}]}]}


def _errors(sources: list[str]) -> list[str]:
    messages = []
    for raw in iter_sources(sources):
        try:
            load_record(raw)
        except RecordInvalid as e:
            messages.append(str(e))
    return messages


def test_bad_records_name_file_line_and_field(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = _write_jsonl(tmp_path / "d.jsonl", [
        _chat(0, "ok.png"),
        "{not json",
        {"train_on": "all"},
        {"contents": [{"role": "system", "parts": [{"text": "hi"}]}]},
        {"contents": [{"role": "user", "parts": [{"pdf": "a.pdf"}]}]},
        _chat(5, "missing.png"),
        _chat(6, "broken.png"),
    ])
    messages = _errors([str(path)])
    assert len(messages) == 6
    for line, needle in zip(range(2, 8), ["malformed JSON", "no 'contents'", "role must be one of",
                                          "must be one of {'text'|'image'|'audio'|'video'", "does not exist",
                                          "not a readable image"]):
        message = next(m for m in messages if m.startswith(f"{path}:{line}:"))
        assert needle in message, message
    assert "contents[0].parts[0].image" in messages[-2]


def test_media_come_back_as_bytes_and_text_files_as_documents(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    _write_jsonl(tmp_path / "d.jsonl", [_chat(0, "ok.png")])
    (tmp_path / "notes.md").write_text("hello\n")
    examples = [load_record(raw) for raw in iter_sources([str(tmp_path)])]
    assert [type(examples[0].contents[0].parts[0].image)] == [bytes]  # the png beside the JSONL is not a document
    assert examples[1] == text_document("hello\n")


def test_one_image_behind_many_records_is_decoded_once(tmp_path, monkeypatch):
    from gemini_jax.data import media

    Image.new("RGB", (5, 3), (1, 2, 3)).save(tmp_path / "shared.png")
    Image.new("RGB", (5, 3), (3, 2, 1)).save(tmp_path / "other.png")
    _write_jsonl(tmp_path / "d.jsonl", [_chat(i, "shared.png") for i in range(4)] + [_chat(9, "other.png")])
    decoded = []
    load_image = media.load_image
    monkeypatch.setattr(media, "load_image", lambda data: decoded.append(data) or load_image(data))
    examples = [load_record(raw) for raw in iter_sources([str(tmp_path / "d.jsonl")])]
    assert len(examples) == 5 and len(decoded) == 2


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_sources([str(tmp_path / "nope.jsonl")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        list(iter_sources([str(tmp_path / "empty")]))
    (tmp_path / "e.jsonl").write_text("\n")
    (tmp_path / "e.txt").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(f"# {PROSE}\n")
    report = prepare([str(tmp_path / "pkg")], str(tmp_path / "out"), PrepareOptions(**BARE), progress=False)
    assert report["skipped_files"]["count"] == 1 and report["bad_records"]["count"] == 0  # an empty file in a folder
    assert _errors([str(tmp_path / "e.jsonl"), str(tmp_path / "e.txt")]) == [
        f"{tmp_path / 'e.jsonl'}: an empty JSONL file: no records (one JSON object a line expected)",
        f"{tmp_path / 'e.txt'}: an empty text file: no document"]


def test_bad_records_are_counted_up_to_the_budget(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(20)] + ["{bad", "[1]"])
    report = prepare([str(path)], str(tmp_path / "ok"), PrepareOptions(**BARE, max_bad_records=2), progress=False)
    assert report["bad_records"]["count"] == 2 and report["totals"]["records_kept"] == 20
    assert report["bad_records"]["first"][0].startswith(f"{path}:21: malformed JSON")
    with pytest.raises(DataError, match=r"2 bad records exceed --max-bad-records=1; first errors:\n .*d.jsonl:21"):
        prepare([str(path)], str(tmp_path / "no"), PrepareOptions(**BARE, max_bad_records=1), progress=False)
    assert not (tmp_path / "no").exists()


def test_prepared_directory_round_trips(tmp_path):
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "red.png")
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i, "red.png") for i in range(40)])
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"{i}.txt").write_text(f"Document {i}. {PROSE}")
    options = PrepareOptions(**BARE, validation_fraction=0.25, test_fraction=0.25, records_per_shard=8)
    report = prepare([str(path), str(docs)], str(tmp_path / "out"), options, progress=False)
    data = open_prepared(tmp_path / "out")
    counts = {name: len(data.split(name)) for name in ("train", "validation", "test")}
    assert counts == report["splits"] and sum(counts.values()) == 80 and min(counts.values()) >= 10
    assert data.modalities == ("text", "image") and not data.text_only and data.tokenizer_path is None
    texts = set()
    for name in counts:
        for example in data.split(name):
            texts.add(example.contents[-1].parts[0].text)
            if not example.raw_text:
                assert example.contents[0].parts[0].image == (tmp_path / "red.png").read_bytes()
    assert len(texts) == 80
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    listed = {f for split in data.manifest["splits"].values() for f in split["files"]}
    assert {p.name for p in (tmp_path / "out").iterdir()} == listed | {"manifest.json", "report.json"}
    for name, split in data.manifest["splits"].items():
        n = -(-split["records"] // 8)
        assert split["files"] == [f"{name}-{i:05d}-of-{n:05d}.array_record" for i in range(n)]


def test_split_follows_the_record_not_its_position(tmp_path):
    rows = [_chat(i) for i in range(60)]
    options = PrepareOptions(**BARE, validation_fraction=0.3)

    def validation_texts(name: str, order: list) -> set[str]:
        path = _write_jsonl(tmp_path / f"{name}.jsonl", order)
        prepare([str(path)], str(tmp_path / name), options, progress=False)
        return {e.contents[1].parts[0].text for e in open_prepared(tmp_path / name).split("validation")}

    forward = validation_texts("forward", rows)
    assert forward == validation_texts("backward", rows[::-1]) and 5 < len(forward) < 35


def test_a_group_lands_in_one_split(tmp_path):
    """Ten groups of six examples (say, copies of one image): each group whole in one split."""
    rows = [_chat(i) | {"group": i // 6} for i in range(60)]
    path = _write_jsonl(tmp_path / "g.jsonl", rows)
    prepare([str(path)], str(tmp_path / "out"), PrepareOptions(**BARE, validation_fraction=0.3), progress=False)
    data = open_prepared(tmp_path / "out")
    groups = {name: {e.group for e in data.split(name)} for name in ("train", "validation")}
    assert groups["validation"] and groups["train"] and not groups["train"] & groups["validation"]
    assert len(data.split("validation")) == 6 * len(groups["validation"])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_chat(0) | {"group": [1]}])
    assert _errors([str(bad)]) == [f"{bad}:1: 'group' must be a string or an integer, got [1]"]


def test_text_only_tokenizer_and_filters(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"Document {i}.\n{PROSE}\n")
    (docs / "short.txt").write_text("Too short to keep.\n")  # the heuristic quality filter's
    options = PrepareOptions(**(BARE | dict(quality=True, normalize=True)), vocab_size=400)
    report = prepare([str(docs)], str(tmp_path / "out"), options, progress=False)
    data = open_prepared(tmp_path / "out")
    assert data.text_only and data.modalities == ("text",)
    assert report["stages"]["quality"]["records_removed"] == 1
    assert report["stages"]["quality"]["examples"][0]["where"] == str(docs / "short.txt")
    assert data.tokenizer_path.is_file() and data.manifest["tokenizer_sha256"]
    copied = prepare([str(docs)], str(tmp_path / "copy"), PrepareOptions(**BARE, tokenizer=str(data.tokenizer_path)),
                     progress=False)
    assert copied["totals"]["records_kept"] == 31
    assert open_prepared(tmp_path / "copy").manifest["tokenizer_sha256"] == data.manifest["tokenizer_sha256"]


def test_case_marking_tokenizer_is_trained_on_request(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"Document {i}.\n{PROSE}\n")
    prepare([str(docs)], str(tmp_path / "out"), PrepareOptions(**BARE, vocab_size=400, case_markers=True),
            progress=False)
    tok = Tokenizer.load(open_prepared(tmp_path / "out").tokenizer_path)
    assert tok.case_markers and tok.decode(tok.encode("Document 7. Said")) == "Document 7. Said"
    with pytest.raises(DataError, match="--case-markers applies to a tokenizer trained here"):
        PrepareOptions(**BARE, case_markers=True)


def test_every_stage_removes_what_it_should(tmp_path):
    for name, color in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        Image.new("RGB", (4, 4), color).save(tmp_path / f"{name}.png")
    leaked = "the quick brown fox jumps over the lazy dog while the farmer counts his seven sheep"
    _write_jsonl(tmp_path / "eval.jsonl", [{"contents": [{"role": "user", "parts": [{"text": leaked}]}]}])
    chats = _write_jsonl(tmp_path / "chats.jsonl", [_chat(0, "red.png"), _chat(0, "blue.png"), _chat(0, "red.png")])
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"{i:02d}.txt").write_text(_prose(i))
    (docs / "exact.txt").write_text(_prose(3).upper())  # exact dedup ignores case and spacing
    (docs / "near.txt").write_text(_prose(4)[:-1] + " kettle.")
    (docs / "leak.txt").write_text(f"{_prose(30)} {leaked}.")
    (docs / "rude.txt").write_text(_prose(31) + " fuck" * 5)
    (docs / "short.txt").write_text("Too short.")
    options = PrepareOptions(eval_jsonl=(str(tmp_path / "eval.jsonl"),), workers=2, records_per_shard=7)
    report = prepare([str(chats), str(docs)], str(tmp_path / "out"), options, progress=False)
    removed = {name: [e["where"] for e in stage["examples"]] for name, stage in report["stages"].items()}
    assert removed == {"normalize": [], "quality": [str(docs / "short.txt")], "safety": [str(docs / "rude.txt")],
                       "decontaminate": [str(docs / "leak.txt")], "dedup": [f"{chats}:3", str(docs / "exact.txt")],
                       "near_dedup": [str(docs / "near.txt")]}
    assert "eval.jsonl" in report["stages"]["decontaminate"]["examples"][0]["reason"]
    assert report["totals"]["records_kept"] == 22  # 20 documents, the question about red and the one about blue
    assert report["stages"]["quality"]["records_in"] == 25  # the documents: chats are not held to prose rules
    assert report["stages"]["dedup"]["records_in"] == 25 and report["stages"]["near_dedup"]["records_in"] == 23


def test_out_is_refused_when_it_holds_something(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(5)])
    prepare([str(path)], str(tmp_path / "out"), PrepareOptions(**BARE), progress=False)
    with pytest.raises(DataError, match="pass --overwrite"):
        prepare([str(path)], str(tmp_path / "out"), PrepareOptions(**BARE), progress=False)
    prepare([str(path)], str(tmp_path / "out"), PrepareOptions(**BARE, overwrite=True), progress=False)
    with pytest.raises(DataError, match="not a prepared data directory"):
        prepare([str(path)], str(tmp_path), PrepareOptions(**BARE, overwrite=True), progress=False)
    with pytest.raises(DataError, match="inside the source folder"):
        prepare([str(tmp_path)], str(tmp_path / "new"), PrepareOptions(**BARE), progress=False)


def test_two_workers_write_the_same_bytes_as_one(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(300)] + ["{bad"]
                        + [{"contents": [{"role": "model", "parts": [{"text": _prose(i % 20)}]}]} for i in range(40)])
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        options = PrepareOptions(workers=workers, records_per_shard=50, max_bad_records=1)
        prepare([str(path)], str(out), options, progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        outputs.append((manifest["splits"], {p.name: p.read_bytes() for p in out.glob("*.array_record")}))
    assert outputs[0] == outputs[1] and outputs[0][0]["train"]["records"] > 250
    assert sum(split["records"] for split in outputs[0][0].values()) == 320  # 20 of the 40 documents are duplicates


KILLED_RUN = textwrap.dedent("""
    import sys
    from gemini_jax.data.prepare.pipeline import PrepareOptions, prepare
    prepare([sys.argv[1]], sys.argv[2], PrepareOptions(normalize=False, quality=False, safety=False, dedup=False,
            near_dedup=False, decontaminate=False), progress=False)
""")


def test_a_killed_run_leaves_only_partial_and_a_rerun_restarts(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(30_000)])
    out = tmp_path / "out"
    spool = tmp_path / "out.partial" / "spool.array_record"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path), str(out)])
    try:
        while not spool.exists() and process.poll() is None:  # the run has started writing
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not out.exists() and (tmp_path / "out.partial").is_dir()
    with pytest.raises(PreparedDataError, match="unfinished"):
        open_prepared(tmp_path / "out.partial")
    with pytest.raises(PreparedDataError, match="did not finish, rerun it"):
        open_prepared(out)
    _write_jsonl(path, [_chat(i) for i in range(50)])
    report = prepare([str(path)], str(out), PrepareOptions(**BARE), progress=False)
    assert report["totals"]["records_kept"] == 50 and not (tmp_path / "out.partial").exists()
    assert sum(len(open_prepared(out).split(s)) for s in ("train", "validation")) == 50


def _parse(argv: list[str]) -> argparse.Namespace:
    from gemini_jax.cli import data_command

    parser = argparse.ArgumentParser(prog="gemini-jax")
    data_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_runs_prepare(tmp_path, capsys):
    from gemini_jax.cli import data_command

    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(10)])
    args = _parse(["data", "prepare", str(path), "--out", str(tmp_path / "out"), "--no-quality", "--no-safety",
                   "--no-dedup", "--no-near-dedup", "--no-decontaminate", "--validation-fraction", "0.2",
                   "--records-per-shard", "4", "--no-progress"])
    data_command.run(args)
    manifest = open_prepared(tmp_path / "out").manifest
    assert manifest["options"]["records_per_shard"] == 4 and manifest["options"]["validation_fraction"] == 0.2
    with pytest.raises(SystemExit):
        _parse(["data", "prepare", str(path), "--out", "x", "--validation-fraction", "1.5"])
    assert "--validation-fraction" in capsys.readouterr().err


def test_through_the_command_line(tmp_path, capsys):
    from gemini_jax.cli import main

    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(i) for i in range(10)] + ["{oops"])
    out = str(tmp_path / "out")
    assert main(["data", "prepare", str(path), "--out", out, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "gemini-jax data: error: 1 bad records exceed --max-bad-records=0" in error and "d.jsonl:11" in error
    assert main(["data", "prepare", str(path), "--out", out, "--no-progress", "--max-bad-records", "1"]) == 0
    assert open_prepared(out).manifest["options"]["max_bad_records"] == 1
    assert main(["data", "prepare", str(tmp_path / "nope"), "--out", out, "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "prepare", "--help"]) == 0
    assert "--near-dedup-threshold" in capsys.readouterr().out

