"""The image generation demo: one small model that reads pictures and draws them as discrete codes.

    gemini-jax train --task image_generation                     # on 2 CPU cores: docs/image-output.md
    gemini-jax train --task image_generation --image-tokenizer runs/image-tokenizer   # reuse a trained one
    gemini-jax generate --checkpoint runs/image_generation --save-images out "Draw a blue circle."
    gemini-jax eval --checkpoint runs/image_generation --tasks image_generation

1. The drawing corpus (data/corpora/drawings.py): "Draw a blue circle." -> the picture, and
   editing, a conversation ("Draw a green circle." -> the picture -> "Make the shape red.") -> the
   changed picture, split by request.
2. The image tokenizer (model/image_tokenizer.py) is trained on the corpus's train pictures (or
   taken from `image_tokenizer`) and kept in RUN/image_tokenizer/, with its validation PSNR and
   codebook usage in RUN/image_tokenizer/report.json.
3. A text tokenizer trained on the corpus's train prompts (the requests use few words).
4. The demo-draw preset's decoder (the demo's blocks, six of them, and no encoders: every
   picture it reads is one it could have written, as codes), its vocabulary the text pieces plus
   the image tokenizer's codes (config.image_output, each code given its place in its picture:
   `code_positions`); trained on the drawing examples, whose model turns are `<start_of_image>` + 64 codes +
   `<end_of_image>` (data/image_codes.py), after a layout sentence ("At 40, 20, size 12.") with `reply_layout`.
   A share of the drawing requests (`guidance_dropout`) is replaced by UNCONDITIONAL_PROMPT, so
   that one model also learns the unconditional picture distribution that classifier-free
   guidance (Ho & Salimans 2022, as in Parti and Muse) samples against; the run keeps that prompt
   in RUN/image_tokenizer/guidance.json (sample/image_output.py).
5. The image scorer (model/image_scorer.py), trained on the corpus's real train requests (never on
   a generated picture) into RUN/image_scorer/, so that `generate --best-of K` can choose among
   samples as soon as the run exists.
6. The final evaluation: `image_generation` on the test requests (evals/tasks/image_generation.py),
   guided by `eval_guidance` when it is set, each code sampled from the `eval_top_p` nucleus, the
   best of `eval_samples` samples by the scorer (the first sample's figures reported beside them).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gemini_jax.config import ConfigError, ImageOutputConfig, ModelConfig, get_preset, override
from gemini_jax.data.corpora.drawings import DrawingCorpus, DrawingSizes
from gemini_jax.model.image_tokenizer import ImageTokenizerConfig
from gemini_jax.recipes.runner import Setup, Timings, log
from gemini_jax.sample.image_output import IMAGE_TOKENIZER_DIR, write_reply_layout, write_unconditional_prompt
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.image_scorer import ScorerSettings
from gemini_jax.train.image_tokenizer import TrainSettings
from gemini_jax.train.optimizer import OptimizerConfig

if TYPE_CHECKING:
    from gemini_jax.data.examples import Example
    from gemini_jax.data.tokenizer import Tokenizer

TOKENIZER_RECIPE = 1  # a change trains a new text tokenizer
QUICK_EVAL_LIMIT = 50  # validation requests of each kind, every `train.eval_every` steps
# What a dropped drawing request says instead: every word of it is in the train prompts ("Make a
# picture of ...", "Draw a ..."), so the text tokenizer trained on them writes it in learned pieces.
UNCONDITIONAL_PROMPT = "Draw a picture."
TEXT_VOCAB_SIZE = 384  # pieces asked of the text tokenizer, reserved and byte pieces included
# With layouts the text tokenizer keeps numbers whole and learns more pieces (LAYOUT_VOCAB_SIZE), so
# "At 40, 20, size 12." is 5 pieces and the requests get shorter too: the longest training drawing is then
# 108 tokens and the longest edit 209 (measured on the corpus), within draw_seq_len + LAYOUT_ROOM and
# seq_len + 2 LAYOUT_ROOM.
LAYOUT_ROOM = 6
LAYOUT_VOCAB_SIZE = 448
DROPOUT_STREAM = 22  # seeds the choice of dropped requests apart from every other use of train.seed


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageGenerationRecipe:
    """The drawing corpus, the image tokenizer, the model and its schedule, the final evaluation."""

    name: ClassVar[str] = "image_generation"
    multi_device: ClassVar[bool] = False
    eval_limit_field: ClassVar[str] = "eval_limit"
    run_dir: str | None = None  # None: runs/image_generation
    preset: str = "demo-draw"
    model: ModelConfig | None = None  # replaces the preset (tests); its vocabulary is set here
    dtype: str | None = None
    image_tokenizer: str | None = None  # a trained image tokenizer's directory; None: trained here
    # 125 codes and batches of 8, chosen on validation (docs/image-output.md): sharper pictures than 1,000
    # codes in batches of 32, every code used, and a shorter code alphabet the decoder draws and edits better
    # with. 1e-3, not the tokenizer command's 2e-3: on this corpus 2e-3 diverged after warmup.
    image_tokenizer_config: ImageTokenizerConfig = ImageTokenizerConfig(levels=(5, 5, 5))
    image_tokenizer_settings: TrainSettings = TrainSettings(steps=2_000, batch_size=8, learning_rate=1e-3)
    corpus: DrawingSizes = DrawingSizes()
    cache_dir: str | None = None
    # Asked of the text tokenizer (a smaller corpus may give fewer pieces); None: TEXT_VOCAB_SIZE, or
    # LAYOUT_VOCAB_SIZE with reply_layout.
    text_vocab_size: int | None = None
    # Each reply first says where it draws ("At 40, 20, size 12.": drawings.layout_text), so that an edit can
    # copy its source's place as text before drawing there. Off by default: on validation it did not edit better
    # in every seed, and drew worse (docs/image-output.md).
    reply_layout: bool = False
    # Rows of each kind are batched apart, at their own lengths: an edit holds two requests, two pictures of 66
    # tokens and four turns' markers (197 tokens at most), a drawing one of each (100); with reply_layout each
    # picture's sentence takes up to LAYOUT_ROOM more (`row_lengths`).
    seq_len: int = 200  # edits
    draw_seq_len: int = 104
    batch_size: int = 32
    # 2,400 steps of six layers (demo-draw) take about what 3,500 of four did, and drew better on validation
    # (docs/image-output.md).
    train: TrainConfig = TrainConfig(
        steps=2_400, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=100, weight_decay=0.01))
    eval_limit: int | None = None  # test requests of each kind in the final evaluation; None: all (300 each)
    # Chosen on validation (docs/image-output.md): greedy decoding writes the likeliest code everywhere, the
    # background's, and draws nothing; sampling at 1 drew best.
    eval_temperature: float = 1.0
    # Classifier-free guidance: the share of drawing requests trained with UNCONDITIONAL_PROMPT in their
    # place (0.1, as Parti and Muse drop theirs), and the scale s of the evaluations (None: unguided).
    # s = 2 drew best on validation of 1.5, 2, 3 and 5 (docs/image-output.md).
    guidance_dropout: float = 0.1
    eval_guidance: float | None = 2.0
    # Nucleus sampling of each code, after guidance: sampling from the whole distribution lets a code
    # the model thinks unlikely break a shape's edge. 1: untruncated. Chosen on validation (docs/image-output.md).
    eval_top_p: float = 0.9
    # The image scorer the run chooses among samples with (None: none is trained, and the final evaluation
    # takes one sample a request), and how many samples a test request gets. Eight chose best on validation
    # of 2, 4, 8, 12 and 16 (docs/image-output.md).
    image_scorer: ScorerSettings | None = ScorerSettings()
    eval_samples: int = 8
    evaluate_at_end: bool = True

    def __post_init__(self):
        if self.train.mesh is not None:
            raise ConfigError("image_generation trains on one device: drop the mesh (--mesh) and the multi-host flags")
        if not 0.0 <= self.guidance_dropout < 1.0:
            raise ConfigError(f"guidance_dropout is the share of drawing requests dropped, in [0, 1); got "
                              f"{self.guidance_dropout}")
        if not 0.0 < self.eval_top_p <= 1.0:
            raise ConfigError(f"eval_top_p is the probability of the nucleus each code is sampled from, in (0, 1]; got "
                              f"{self.eval_top_p}")
        if self.eval_guidance is not None:
            if not 0.0 <= self.eval_guidance < float("inf"):
                raise ConfigError(f"eval_guidance must be a finite number >= 0 (or None), got {self.eval_guidance}")
            if self.guidance_dropout == 0:
                raise ConfigError("eval_guidance needs guidance_dropout > 0: a model never shown the unconditional "
                                  "prompt has no unconditional distribution to guide against")
        if not isinstance(self.eval_samples, int) or self.eval_samples < 1:
            raise ConfigError(f"eval_samples is how many samples a test request gets, 1 or more; got {self.eval_samples!r}")
        if self.eval_samples > 1 and self.image_scorer is None:
            raise ConfigError(f"eval_samples {self.eval_samples} chooses among samples with the run's image scorer: "
                              "keep image_scorer (ScorerSettings()) or set eval_samples to 1")

    def model_config(self, *, text_pieces: int, codebook_size: int, codes_per_image: int) -> ModelConfig:
        """The preset's decoder with room for the text pieces and, above them, the codes."""
        config = self.model or override(get_preset(self.preset), audio=None, vision=None)
        config = override(config, vocab_size=text_pieces + codebook_size,
                          image_output=ImageOutputConfig(codebook_size=codebook_size, codes_per_image=codes_per_image,
                                                         code_positions=True))
        return config if self.dtype is None else override(config, dtype=self.dtype)

    def row_lengths(self) -> tuple[int, int]:
        """(edit rows, drawing rows) in tokens: seq_len and draw_seq_len, and room for each picture's
        layout sentence where replies say where they draw."""
        room = LAYOUT_ROOM if self.reply_layout else 0
        return self.seq_len + 2 * room, self.draw_seq_len + room

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        from gemini_jax import checkpoint
        from gemini_jax.data import pipeline
        from gemini_jax.data.image_codes import ImageCoder
        from gemini_jax.data.mixing import mixture
        from gemini_jax.data.tokenizer import Tokenizer
        from gemini_jax.model.image_tokenizer import read_image_tokenizer_config

        with timings.phase("corpus_s"):
            corpus = DrawingCorpus.build(self.cache_dir, sizes=self.corpus, layout=self.reply_layout)
        with timings.phase("image_tokenizer_s"):
            image_dir = self._image_tokenizer(run_dir, corpus)
        if self.image_scorer is not None:
            with timings.phase("image_scorer_s"):
                self._image_scorer(run_dir, corpus)
        with timings.phase("tokenizer_s"):
            tokenizer_file = prepare_tokenizer(corpus, vocab_size=self.text_vocab_size or
                                               (LAYOUT_VOCAB_SIZE if self.reply_layout else TEXT_VOCAB_SIZE))
        tokenizer = Tokenizer.load(tokenizer_file)
        if self.guidance_dropout > 0:
            check_unconditional_prompt(tokenizer)
        image_config = read_image_tokenizer_config(image_dir)
        config = self.model_config(text_pieces=tokenizer.vocab_size, codebook_size=image_config.codebook_size,
                                   codes_per_image=image_config.codes_per_image)
        edit_len, draw_len = self.row_lengths()
        if config.max_seq_len < max(edit_len, draw_len):
            raise ConfigError(f"rows of {edit_len} (edits) or {draw_len} (drawings) tokens exceed the model's context "
                              f"of {config.max_seq_len}")
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
        write_unconditional_prompt(run_dir, UNCONDITIONAL_PROMPT if self.guidance_dropout > 0 else None)
        write_reply_layout(run_dir, self.reply_layout)
        examples = drop_requests(corpus.examples("train"), fraction=self.guidance_dropout, seed=self.train.seed)

        def batches(kind: list[Example], seq_len: int):
            # A coder per stream: each is read by a thread of its own, and one nnx model is not
            # safe to call from two threads at once.
            rows = pipeline.encoded_source(kind, tokenizer=tokenizer, config=config, max_len=seq_len, cache_rows=True,
                                           image_codes=ImageCoder.load(image_dir), seed=self.train.seed)
            return pipeline.batched(rows, batch_size=self.batch_size, seq_len=seq_len, seed=self.train.seed,
                                    config=config, num_threads=1, prefetch_batches=1)

        kinds = (([e for e in examples if is_drawing(e)], draw_len),
                 ([e for e in examples if not is_drawing(e)], edit_len))
        kinds = [(kind, seq_len) for kind, seq_len in kinds if kind]
        # Whole batches of each kind, in proportion to their counts.
        data = iter(mixture([batches(kind, seq_len) for kind, seq_len in kinds], weights=[len(k) for k, _ in kinds]))

        def scores(model, *, split: str, limit: int | None):
            from gemini_jax.evals.registry import EvalOptions, evaluate
            from gemini_jax.evals.tasks.image_generation import ImageGeneration

            task = ImageGeneration(name="image_generation" if split == "test" else f"image_generation_{split}",
                                   split=split, corpus_sizes=self.corpus)
            options = EvalOptions(limit=limit, cache_dir=self.cache_dir, temperature=self.eval_temperature,
                                  guidance=self.eval_guidance, top_p=self.eval_top_p, progress=self.train.progress,
                                  samples=self.eval_samples if split == "test" else 1)
            return evaluate(model, tokenizer, [task], options, run_dir=run_dir)

        def quick(model):
            return {k: v for k, v in scores(model, split="validation", limit=QUICK_EVAL_LIMIT)
                    ["image_generation_validation"].items() if k in ("draw", "edit", "draw_images", "edit_images")}

        from gemini_jax.evals.registry import format_results

        return Setup(config=config, tokenizer=tokenizer, data=data, quick_evaluate=quick,
                     evaluate=lambda model: scores(model, split="test", limit=self.eval_limit),
                     format_results=format_results)

    def _image_tokenizer(self, run_dir: Path, corpus: DrawingCorpus) -> Path:
        """RUN/image_tokenizer: kept when the run has one (resuming), else copied from
        `image_tokenizer`, else trained on the corpus's train pictures."""
        from gemini_jax.model.image_tokenizer import load_image_tokenizer

        out = run_dir / IMAGE_TOKENIZER_DIR
        if (out / "image_tokenizer.json").is_file():
            return out
        if self.image_tokenizer is not None:
            load_image_tokenizer(self.image_tokenizer)  # checked before it is copied
            shutil.copytree(self.image_tokenizer, out, dirs_exist_ok=True)
            return out
        train_image_tokenizer(corpus, out, config=self.image_tokenizer_config,
                              settings=dataclasses.replace(self.image_tokenizer_settings, progress=self.train.progress,
                                                           seed=self.train.seed))
        return out

    def _image_scorer(self, run_dir: Path, corpus: DrawingCorpus) -> None:
        """RUN/image_scorer: kept when the run has one (resuming), else trained, seeded by the run's seed
        (what `gemini-jax image-scorer train --run RUN --seed S` trains)."""
        from gemini_jax.model.image_scorer import CONFIG_FILE
        from gemini_jax.sample.image_output import IMAGE_SCORER_DIR
        from gemini_jax.train.image_scorer import train_and_save

        out = run_dir / IMAGE_SCORER_DIR
        if (out / CONFIG_FILE).is_file():
            return
        settings = dataclasses.replace(self.image_scorer, seed=self.train.seed, progress=self.train.progress)
        log(f"image scorer: training {settings.steps} steps on the corpus's real train requests")
        report = train_and_save(corpus, out, settings=settings)
        ranked = ", ".join(f"{100 * report['validation'][f'{kind}_top_answers']:.0f}% of {kind}s" for kind in ("draw", "edit")
                           if f"{kind}_top_answers" in report["validation"])  # a tiny corpus may have too few
        log(f"image scorer: trained in {report['train_seconds']:.0f} s; a right picture ranked first for "
            f"{ranked or 'no batch'} of the validation requests")


