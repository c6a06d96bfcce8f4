"""`gemini-jax eval --tasks image_generation`: the pictures a model draws, judged by a model
that did not draw them (evals/image_judge.py, fitted on the drawing corpus's real train images).

For the held-out requests of data/corpora/drawings.py (an edit is asked as its conversation: the
request that drew the source, the source picture as the model's reply, then the change):
- "draw": the share of replies whose first image shows the requested shape AND colour;
- "edit": the share whose image shows the requested change made and the rest kept: the target's
  shape and colour (the one asked for, the other unchanged), and the shape where it was, about as
  large (IoU of the judged shape's mask with the real edited picture's >= EDIT_IOU).
A reply without an image fails; text beside the image is not judged. A run whose replies say where
they draw (sample/image_output.py's `writes_layout`) has its source pictures' replies say so too.
In the same table, for each:
- `_real`: the real held-out target pictures, judged the same way (the judge's ceiling);
- `_tokenized`: the same through the run's image tokenizer (encoded, decoded: what a perfect model
  could write at best);
- `_random`: pictures of uniformly random codes (a floor);
- `_wrong_prompt`: the pictures the model drew for another request (one whose target differs in
  shape or colour), judged against this one (a floor: a model that ignores the request scores here);
- `edit_unchanged`: the input picture given back unchanged (the floor of an editor that does nothing);
- `edit_given` (a run with an unconditional prompt): the same edits asked as `generate --edit` asks
  for a picture the model did not draw: the source as the reply to the run's unconditional prompt.

Generation goes through the library's batched path (Sampler.generate_ids, then ImageWriter.parts):
a fixed-seed sample at --temperature (0 for greedy), request i with seed --seed + i, so each of the
300 requests gets its own picture although held-out prompts repeat (drawings.py: about 25 distinct
draw prompts in test). `image_generation_validation` scores the validation requests (for choosing).
With --guidance S every request (draw and edit) is sampled with classifier-free guidance beside the
run's unconditional prompt (sample/image_output.py's `unconditional_prompt`; docs/image-output.md);
--top-k and --top-p then truncate the guided distribution of each token.

With --samples K (> 1) each request is sampled K times (the k-th time with seed --seed + i + k
SAMPLE_SEED_STRIDE) and the picture the run's image scorer rates highest for the request is the
one judged (model/image_scorer.py: a model of the run's own, trained on real train pictures,
never the judge). `draw` and `edit` are then the chosen pictures' scores; `<kind>_first` the
first sample's alone (what --samples 1 gives) and `<kind>_any` the share of requests with at
least one right picture among the K (the ceiling of any way of choosing); `edit_given` stays one
sample.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gemini_jax.evals.eval_task import EvalContext, EvalTask, Family, TaskOutcome
from gemini_jax.evals.tasks.base import TaskDataError
from gemini_jax.sample.image_output import SAMPLE_SEED_STRIDE

if TYPE_CHECKING:
    from gemini_jax.data.corpora.drawings import DrawingSizes
    from gemini_jax.evals.image_judge import Verdict

EDIT_IOU = 0.5
JUDGE_TRAIN_IMAGES = 2000  # real train pictures the judge's shape classifier is fitted on
TEXT_ROOM = 24  # reply tokens allowed besides one image's span (a layout sentence takes 14)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageGeneration(EvalTask):
    family: ClassVar[Family] = Family.DEMO_SETS
    reads: ClassVar[frozenset[str]] = frozenset({"cache_dir", "records", "temperature", "seed", "guidance", "top_k",
                                                "top_p", "samples"})
    default_batch_size: ClassVar[int] = 64

    name: str = "image_generation"
    split: str = "test"  # "validation" while choosing
    corpus_sizes: DrawingSizes | None = None  # None: the default corpus

    def check(self, context: EvalContext) -> None:
        if context.model.config.image_output is None:
            raise TaskDataError(f"{self.name}: this model writes text only (config.image_output is None); train one "
                                "with `gemini-jax train --task image_generation`")
        if context.run_dir is None:
            raise TaskDataError(f"{self.name}: needs the run directory, whose image_tokenizer/ decodes the codes")
        if context.options.guidance is not None:
            unconditional(context, self.name)  # a run without an unconditional prompt fails before sampling
        if context.options.samples > 1:
            context.shared(run_image_scorer)  # as must a run without an image scorer

    def run(self, context: EvalContext) -> TaskOutcome:
        from gemini_jax.data.corpora.drawings import DrawingCorpus, DrawingSizes
        from gemini_jax.sample.image_output import writes_layout

        options = context.options
        sizes = self.corpus_sizes or DrawingSizes()
        # A run whose replies say where they draw is asked to edit its source pictures as it would have written them.
        corpus = DrawingCorpus.build(options.cache_dir, sizes=sizes, layout=writes_layout(context.run_dir))
        judge = fit_judge(corpus)
        writer = context.shared(run_image_writer)
        draw = corpus.records("draw", self.split)[: options.limit]
        edit = corpus.records("edit", self.split)[: options.limit]
        samples = [draw_images(context, writer, draw + edit, batch_size=self.batch_size(options),
                               seed_offset=k * SAMPLE_SEED_STRIDE) for k in range(options.samples)]
        chosen = choose_samples(context, draw + edit, samples) if options.samples > 1 else [0] * len(draw + edit)
        images = [samples[k][i] for i, k in enumerate(chosen)]
        metrics, records = {}, []
        for kind, part in (("draw", slice(0, len(draw))), ("edit", slice(len(draw), None))):
            requests, drawn = (draw + edit)[part], images[part]
            real = [_load(r.image) for r in requests]
            # An edit is judged against its target's region: judged once, for every score below.
            targets = judge.judge(real) if kind == "edit" and real else None

            def score(pictures):
                return percent(ok for ok, _, _ in judge_requests(judge, requests, pictures, targets=targets))

            judged = judge_requests(judge, requests, drawn, targets=targets)
            metrics[kind] = percent([ok for ok, _, _ in judged])
            if options.samples > 1:
                right = [[ok for ok, _, _ in judge_requests(judge, requests, sample[part], targets=targets)]
                         for sample in samples]
                metrics[f"{kind}_first"] = percent(right[0])
                metrics[f"{kind}_any"] = percent(any(oks) for oks in zip(*right))
            metrics[f"{kind}_images"] = percent([image is not None for image in drawn])
            records += [{"task": self.name, "kind": kind, "prompt": r.prompt, "correct": bool(ok), "drew": d is not None,
                         "target": [r.target.shape, r.target.colour],
                         "seen": None if verdict is None else [verdict.shape, verdict.colour],
                         **({} if iou is None else {"iou": round(float(iou), 3)}),
                         **({"sample": k} if options.samples > 1 else {})}
                        for r, (ok, verdict, iou), d, k in zip(requests, judged, drawn, chosen[part])]
            metrics[f"{kind}_real"] = score(real)
            metrics[f"{kind}_tokenized"] = score(tokenized(writer, real))
            metrics[f"{kind}_random"] = score(random_images(writer, len(requests), seed=options.seed))
            metrics[f"{kind}_wrong_prompt"] = score([drawn[j] for j in wrong_pairs(requests)])
            if kind == "edit":
                metrics["edit_unchanged"] = score([_load(r.source_image) for r in edit])
                blank = run_unconditional_prompt(context)
                if blank is not None:  # the same edits of a picture whose request the model is not told
                    given = given_edits(edit, first_request=blank)
                    metrics["edit_given"] = score(draw_images(context, writer, given, batch_size=self.batch_size(options)))
        metrics["examples"] = len(draw) + len(edit)
        return TaskOutcome(metrics, records)


def run_unconditional_prompt(context: EvalContext) -> str | None:
    """The run's unconditional prompt, or None where it was trained without one."""
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.sample.image_output import unconditional_prompt

    try:
        return unconditional_prompt(context.run_dir)
    except CheckpointError:
        return None


