"""`data prepare --executor`: datatrove's local and Slurm executors write the same bytes as one process,
and a rerun resumes or restarts as it should. Slurm runs through a fake `sbatch` that runs each job here."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from test_data_prepare import BARE, _chat, _prose, _write_jsonl

from gemini_jax.data.prepare import cluster, pipeline
from gemini_jax.data.prepare.pipeline import PrepareOptions, prepare
from gemini_jax.data.records import DataError

pytest.importorskip("datatrove")


def _corpus(tmp_path: Path) -> list[str]:
    """Chats, a bad line, exact and near duplicates, a document too short to keep, an empty file in a folder."""
    rows = ([_chat(i) for i in range(300)] + ["{bad"]
            + [{"contents": [{"role": "model", "parts": [{"text": _prose(i % 20)}]}]} for i in range(40)])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "__init__.py").write_text("")
    (docs / "naïve.txt").write_text(_prose(4)[:-1] + " kettle.")  # a near duplicate of _prose(4)
    (docs / "short.txt").write_text("Too short.")
    return [str(_write_jsonl(tmp_path / "d.jsonl", rows)), str(docs)]


def _output(out: Path) -> dict:
    """Everything the run wrote but the timings and the options that say where it ran."""
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    for name in ("executor", "tasks", "workers", "logging_dir", "slurm_partition", "slurm_time", "sbatch_args"):
        manifest["options"].pop(name)
    for name in ("seconds", "mb_per_s"):
        report.pop(name)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("manifest.json", "report.json")}
    return {"manifest": manifest, "report": report, "files": files}


# Options with every stage this file touches on; decontamination (2 s to build in every task) off.
OPTIONS = {"decontaminate": False, "records_per_shard": 50, "max_bad_records": 1}


def test_local_tasks_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "TASK_CHUNK", 16)  # 22 chunks: each task takes several (forked tasks see this)
    sources = _corpus(tmp_path)
    expected = prepare(sources, str(tmp_path / "one"), PrepareOptions(**OPTIONS), progress=False)
    assert expected["bad_records"]["count"] == 1 and expected["skipped_files"]["count"] == 1
    assert {name: s["records_removed"] for name, s in expected["stages"].items() if s["records_removed"]} == {
        "quality": 1, "dedup": 20, "near_dedup": 1}
    out = tmp_path / "dist"
    report = prepare(sources, str(out), PrepareOptions(**OPTIONS, executor="local", tasks=3, workers=2),
                     progress=False)
    assert _output(out) == _output(tmp_path / "one")
    assert report == json.loads((out / "report.json").read_text())
    assert not Path(f"{out}.partial").exists()
    assert sorted(p.name for p in (tmp_path / "dist.logs" / "map" / "completions").iterdir()) == [
        "00000", "00001", "00002"]


def _task_logs(logs: Path) -> dict[str, int]:
    """When each map task last ran (datatrove rewrites a task's log when it runs it)."""
    return {p.name: p.stat().st_mtime_ns for p in (logs / "map" / "logs").iterdir()}


def test_a_rerun_keeps_finished_map_tasks_or_starts_afresh(tmp_path):
    sources = _corpus(tmp_path)
    prepare(sources, str(tmp_path / "one"), PrepareOptions(**OPTIONS), progress=False)
    out, partial, logs = tmp_path / "dist", tmp_path / "dist.partial", tmp_path / "dist.logs"
    options = PrepareOptions(**(OPTIONS | {"max_bad_records": 0}), executor="local", tasks=3, workers=2)
    with pytest.raises(DataError, match="1 bad records exceed"):  # found in the reduce task, after the map tasks
        prepare(sources, str(out), options, progress=False)
    assert not out.exists() and sorted(p.name for p in (partial / "map").iterdir()) == [
        "00000.array_record", "00001.array_record", "00002.array_record"]
    assert (partial / "spool.array_record").exists()  # the reduce task's leftovers: the rerun clears them
    (partial / "map" / "00001.array_record").unlink()  # as if lost: that task runs again, the others do not
    before = _task_logs(logs)
    # --max-bad-records only matters to the reduce task: the map files are kept.
    prepare(sources, str(out), PrepareOptions(**OPTIONS, executor="local", tasks=3, workers=2), progress=False)
    after = _task_logs(logs)
    assert [name for name in before if after[name] != before[name]] == ["task_00001.log"]
    assert _output(out) == _output(tmp_path / "one") and not partial.exists()

    # Output deleted after a finished run: datatrove's markers say done, the run starts afresh anyway.
    import shutil

    shutil.rmtree(out)
    prepare(sources, str(out), PrepareOptions(**OPTIONS, executor="local", tasks=3, workers=2), progress=False)
    assert _output(out) == _output(tmp_path / "one")

    # A partial run with other filter options: everything runs again.
    shutil.rmtree(out)
    with pytest.raises(DataError, match="bad records exceed"):
        prepare(sources, str(out), options, progress=False)
    before = _task_logs(logs)
    changed = PrepareOptions(**(OPTIONS | {"near_dedup": False}), executor="local", tasks=3, workers=2)
    report = prepare(sources, str(out), changed, progress=False)
    assert all(after != before[name] for name, after in _task_logs(logs).items())
    assert report["stages"].keys() == {"normalize", "quality", "safety", "dedup"}

    # A source that changed restarts the run too.
    shutil.rmtree(out)
    with pytest.raises(DataError, match="bad records exceed"):
        prepare(sources, str(out), options, progress=False)
    Path(sources[0]).write_text(Path(sources[0]).read_text().replace("{bad\n", ""))
    report = prepare(sources, str(out), options, progress=False)
    assert report["bad_records"]["count"] == 0


FAKE_SBATCH = textwrap.dedent("""
    # sbatch for the tests: records its arguments and script, runs every array index here, in order.
    import json, os, re, subprocess, sys

    args, script = sys.argv[1:-1], sys.argv[-1]
    text = open(script).read()
    with open(os.environ["FAKE_SBATCH_LOG"], "a+") as log:
        log.seek(0)
        job = str(len(log.readlines()) + 1)
        log.write(json.dumps({"args": args, "script": text}) + "\\n")
    last = int(re.search(r"^#SBATCH --array=0-(\\d+)", text, re.M).group(1))
    offset = re.search(r"RUN_OFFSET=(\\d+)", " ".join(args))
    for index in range(last + 1):
        env = dict(os.environ, SLURM_JOB_ID=job, SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(index),
                   SLURM_NODELIST="localhost", RUN_OFFSET=offset.group(1) if offset else "0")
        done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"job {job}_{index} failed:\\n{done.stdout}\\n{done.stderr}")
    print(f"Submitted batch job {job}")
""")
FAKE_SRUN = 'while [ $# -gt 0 ]; do case "$1" in -n|-N) shift 2;; -*) shift;; *) break;; esac; done\nexec "$@"\n'
FAKE_SCONTROL = 'if [ "$1 $2" = "show hostnames" ]; then echo "$3"; fi\n'


def _fake_slurm(folder: Path) -> Path:
    folder.mkdir()
    for name, body in (("sbatch", f"#!{sys.executable}\n{FAKE_SBATCH}"), ("srun", f"#!/bin/bash\n{FAKE_SRUN}"),
                       ("scontrol", f"#!/bin/bash\n{FAKE_SCONTROL}")):
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    return folder


def test_slurm_submits_map_and_reduce_jobs_that_write_the_same_bytes(tmp_path, monkeypatch, capsys):
    from gemini_jax.cli import main

    sources = _corpus(tmp_path)
    monkeypatch.setenv("PATH", f"{_fake_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(tmp_path / "sbatch.jsonl"))
    expected = PrepareOptions(**(BARE | {"dedup": True}), max_bad_records=1)
    prepare(sources, str(tmp_path / "one"), expected, progress=False)
    out = tmp_path / "dist"
    assert main(["data", "prepare", *sources, "--out", str(out), "--no-normalize", "--no-quality", "--no-safety",
                 "--no-near-dedup", "--no-decontaminate", "--max-bad-records", "1", "--executor", "slurm",
                 "--tasks", "2", "--workers", "2", "--slurm-partition", "cpu", "--slurm-time", "0:30:00",
                 "--sbatch-arg", "account=proj", "--logging-dir", str(tmp_path / "logs"), "--no-progress"]) == 0
    assert "submitted map job 1 (2 tasks) and reduce job 3" in capsys.readouterr().err
    assert _output(out) == _output(tmp_path / "one")
    jobs = [json.loads(line) for line in (tmp_path / "sbatch.jsonl").read_text().splitlines()]
    assert len(jobs) == 4  # map, its stats merge, reduce, its stats merge
    (map_job, reduce_job) = jobs[0], jobs[2]
    for line in ("--partition=cpu", "--time=0:30:00", "--array=0-1", "--cpus-per-task=2", "--mem-per-cpu=2G",
                 "--account=proj", "--job-name=gemini-jax-prepare-map"):
        assert f"#SBATCH {line}\n" in map_job["script"]
    assert "--qos" not in map_job["script"] and "launch_pickled_pipeline" in map_job["script"]
    assert "#SBATCH --array=0-0\n" in reduce_job["script"] and "--dependency=afterok:1" in reduce_job["args"]
    assert (tmp_path / "logs" / "map" / "completions" / "00001").exists()


def test_options_and_a_missing_datatrove(tmp_path, monkeypatch):
    for bad, message in (({"tasks": 2}, "--tasks goes with --executor"),
                         ({"executor": "slurm"}, "needs --slurm-partition and --slurm-time"),
                         ({"executor": "local", "slurm_partition": "cpu"}, "go with --executor slurm"),
                         ({"executor": "cloud"}, "must be 'local' or 'slurm'")):
        with pytest.raises(DataError, match=message):
            PrepareOptions(**bad)
    path = _write_jsonl(tmp_path / "d.jsonl", [_chat(0)])
    monkeypatch.setitem(sys.modules, "datatrove.executor", None)  # an import of it fails
    with pytest.raises(DataError, match=r'pip install "gemini-jax\[distributed\]"'):
        prepare([str(path)], str(tmp_path / "out"), PrepareOptions(**BARE, executor="local"), progress=False)
    assert not (tmp_path / "out.partial").exists()


def test_outcomes_round_trip_without_pickle():
    filters = pipeline.build_filters(PrepareOptions(decontaminate=False))
    raws = [pipeline.RawRecord("a.jsonl:1", "jsonl", json.dumps({"contents": [{"role": "model", "parts": [
                {"text": _prose(1)}]}]})),
            pipeline.RawRecord("odd-\udcff.txt", "text", "Too short."),
            pipeline.RawRecord("a.jsonl:2", "jsonl", "{bad")]
    for raw in raws:
        outcome = pipeline.process(raw, filters)
        back = cluster.decode_outcome(cluster.encode_outcome(outcome))
        assert dataclasses.replace(back, signature=None) == dataclasses.replace(outcome, signature=None)
        assert back.signature is None or back.signature.tobytes() == outcome.signature.tobytes()
    assert [pipeline.process(raw, filters).signature is not None for raw in raws] == [True, False, False]