def is_drawing(example: Example) -> bool:
    """A drawing request (one text request, one picture), not an edit (a conversation)."""
    user = example.contents[0]
    return len(example.contents) == 2 and user.role == "user" and all(part.text is not None for part in user.parts)


def drop_requests(examples: Sequence[Example], *, fraction: float, seed: int) -> list[Example]:
    """`examples` with each drawing request's text replaced by UNCONDITIONAL_PROMPT with
    probability `fraction`, the choice fixed by `seed` and the example's place (the same on every
    resume); edits are kept whole."""
    from gemini_jax.data.examples import Content, Part

    if fraction == 0:
        return list(examples)
    dropped = np.random.default_rng([seed, DROPOUT_STREAM]).random(len(examples)) < fraction
    blank = Content("user", (Part(text=UNCONDITIONAL_PROMPT),))
    return [dataclasses.replace(e, contents=(blank, *e.contents[1:])) if drop and is_drawing(e) else e
            for e, drop in zip(examples, dropped)]


def check_unconditional_prompt(tokenizer: Tokenizer) -> None:
    """ConfigError unless UNCONDITIONAL_PROMPT encodes to learned pieces: a byte-fallback piece
    would mean its text never occurred in what the tokenizer was trained on."""
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode(UNCONDITIONAL_PROMPT)]
    unknown = [p for p in pieces if p.startswith("<0x") or p == "<unk>"]
    if unknown:
        raise ConfigError(f"the unconditional prompt {UNCONDITIONAL_PROMPT!r} encodes to pieces the text tokenizer never "
                          f"learned ({unknown}): its words must occur in the corpus's train prompts")