def given_edits(edits, *, first_request: str) -> list:
    """Each edit as `generate --edit` asks it: the source picture as the reply to `first_request`."""
    from types import SimpleNamespace

    from gemini_jax.sample.image_output import edit_request

    return [SimpleNamespace(request=edit_request(str(r.source_image), r.prompt, first_request=first_request))
            for r in edits]


def percent(flags) -> float:
    flags = list(flags)
    return 100.0 * sum(bool(f) for f in flags) / max(len(flags), 1)


def fit_judge(corpus):
    """The judge, fitted on the first JUDGE_TRAIN_IMAGES real train pictures (never a generated one)."""
    from gemini_jax.evals.image_judge import ImageJudge

    train = corpus.records("draw", "train") + corpus.records("edit", "train")
    train = sorted(train, key=lambda d: d.image.name)[:JUDGE_TRAIN_IMAGES]
    return ImageJudge.fit(np.stack([_load(d.image) for d in train]), [d.target.shape for d in train])


def run_image_writer(context: EvalContext):
    from gemini_jax.sample.image_output import ImageWriter, load_run_image_tokenizer
    from gemini_jax.sample.image_spans import image_spans_for

    config, tokenizer = context.model.config, context.tokenizer
    image_tokenizer, key = load_run_image_tokenizer(context.run_dir, config)
    return ImageWriter(image_tokenizer, spans=image_spans_for(config, tokenizer), tokenizer=tokenizer, key=key)


