"""The image generation eval: its judge against hand labels, its scoring rules, and the task on a
tiny fresh run that writes images."""

import dataclasses
import inspect
import json
import re
import textwrap

import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import PRESETS, ImageOutputConfig
from gemini_jax.data.corpora.drawings import DrawingCorpus, DrawingSizes, load_png
from gemini_jax.data.corpora.robustness import VQA_COLOURS
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.evals.image_judge import ImageJudge, mask_iou
from gemini_jax.evals.registry import EvalOptions, evaluate
from gemini_jax.evals.tasks import image_generation
from gemini_jax.evals.tasks.image_generation import ImageGeneration, judge_requests, score_requests, wrong_pairs
from gemini_jax.model.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, save_image_tokenizer
from gemini_jax.sample.image_output import IMAGE_TOKENIZER_DIR

SIZES = DrawingSizes(draw_train=150, edit_train=150, draw_validation=4, edit_validation=4, draw_test=6, edit_test=6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def corpus(cache):
    return DrawingCorpus.build(cache, sizes=SIZES)


@pytest.fixture(scope="module")
def judge(corpus):
    train = corpus.records("draw", "train") + corpus.records("edit", "train")
    return ImageJudge.fit(np.stack([load_png(d.image) for d in train]), [d.target.shape for d in train])


def _hand_drawn(shape: str, colour: str, *, centre=(30, 36), radius=12, background=(245, 240, 235)) -> np.ndarray:
    """A picture drawn here with array arithmetic (not the corpus's renderer), so its label is known."""
    rows, cols = np.mgrid[0:64, 0:64]
    cy, cx = centre
    if shape == "circle":
        inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    elif shape == "rectangle":
        inside = (abs(rows - cy) <= radius // 2) & (abs(cols - cx) <= radius)
    else:  # apex up, base at the bottom: half-width grows linearly with the row
        inside = (rows >= cy - radius) & (rows <= cy + radius) & (abs(cols - cx) <= (rows - (cy - radius)) / 2)
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    image[inside] = VQA_COLOURS[colour]
    return image


def test_the_judge_names_hand_labelled_pictures(judge):
    labels = [("circle", "red"), ("rectangle", "teal"), ("triangle", "blue"), ("circle", "gray"),
              ("rectangle", "black"), ("triangle", "yellow"), ("circle", "brown"), ("triangle", "green")]
    pictures = [_hand_drawn(s, c, centre=(20 + 3 * i, 40 - 2 * i), radius=9 + i) for i, (s, c) in enumerate(labels)]
    verdicts = judge.judge(pictures + [np.full((64, 64, 3), 240, np.uint8)])
    assert [(v.shape, v.colour) for v in verdicts[:-1]] == labels
    assert verdicts[-1].shape is None and verdicts[-1].colour is None  # a blank picture holds no shape
    assert mask_iou(verdicts[0].mask, verdicts[0].mask) == 1.0


def test_scoring_passes_real_targets_and_fails_what_was_not_asked(judge, corpus):
    draw, edit = corpus.records("draw", "test"), corpus.records("edit", "test")
    assert all(score_requests(judge, draw + edit, [load_png(r.image) for r in draw + edit]))
    assert not any(score_requests(judge, edit, [load_png(r.source_image) for r in edit]))  # nothing changed
    assert not any(score_requests(judge, draw, [None] * len(draw)))  # no image
    # The right shape and colour half a picture away is no edit (shapes are at most 34 pixels wide).
    assert not any(score_requests(judge, edit, [np.roll(load_png(r.image), 32, axis=1) for r in edit]))
    for i, j in enumerate(wrong_pairs(draw)):
        assert (draw[i].target.shape, draw[i].target.colour) != (draw[j].target.shape, draw[j].target.colour)


def test_judged_requests_say_what_the_judge_saw(judge, corpus):
    draw, edit = corpus.records("draw", "test"), corpus.records("edit", "test")
    judged = judge_requests(judge, draw + edit, [load_png(r.image) for r in draw + edit])
    assert [(v.shape, v.colour) for _, v, _ in judged] == [(r.target.shape, r.target.colour) for r in draw + edit]
    assert [iou for _, _, iou in judged] == [None] * len(draw) + [1.0] * len(edit)  # an edit's own target
    moved = judge_requests(judge, edit, [np.roll(load_png(r.image), 32, axis=1) for r in edit])
    assert not any(ok for ok, _, _ in moved)
    assert any(iou is not None and iou < 0.5 for _, _, iou in moved)  # right shape and colour, in the wrong place
    assert judge_requests(judge, draw, [None] * len(draw)) == [(False, None, None)] * len(draw)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """(model, tokenizer, run directory): a fresh test-preset decoder writing images as the recipe's
    does (code places embedded) and, in the directory, a 64x64 image tokenizer of 9 codes, 16 an image."""
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.model import Gemini

    tokenizer_config = ImageTokenizerConfig(image_size=64, factor=16, levels=(3, 3), widths=(4, 4, 4, 4))
    tok = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer([inspect.getsource(textwrap), "Draw a red circle. Make the shape blue.\n" * 30], vocab_size=400,
                    path=tok)
    config = dataclasses.replace(PRESETS["test"], vocab_size=400 + tokenizer_config.codebook_size, vision=None,
                                 audio=None,
                                 image_output=ImageOutputConfig(codebook_size=tokenizer_config.codebook_size,
                                                                codes_per_image=tokenizer_config.codes_per_image,
                                                                code_positions=True))
    run_dir = tmp_path_factory.mktemp("run")
    save_image_tokenizer(ImageTokenizer(tokenizer_config, rngs=nnx.Rngs(0)), run_dir / IMAGE_TOKENIZER_DIR)
    return Gemini(config, rngs=nnx.Rngs(0)), Tokenizer.load(tok), run_dir


def test_the_task_on_a_tiny_fresh_model(image_model, cache, tmp_path):
    from gemini_jax.sample.image_output import write_unconditional_prompt

    model, tokenizer, run_dir = image_model
    write_unconditional_prompt(run_dir, "Draw a red circle.")  # so the edits are also asked as `--edit` asks
    task = ImageGeneration(corpus_sizes=SIZES)
    records = tmp_path / "records.jsonl"
    # Temperature 30: a random model opens an image span now and then, so some replies hold one.
    options = EvalOptions(cache_dir=str(cache), limit=5, temperature=30.0, seed=1, records=str(records), progress=False)
    metrics = evaluate(model, tokenizer, [task], options, run_dir=run_dir)["image_generation"]
    assert metrics["examples"] == 10
    for kind in ("draw", "edit"):
        for name in ("", "_images", "_real", "_tokenized", "_random", "_wrong_prompt"):
            assert 0.0 <= metrics[kind + name] <= 100.0
        assert metrics[f"{kind}_real"] == 100.0  # the judge's ceiling on real pictures
    assert 0.0 <= metrics["edit_unchanged"] <= 100.0 and 0.0 <= metrics["edit_given"] <= 100.0
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 10 and {r["kind"] for r in lines} == {"draw", "edit"}
    for record in lines:  # what the judge saw, beside what was asked
        assert (record["seen"] is None) == (not record["drew"])
        assert not record["correct"] or record["seen"] == record["target"]


def test_a_text_only_run_is_refused(tmp_path):
    from gemini_jax.evals.eval_task import EvalContext
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.model import Gemini

    model = Gemini(PRESETS["test"], rngs=nnx.Rngs(0))
    context = EvalContext(model=model, tokenizer=None, options=EvalOptions(), run_dir=tmp_path)
    with pytest.raises(TaskDataError, match="writes text only"):
        image_generation.ImageGeneration().check(context)


def test_the_recipe_reserves_the_codes_above_the_text_pieces():
    from gemini_jax.recipes.image_generation import ImageGenerationRecipe

    config = ImageGenerationRecipe().model_config(text_pieces=301, codebook_size=1000, codes_per_image=64)
    assert config.vocab_size == 1301 and config.first_image_code == 301
    # Rows for edits and drawings, with room for each picture's layout sentence where replies say one.
    assert ImageGenerationRecipe().row_lengths() == (200, 104)
    assert ImageGenerationRecipe(reply_layout=True).row_lengths() == (212, 110)
    assert config.image_output == ImageOutputConfig(codebook_size=1000, codes_per_image=64, code_positions=True)
    # Every picture it reads is one it could have written (an edit's source, as codes): no encoders.
    assert config.vision is None and config.audio is None


def test_the_recipe_copies_a_given_image_tokenizer_and_refuses_a_bad_one(corpus, tmp_path, capsys):
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.cli import main
    from gemini_jax.recipes.image_generation import ImageGenerationRecipe

    given = tmp_path / "given"
    save_image_tokenizer(ImageTokenizer(ImageTokenizerConfig(image_size=64, factor=16, levels=(3, 3),
                                                             widths=(4, 4, 4, 4)), rngs=nnx.Rngs(0)), given)
    recipe = ImageGenerationRecipe(image_tokenizer=str(given))
    copied = recipe._image_tokenizer(tmp_path / "run", corpus)
    assert copied == tmp_path / "run" / IMAGE_TOKENIZER_DIR
    assert (copied / "image_tokenizer.safetensors").read_bytes() == (given / "image_tokenizer.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="is not an image tokenizer"):
        ImageGenerationRecipe(image_tokenizer=str(tmp_path))._image_tokenizer(tmp_path / "other-run", corpus)
    assert main(["train", "--task", "kv_retrieval", "--image-tokenizer", str(given), "--run-dir",
                 str(tmp_path / "kv")]) == 2
    assert "--image-tokenizer is for --task image_generation" in capsys.readouterr().err


def test_the_recipe_trains_the_image_scorer_the_command_would_and_keeps_it_on_resume(corpus, tmp_path):
    from gemini_jax.config import ConfigError
    from gemini_jax.recipes.image_generation import ImageGenerationRecipe
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR
    from gemini_jax.train.config import TrainConfig
    from gemini_jax.train.image_scorer import ScorerSettings, train_and_save

    settings = ScorerSettings(steps=3, batch_size=8, progress=False)
    recipe = ImageGenerationRecipe(image_scorer=settings, train=TrainConfig(seed=5, progress=False))
    recipe._image_scorer(tmp_path / "run", corpus)
    # What `gemini-jax image-scorer train --run RUN --seed 5` trains: the run's seed seeds it.
    train_and_save(corpus, tmp_path / "command", settings=dataclasses.replace(settings, seed=5))
    weights = (tmp_path / "run" / IMAGE_SCORER_DIR / "image_scorer.safetensors").read_bytes()
    assert weights == (tmp_path / "command" / "image_scorer.safetensors").read_bytes()
    # Resuming keeps the scorer the run has, whatever the recipe now says.
    dataclasses.replace(recipe, train=TrainConfig(seed=6, progress=False))._image_scorer(tmp_path / "run", corpus)
    assert (tmp_path / "run" / IMAGE_SCORER_DIR / "image_scorer.safetensors").read_bytes() == weights
    with pytest.raises(ConfigError, match="eval_samples 8 chooses among samples with the run's image scorer"):
        ImageGenerationRecipe(image_scorer=None)
    with pytest.raises(ConfigError, match="eval_samples is how many samples a test request gets, 1 or more"):
        ImageGenerationRecipe(eval_samples=0)
    assert ImageGenerationRecipe(image_scorer=None, eval_samples=1).image_scorer is None


def test_eval_samples_is_a_flag_of_the_image_generation_recipe_only(capsys):
    from gemini_jax.cli import build_parser, main
    from gemini_jax.cli.commands import recipe_from_flags
    from gemini_jax.recipes.image_generation import ImageGenerationRecipe

    args = build_parser().parse_args(["train", "--task", "image_generation", "--eval-samples", "3"])
    assert recipe_from_flags(ImageGenerationRecipe, args).eval_samples == 3
    args = build_parser().parse_args(["train", "--task", "image_generation"])
    assert recipe_from_flags(ImageGenerationRecipe, args).eval_samples == 8
    assert main(["train", "--task", "kv_retrieval", "--eval-samples", "3"]) == 2
    assert "--eval-samples does nothing for --task kv_retrieval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--task", "image_generation", "--eval-samples", "0"])


def test_a_run_that_writes_layouts_is_asked_to_edit_its_pictures_as_it_wrote_them(image_model, cache, monkeypatch,
                                                                                  tmp_path):
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.data.corpora.drawings import layout_text
    from gemini_jax.sample.image_output import LAYOUT_FILE, write_reply_layout, writes_layout
    from gemini_jax.sample.sampler import Sampler

    model, tokenizer, run_dir = image_model
    asked = []
    monkeypatch.setattr(Sampler, "generate_ids", lambda self, prompts, params, **k: asked.extend(prompts) or
                        [[] for _ in prompts])
    options = EvalOptions(cache_dir=str(cache), limit=2, temperature=1.0, progress=False)
    try:
        for layout in (False, True):
            write_reply_layout(run_dir, layout)
            assert writes_layout(run_dir) is layout
            asked.clear()
            evaluate(model, tokenizer, [ImageGeneration(corpus_sizes=SIZES)], options, run_dir=run_dir)
            edits = [p for p in asked if len(p.contents) == 3][:2]  # the conversation edits, before `--edit`'s
            sources = DrawingCorpus.build(cache, sizes=SIZES).records("edit", "test")[:2]
            for prompt, edit in zip(edits, sources):
                parts = prompt.contents[1].parts
                assert [p.text for p in parts[:-1]] == ([layout_text(edit.source)] if layout else [])
                assert parts[-1].image == str(edit.source_image)
        (run_dir / IMAGE_TOKENIZER_DIR / LAYOUT_FILE).write_text('{"reply_layout": "yes"}')
        with pytest.raises(CheckpointError, match="layout.json: expected"):
            writes_layout(run_dir)
    finally:
        write_reply_layout(run_dir, False)


def test_the_recipes_text_tokenizer_learns_the_layout_sentences(corpus):
    from gemini_jax.data.corpora.drawings import layout_text
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.recipes.image_generation import LAYOUT_ROOM, LAYOUT_VOCAB_SIZE, prepare_tokenizer

    laid_out = DrawingCorpus(corpus.root, layout=True)
    path = prepare_tokenizer(laid_out, vocab_size=LAYOUT_VOCAB_SIZE)
    assert path != prepare_tokenizer(corpus, vocab_size=LAYOUT_VOCAB_SIZE)  # cached apart
    tok = Tokenizer.load(path)
    whole = []
    for record in laid_out.records("draw", "train"):
        sentence = layout_text(record.target)
        pieces = [tok.id_to_piece(i) for i in tok.encode(sentence)]
        assert not [p for p in pieces if p.startswith("<0x") or p == "<unk>"]
        assert tok.decode(tok.encode(sentence)) == sentence
        assert len(pieces) <= LAYOUT_ROOM
        # Numbers are kept whole, a piece each with the comma or full stop after them: all but the rarest here
        # (every one on the recipe's full corpus, where each sentence is 5 pieces).
        whole.append(all(any(number in p for p in pieces) for number in re.findall(r"\d+", sentence)))
    assert np.mean(whole) > 0.8


def test_the_best_of_several_samples_is_chosen_by_the_runs_image_scorer(image_model, cache, tmp_path):
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.model.image_scorer import ImageScorer, ImageScorerConfig, save_image_scorer
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR

    model, tokenizer, run_dir = image_model
    task = ImageGeneration(corpus_sizes=SIZES)

    def run(samples, records=None):
        options = EvalOptions(cache_dir=str(cache), limit=5, temperature=30.0, seed=1, samples=samples,
                              records=records, progress=False)
        return evaluate(model, tokenizer, [task], options, run_dir=run_dir)["image_generation"]

    with pytest.raises(TaskDataError, match="image scorer"):
        run(3)
    save_image_scorer(ImageScorer(ImageScorerConfig(word_buckets=64, widths=(4, 4), width=8), rngs=nnx.Rngs(0)),
                      run_dir / IMAGE_SCORER_DIR)
    try:
        records = tmp_path / "records.jsonl"
        best, single = run(3, str(records)), run(1)
    finally:
        import shutil

        shutil.rmtree(run_dir / IMAGE_SCORER_DIR)
    for kind in ("draw", "edit"):
        assert best[f"{kind}_first"] == single[kind]  # the first sample is the one --samples 1 draws
        assert best[kind] <= best[f"{kind}_any"] and best[f"{kind}_first"] <= best[f"{kind}_any"]
        assert f"{kind}_first" not in single
    chosen = [json.loads(line)["sample"] for line in records.read_text().splitlines()]
    assert len(chosen) == 10 and set(chosen) <= {0, 1, 2}