def train_image_tokenizer(corpus: DrawingCorpus, out: Path, *, config: ImageTokenizerConfig,
                          settings: TrainSettings) -> dict:
    """Trains an image tokenizer on the corpus's train pictures into `out`, with report.json:
    PSNR and codebook usage on the validation pictures (the run's test pictures stay unread)."""
    from flax import nnx

    from gemini_jax.checkpoint import replace_dir
    from gemini_jax.model.image_tokenizer import ImageTokenizer, save_image_tokenizer
    from gemini_jax.train import image_tokenizer as tokenizer_training

    model = ImageTokenizer(config, rngs=nnx.Rngs(settings.seed))
    start = time.perf_counter()
    log(f"image tokenizer: training {settings.steps} steps on {len(corpus.records('draw', 'train')) + len(corpus.records('edit', 'train'))} "
        "drawings")
    history = tokenizer_training.train(model, corpus.images("train"), settings)
    seconds = time.perf_counter() - start
    validation = tokenizer_training.evaluate(model, corpus.images("validation"), batch_size=settings.eval_batch_size)
    report = {"config": config.to_json(), "settings": dataclasses.asdict(settings), "train_seconds": round(seconds, 1),
              "final_train_mse": history[-1]["mse"], "validation": validation}

    def write(partial: Path) -> None:
        save_image_tokenizer(model, partial)
        (partial / tokenizer_training.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")

    replace_dir(out, write)  # whole or not at all: a crash leaves no half-written tokenizer to resume with
    log(f"image tokenizer: validation PSNR {validation['psnr_db']:.1f} dB, codebook usage "
        f"{100 * validation['codebook_usage']:.0f}% ({seconds:.0f} s)")
    return report


def prepare_tokenizer(corpus: DrawingCorpus, *, vocab_size: int) -> Path:
    """The text tokenizer of the drawing requests (and, for a corpus with layouts, of the replies'
    layout sentences, with numbers kept whole), trained once per corpus, size and layout, cached
    beside the corpus."""
    from gemini_jax.data.corpora.drawings import layout_text
    from gemini_jax.data.tokenizer import train_tokenizer

    path = corpus.root / f"tokenizer-v{TOKENIZER_RECIPE}-{vocab_size}{'-layout-numbers' if corpus.layout else ''}.model"
    if not path.exists():
        prompts = [d.prompt for kind in ("draw", "edit") for d in corpus.records(kind, "train")]
        if corpus.layout:
            prompts += [layout_text(d.target) for kind in ("draw", "edit") for d in corpus.records(kind, "train")]
        train_tokenizer(prompts, vocab_size=vocab_size, path=path, split_digits=not corpus.layout)
    return path