def image_sampler(context: EvalContext):
    """The sampler of every request of one evaluation (compiled once): edits' source pictures are
    read as codes, by the run's image tokenizer."""
    from gemini_jax.data.encode import MediaCache
    from gemini_jax.sample.sampler import Sampler

    return Sampler(context.model, context.tokenizer, media_cache=MediaCache(max_bytes=1 << 30),
                   image_codes=context.shared(run_image_writer).coder())


def unconditional(context: EvalContext, name: str):
    """The run's unconditional prompt as a user turn (an Example), for --guidance."""
    from gemini_jax.api import user_turn
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.sample.image_output import unconditional_prompt

    try:
        return user_turn(unconditional_prompt(context.run_dir))
    except CheckpointError as e:
        raise TaskDataError(f"{name} --guidance {context.options.guidance}: {e}") from None


def run_image_scorer(context: EvalContext):
    from gemini_jax.checkpoint import CheckpointError
    from gemini_jax.model.image_scorer import load_image_scorer
    from gemini_jax.sample.image_output import IMAGE_SCORER_DIR

    try:
        return load_image_scorer(context.run_dir / IMAGE_SCORER_DIR)
    except CheckpointError as e:
        raise TaskDataError(f"image_generation --samples {context.options.samples} chooses among the samples with the "
                            f"run's image scorer: {e}") from None


def choose_samples(context: EvalContext, requests, samples: list[list[np.ndarray | None]], *,
                   batch_size: int = 64) -> list[int]:
    """Per request, which of its samples (samples[k][i]: request i's k-th picture) the run's image
    scorer rates highest."""
    from gemini_jax.model.image_scorer import choose, request_of

    scorer = context.shared(run_image_scorer)
    chosen: list[int] = []
    for start in range(0, len(requests), batch_size):
        batch = range(start, min(start + batch_size, len(requests)))
        texts, sources = zip(*(request_of(requests[i].request) for i in batch))
        chosen += choose(scorer, list(texts), list(sources), [[sample[i] for sample in samples] for i in batch])
    return chosen


