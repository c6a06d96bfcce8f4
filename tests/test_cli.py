"""End to end on a tiny corpus: train, evaluate, generate from files; and the CLI's clear errors."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile

import gemini_jax
from gemini_jax import cli
from gemini_jax.config import PRESETS
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.corpora import speech
from gemini_jax.data.corpora.demo_prepared import prepare_demo_sources, task_rows
from gemini_jax.data.corpora.question_forms import typed_form
from gemini_jax.data.mixture_file import load_mixture
from gemini_jax.data.prepared import open_prepared
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.evals.registry import EvalOptions, evaluate_run
from gemini_jax.recipes import demo, train_and_evaluate
from gemini_jax.recipes.custom import DataRecipe, mixture_stream
from gemini_jax.train import TrainConfig

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)
SIZES = DemoSizes.tiny()


def with_steps(recipe: demo.DemoRecipe, steps: int, **train) -> demo.DemoRecipe:
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps, **train))


def tiny_recipe(root) -> demo.DemoRecipe:
    """The demo recipe on the tiny corpus and the test preset: 6 steps of 4 examples."""
    recipe = demo.DemoRecipe(run_dir=str(root / "run"), cache_dir=str(root / "cache"), batch_size=4, model=CONFIG,
                             corpus=SIZES, eval_limit=3)
    return with_steps(recipe, 6, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return root, train_and_evaluate(tiny_recipe(root))


def test_demo_trains_and_reports_every_task(run):
    root, results = run
    assert set(results) == {"vqa", "asr", "video", "text"}
    assert 0.0 <= results["vqa"]["exact_match"] <= 100.0 and results["vqa"]["examples"] == 3
    assert {"wer", "exact_match_number"} <= set(results["asr"])
    assert results["text"]["perplexity"] > 1.0
    saved = json.loads((root / "run" / "results.json").read_text())
    assert saved["run"]["training_s"] > 0 and saved["run"]["peak_memory_mb"] > 0
    assert (root / "run" / "loss.png").exists()


def test_the_demo_prepares_its_tasks_like_anyones_data(run):
    root, _ = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    sources = prepare_demo_sources(corpus, progress=False)
    for task in ("vqa", "asr", "video", "text"):
        records = corpus.records(task, "train")  # validation left out: the recipe scores it
        split = open_prepared(sources / task).split("train")
        assert len(split) == len(records)
        assert sorted(e.task for e in split) == sorted(f"{task}:{r.kind}" for r in records)
    # Questions as people type them: each in its one training form.
    questions = sorted(e.contents[0].parts[-1].text for e in open_prepared(sources / "vqa").split("train"))
    records = corpus.records("vqa", "train")
    keys = [(r.meta["prompt"], f"vqa:{r.meta['media']}:{r.meta['prompt']}") for r in records]
    assert questions == sorted(typed_form(question, key) for question, key in keys)
    assert questions != sorted(r.meta["prompt"] for r in records)


def test_the_demo_speeds_up_and_slows_down_a_third_of_its_speech_each(run, tmp_path):
    root, _ = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    records = corpus.records("asr", "train")
    ratios = []
    for record, row in zip(records, task_rows(corpus, "asr", tmp_path)):
        path = row["contents"][0]["parts"][0]["audio"]
        samples, _ = speech.read_wav(path)
        ratios.append(len(samples) / speech.SAMPLE_RATE / record.meta["duration_s"])
        assert (str(tmp_path) in path) == (abs(ratios[-1] - 1) > 0.01)
    # Every third clip slowed (played 0.6-0.9 times as fast: longer, also past the longest clip),
    # every third from the third on sped up (1.1-1.3 times: shorter), the rest as spoken.
    n = len(ratios)
    slower, faster = [r for r in ratios if r > 1.05], [r for r in ratios if r < 0.95]
    assert len(slower) == len(range(0, n, 3)) and len(faster) == len(range(2, n, 3))
    assert all(1 / 0.9 - 0.01 < r < 1 / 0.6 + 0.01 for r in slower)
    assert all(1 / 1.3 - 0.01 < r < 1 / 1.1 + 0.01 for r in faster)


def test_training_stream_follows_the_demo_mixture(run):
    root, _ = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    tokenizer = Tokenizer.load(root / "run" / "tokenizer.model")
    mixture = load_mixture(demo.demo_mixture(), base=prepare_demo_sources(corpus, progress=False))
    assert mixture.stage_steps(50) == [4, 5, 41] and mixture.stage_steps(10_000) == [900, 900, 8200]
    recipe = DataRecipe(mixture=str(mixture.path), model=CONFIG, batch_size=4, train=TrainConfig(steps=50))
    data = {name: open_prepared(source.path) for name, source in mixture.sources.items()}
    stream = mixture_stream(mixture, data, tokenizer=tokenizer, config=CONFIG, recipe=recipe)
    shapes = {"circle", "rectangle", "triangle"}

    def answers(batch):
        return {tokenizer.decode([int(t) for t in row[mask > 0]]).removesuffix("<end_of_turn>").strip()
                for row, mask in zip(batch["targets"], batch["loss_mask"]) if mask.any()}

    speech = [next(stream) for _ in range(4)]
    assert all("audio_mels" in b for b in speech)
    # Two groups by clip length, each padded to its own longest clip.
    assert len({b["audio_mels"].shape for b in speech}) == 2
    assert all("image_patches" in b and answers(b) <= shapes for b in (next(stream) for _ in range(5)))
    after = [next(stream) for _ in range(30)]
    assert any("frame_patches" in b for b in after)
    assert any(answers(b) & {"yes", "no"} for b in after if "image_patches" in b)
    # The shape questions keep a source of their own afterwards: whole batches of shape answers.
    assert any(answers(b) <= shapes for b in after if "image_patches" in b)


def test_eval_of_the_checkpoint_repeats_the_final_evaluation(run):
    root, results = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    options = EvalOptions(limit=3, progress=False, records=str(root / "records.jsonl"))
    again = evaluate_run(str(root / "run"), ["vqa", "asr", "video", "text"], options, corpus=corpus)
    assert again == results
    records = [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]
    assert len(records) == 9 and {"prompt", "output", "reference", "correct"} <= set(records[0])


def test_the_robustness_suite_scores_every_kind_beside_its_plain_set(run):
    root, _ = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    options = EvalOptions(limit=3, progress=False, records=str(root / "robustness.jsonl"))
    results = evaluate_run(str(root / "run"), ["robustness", "vqa"], options, corpus=corpus)
    metrics = results["robustness"]
    records = [json.loads(line) for line in (root / "robustness.jsonl").read_text().splitlines()]
    scored = {r["kind"].split(":")[0] for r in records if ":" in r["kind"]}  # "case:yes/no", ...
    assert scored >= {"case", "punctuation", "paraphrase", "images", "clips", "speech"}
    for kind in scored:
        assert 0.0 <= metrics[kind] <= 100.0
        assert metrics[f"{kind}_gap"] == pytest.approx(metrics[f"{kind}_plain"] - metrics[kind])
    # The plain VQA set the drawn images are compared with is the VQA set itself.
    assert metrics["images_plain"] == pytest.approx(results["vqa"]["exact_match"])


def test_generate_reads_image_audio_and_video_files(run, capsys):
    root, _ = run
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    media = {
        "--image": corpus.records("vqa", "test")[0].example.contents[0].parts[0].image,
        "--audio": corpus.records("asr", "test")[0].example.contents[0].parts[0].audio,
        "--video": corpus.records("video", "test")[0].example.contents[0].parts[0].video,
    }
    for flag, path in media.items():
        code = cli.main(["generate", "--checkpoint", str(root / "run"), flag, str(path), "--max-new-tokens", "3",
                         "What is it?"])
        assert code == 0, flag
    assert capsys.readouterr().out.count("\n") >= 3  # one printed answer per command


def test_the_python_api_loads_generates_and_evaluates_as_the_command_does(run, capsys):
    root, results = run
    loaded = gemini_jax.load(root / "run")
    assert loaded.step == 6 and loaded.config.width == CONFIG.width
    corpus = DemoCorpus.build(root / "cache", sizes=SIZES, progress=False)
    image = corpus.records("vqa", "test")[0].example.contents[0].parts[0].image
    answer = gemini_jax.generate(loaded, "What is it?", images=[image], max_new_tokens=3)
    assert cli.main(["generate", "--checkpoint", str(root / "run"), "--image", str(image), "--max-new-tokens", "3",
                     "What is it?"]) == 0
    assert capsys.readouterr().out == answer + "\n"
    assert gemini_jax.evaluate(loaded, ["vqa"], corpus=corpus, limit=3, progress=False) == {"vqa": results["vqa"]}


def _error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_gets_one_clear_line(run, capsys, tmp_path):
    root, _ = run
    ckpt = ["--checkpoint", str(root / "run")]
    assert "missing.png" in _error(["generate", *ckpt, "--image", str(tmp_path / "missing.png"), "hi"], capsys)

    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert "broken.png" in _error(["generate", *ckpt, "--image", str(tmp_path / "broken.png"), "hi"], capsys)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    assert "broken.wav" in _error(["generate", *ckpt, "--audio", str(tmp_path / "broken.wav"), "hi"], capsys)
    (tmp_path / "broken.gif").write_bytes(b"GIF89a nonsense")
    assert "broken.gif" in _error(["generate", *ckpt, "--video", str(tmp_path / "broken.gif"), "hi"], capsys)

    message = _error(["generate", "--checkpoint", str(tmp_path), "hi"], capsys)
    assert "not a gemini-jax run directory" in message and "config.json" in message
    assert "does not exist" in _error(["generate", "--checkpoint", str(tmp_path / "nowhere"), "hi"], capsys)

    message = _error(["train", "--preset", "enormous", "--run-dir", str(tmp_path / "r")], capsys)
    assert "unknown preset 'enormous'" in message and "demo" in message
    assert "--replica-every" in _error(["train", "--replica-every", "-1", "--run-dir", str(tmp_path / "r")], capsys)

    assert "context" in _error(["generate", *ckpt, "word " * 400], capsys)


@pytest.mark.parametrize("argv, flag", [
    (["generate", "--temperature", "-1", "hi"], "--temperature"), (["generate", "--top-p", "2", "hi"], "--top-p"),
    (["generate", "--top-k", "-1", "hi"], "--top-k"), (["generate", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["generate", "--temperature", "nan", "hi"], "--temperature"), (["train", "--steps", "-5"], "--steps"),
    (["train", "--batch-size", "0"], "--batch-size"), (["eval", "--limit", "0"], "--limit"),
    (["serve", "--port", "70000"], "--port"), (["distill", "--teacher", "t", "--alpha", "1.5"], "--alpha"),
])
def test_bad_flag_values_are_one_usage_line_before_anything_loads(argv, flag, capsys, tmp_path):
    # The checkpoint does not exist: a message about the flag shows it was refused while parsing.
    assert cli.main([*argv[:1], *(["--checkpoint", str(tmp_path)] if argv[0] in ("generate", "eval", "serve") else []),
                     *argv[1:]]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gemini-jax")]
    assert flag in line and "error" in line


def test_audio_at_another_rate_and_in_stereo_is_converted_with_a_note(run, tmp_path, capsys):
    root, _ = run
    t = np.arange(22_050) / 22_050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", stereo, 22_050)
    with pytest.warns(UserWarning) as notes:
        code = cli.main(["generate", "--checkpoint", str(root / "run"), "--audio", str(tmp_path / "stereo.wav"),
                         "--max-new-tokens", "2", "hi"])
    assert code == 0
    text = " ".join(str(n.message) for n in notes)
    assert "22050" in text and "16000" in text and "channel" in text


def test_the_command_restarts_once_with_huge_pages_for_large_allocations():
    from gemini_jax.cli import huge_pages_environ

    assert huge_pages_environ({"PATH": "/bin"}, "linux") == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux") == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    # Once set (the restarted process), elsewhere than Linux, or when the user opts out: no restart.
    assert huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux") is None
    assert huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux") is None
    assert huge_pages_environ({}, "darwin") is None
    assert huge_pages_environ({"GEMINI_JAX_NO_HUGE_PAGES": "1"}, "linux") is None


def test_every_flag_of_every_command_explains_itself():
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    for name, command in commands.choices.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help and action.help.strip(), f"gemini-jax {name} {action.option_strings}: no help"
        text = command.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name  # says nothing
    assert "steps between quick evaluations (0: only at the end) (default: 0)" in " ".join(
        commands.choices["train"].format_help().split())  # a default that tells something still shows


def test_distillation_takes_the_training_run_flags_for_scale_and_goodput():
    args = cli.build_parser().parse_args(
        ["distill", "--teacher", "runs/t", "--mesh", "data=2,fsdp=2", "--sdc-check-every", "5",
         "--replica-every", "10", "--loss-spike-factor", "3", "--coordinator", "h:1", "--num-processes", "2",
         "--process-id", "1"])
    assert (args.mesh, args.sdc_check_every, args.replica_every, args.loss_spike_factor) == ("data=2,fsdp=2", 5, 10, 3.0)
    assert (args.coordinator, args.num_processes, args.process_id) == ("h:1", 2, 1)


def test_eval_refuses_options_that_its_tasks_would_ignore(capsys):
    assert cli.main(["eval", "--tasks", "vqa", "--shots", "5", "--lengths", "256"]) == 2
    message = capsys.readouterr().err
    assert "do nothing for demo sets" in message and "--shots (for benchmarks only)" in message
    assert "--lengths (for long context only)" in message
    assert cli.main(["eval", "--tasks", "mmlu", "--cache-dir", "somewhere"]) == 2
    assert "--cache-dir (for demo sets only)" in capsys.readouterr().err
    assert cli.main(["eval", "--tasks", "kv_retrieval", "--records", "r.jsonl"]) == 2
    assert "--records (for benchmarks, demo sets and your data only)" in capsys.readouterr().err


def test_running_the_demo_again_resumes_its_run(run):
    """The README's promise: the same command again resumes (here: the run is complete, so it
    only evaluates again), its config and tokenizer accepted as the run's own."""
    root, results = run
    again = train_and_evaluate(tiny_recipe(root))
    assert again["vqa"]["exact_match"] == results["vqa"]["exact_match"]
    from gemini_jax.checkpoint import model_differences

    assert model_differences(json.loads(json.dumps(dataclasses.asdict(PRESETS["demo"]))), PRESETS["demo"]) == []


def test_serve_hands_its_limits_and_step_to_the_server(monkeypatch):
    from gemini_jax.sample import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda run_dir, **options: seen.update(options, run_dir=run_dir))
    assert cli.main(["serve", "--checkpoint", "runs/x", "--step", "3", "--max-image-pixels", "100",
                     "--media-workers", "3"]) == 0
    assert (seen["run_dir"], seen["step"], seen["max_image_pixels"], seen["media_workers"]) == ("runs/x", 3, 100, 3)