def draw_images(context: EvalContext, writer, requests, *, batch_size: int,
                seed_offset: int = 0) -> list[np.ndarray | None]:
    """The first image of the model's reply to each request (None when it drew none); with
    --guidance, guided beside the run's unconditional prompt. Request i is sampled with seed
    --seed + `seed_offset` + i."""
    from tqdm.auto import tqdm

    from gemini_jax.sample.token_choice import SamplingParams

    options = context.options
    sampler = context.shared(image_sampler)
    room = writer.spans.span_length + TEXT_ROOM
    guidance = options.guidance
    blank = unconditional(context, "image_generation") if guidance is not None else None
    images: list[np.ndarray | None] = []
    bar = tqdm(total=len(requests), desc="eval image_generation", disable=not options.progress, unit="ex", leave=False)
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        prompts = [r.request for r in batch]
        params = [SamplingParams(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                                 max_new_tokens=room, seed=options.seed + seed_offset + start + i)
                  for i in range(len(batch))]
        guided = dict(guidance=guidance, unconditional=[blank] * len(batch)) if guidance is not None else {}
        for ids in sampler.generate_ids(prompts, params, **guided):
            pictures = [p for p in writer.parts(ids) if isinstance(p, np.ndarray)]
            images.append(pictures[0] if pictures else None)
        bar.update(len(batch))
    bar.close()
    return images


def score_requests(judge, requests, images) -> list[bool]:
    """Whether each image does what its request asked (module docstring); None fails."""
    return [ok for ok, _, _ in judge_requests(judge, requests, images)]


def judge_requests(judge, requests, images, *, targets: list[Verdict] | None = None
                   ) -> list[tuple[bool, Verdict | None, float | None]]:
    """Per request: whether its image does what it asked, the judge's verdict on the image (None:
    no image) and, for an edit judged the right shape and colour, its IoU with the target's region.
    `targets`: the judge's verdicts on the requests' target pictures, where already judged."""
    from gemini_jax.evals.image_judge import mask_iou

    present = [i for i, image in enumerate(images) if image is not None]
    verdicts = dict(zip(present, judge.judge([images[i] for i in present]))) if present else {}
    if targets is None and any(r.kind == "edit" for r in requests):
        targets = judge.judge([_load(r.image) for r in requests])
    out = []
    for i, request in enumerate(requests):
        verdict, iou = verdicts.get(i), None
        ok = verdict is not None and (verdict.shape, verdict.colour) == (request.target.shape, request.target.colour)
        if ok and request.kind == "edit":
            iou = mask_iou(verdict.mask, targets[i].mask)
            ok = iou >= EDIT_IOU
        out.append((ok, verdict, iou))
    return out


def tokenized(writer, images: list[np.ndarray]) -> list[np.ndarray]:
    """The pictures through the image tokenizer: encoded to codes, decoded back."""
    tokenizer = writer.image_tokenizer
    codes = np.asarray(tokenizer.encode(np.stack(images)))
    return _decode(writer, codes)


def random_images(writer, count: int, *, seed: int) -> list[np.ndarray]:
    config = writer.image_tokenizer.config
    codes = np.random.default_rng([seed, 22]).integers(0, config.codebook_size, (count, config.grid, config.grid))
    return _decode(writer, codes.astype(np.int32))


def _decode(writer, codes: np.ndarray) -> list[np.ndarray]:
    if not len(codes):
        return []
    pixels = np.asarray(writer.image_tokenizer.decode(codes))
    return list(np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8))


def wrong_pairs(requests) -> list[int]:
    """For each request, the next one (cyclically) whose target differs in shape or colour; itself
    when none does."""
    pairs = []
    for i, request in enumerate(requests):
        want = (request.target.shape, request.target.colour)
        others = (j % len(requests) for j in range(i + 1, i + len(requests)))
        pairs.append(next((j for j in others if (requests[j].target.shape, requests[j].target.colour) != want), i))
    return pairs


def _load(path) -> np.ndarray:
    from gemini_jax.data.corpora.drawings import load_png

    return load_png(path)
