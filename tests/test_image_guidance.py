"""Classifier-free guidance of drawn images: the guided sampler against unguided sampling of
either prompt (s = 1, s = 0), the combination confined to image spans, the pair fed one token,
clear refusals, the recipe's dropped requests, and the flags that reach it."""

import dataclasses
import inspect
import json
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax import api
from gemini_jax.checkpoint import Run
from gemini_jax.cli import main
from gemini_jax.config import PRESETS, ConfigError, ImageOutputConfig
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, save_image_tokenizer
from gemini_jax.sample.image_output import GUIDANCE_FILE, IMAGE_TOKENIZER_DIR, write_unconditional_prompt
from gemini_jax.sample.image_spans import NO_ROOM, ImageSpans
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams

IMAGE_TOKENIZER = ImageTokenizerConfig(image_size=16, factor=4, levels=(3, 3), widths=(8, 8))  # 9 codes, 16 an image
CODES, PER_IMAGE = 16, 4  # the sampler tests' own spans: short, so that a random model closes them often
PROMPTS = ["Draw a red circle.", "Draw a blue square.", "Paint a green triangle.", "Show me a red square."]
BLANK = "Draw a picture."


def turn(text: str) -> Example:
    return Example(contents=(Content("user", (Part(text=text),)),))


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer([inspect.getsource(textwrap), (" ".join(PROMPTS + [BLANK]) + "\n") * 30], vocab_size=400, path=path)
    return path


@pytest.fixture(scope="module")
def tok(tok_file):
    return Tokenizer.load(tok_file)


@pytest.fixture(scope="module")
def model(tok, build_model):
    config = dataclasses.replace(PRESETS["test"], vocab_size=tok.vocab_size + CODES,
                                 image_output=ImageOutputConfig(codebook_size=CODES, codes_per_image=PER_IMAGE))
    return build_model(config)


class OpenSpans(ImageSpans):
    """Spans whose replies start inside an image, as if the prompt ended in <start_of_image>:
    every token until the span closes is a code (or its end), where guidance applies."""

    def initial(self, rows, room):
        return np.where(np.broadcast_to(room, (rows,)) > self.codes_per_image, 0, NO_ROOM).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class EagerSpans(ImageSpans):
    """Spans whose text allows only a few pieces, so that a random model opens images often."""

    text_ids: tuple[int, ...] = ()

    def allowed(self, state, *, vocab, text_vocab):
        few = jnp.isin(jnp.arange(vocab), jnp.array(self.text_ids + (self.start_id,)))[None, :]
        return super().allowed(state, vocab=vocab, text_vocab=text_vocab) & jnp.where(state[:, None] < 0, few, True)


def spans_sampler(model, tok, kind, **fields) -> Sampler:
    spans = Sampler(model, tok).image_spans
    return Sampler(model, tok, image_spans=kind(**dataclasses.asdict(spans), **fields))


def eager_sampler(model, tok) -> Sampler:
    return spans_sampler(model, tok, EagerSpans, text_ids=tuple(tok.encode("Draw a red circle.")))


def requests(count: int, *, temperature: float, max_new_tokens: int = 16):
    prompts = [turn(PROMPTS[i % len(PROMPTS)]) for i in range(count)]
    params = [SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=i) for i in range(count)]
    return prompts, params, [turn(BLANK)] * count


@pytest.mark.parametrize("temperature", [0.0, 1.0, 50.0])
def test_guidance_one_is_unguided_sampling_token_for_token(model, tok, temperature):
    prompts, params, blank = requests(24, temperature=temperature)
    for sampler in (Sampler(model, tok), eager_sampler(model, tok)):
        plain = sampler.generate_ids(prompts, params)
        assert sampler.generate_ids(prompts, params, guidance=1.0, unconditional=blank) == plain
    if temperature == 50.0:  # spans opened, so codes were chosen under guidance too
        assert sum(ids.count(sampler.image_spans.start_id) for ids in plain) >= 3


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_inside_a_span_guidance_zero_samples_the_unconditional_prompt_and_one_the_prompt(model, tok, temperature):
    sampler = spans_sampler(model, tok, OpenSpans)
    span = PER_IMAGE + 1  # the codes and <end_of_image>: every token guidance chooses here
    prompts, params, blank = requests(8, temperature=temperature)
    alone = [ids[:span] for ids in sampler.generate_ids(blank, params)]
    plain = [ids[:span] for ids in sampler.generate_ids(prompts, params)]
    unguided = [ids[:span] for ids in sampler.generate_ids(prompts, params, guidance=0.0, unconditional=blank)]
    assert unguided == alone
    assert alone != plain  # the two prompts draw differently, so the equality above says something
    assert [ids[:span] for ids in sampler.generate_ids(prompts, params, guidance=1.0, unconditional=blank)] == plain
    strong = [ids[:span] for ids in sampler.generate_ids(prompts, params, guidance=4.0, unconditional=blank)]
    assert strong != plain and strong != alone
    spans = sampler.image_spans
    assert all(all(spans.is_code(t) for t in ids[:PER_IMAGE]) and ids[PER_IMAGE] == spans.end_id for ids in strong)


def test_text_stays_the_prompts_own_and_spans_close_with_their_codes(model, tok):
    sampler = eager_sampler(model, tok)
    spans = sampler.image_spans
    prompts, params, blank = requests(16, temperature=1.0, max_new_tokens=20)
    plain = sampler.generate_ids(prompts, params)
    guided = sampler.generate_ids(prompts, params, guidance=3.0, unconditional=blank)
    drew = 0
    for a, b in zip(plain, guided):
        cut = a.index(spans.start_id) + 1 if spans.start_id in a else len(a)
        assert b[:cut] == a[:cut]  # up to and with <start_of_image>, the prompt's own text
        drew += spans.start_id in a
        codes = [t for t in b if spans.is_code(t)]
        assert len(codes) == PER_IMAGE * b.count(spans.start_id) == PER_IMAGE * b.count(spans.end_id)
    assert drew >= 3, f"only {drew} replies opened a span: the test does not exercise guidance"
    assert guided != plain  # inside the spans guidance changed what was drawn


def test_both_rows_of_a_pair_are_fed_the_same_tokens(model, tok):
    sampler = spans_sampler(model, tok, OpenSpans)
    fed = []
    decode = sampler.programs.decode

    def recorded(cache, tokens, *args):
        fed.append(np.asarray(tokens))
        return decode(cache, tokens, *args)

    sampler.programs.decode = recorded
    prompts, params, blank = requests(3, temperature=1.0, max_new_tokens=8)
    replies = sampler.generate_ids(prompts, params, guidance=2.0, unconditional=blank)
    assert len(fed) >= PER_IMAGE and all(len(tokens) == 8 for tokens in fed)  # 3 pairs, padded to 4
    for step, tokens in enumerate(fed):  # the tokens of step `step`, fed to sample step + 1
        np.testing.assert_array_equal(tokens[0::2], tokens[1::2])
        for request, ids in enumerate(replies):
            if step < len(ids):
                assert ids[step] == tokens[2 * request]


def test_bad_guidance_is_refused(model, tok, build_model):
    sampler = Sampler(model, tok)
    prompts, params, blank = requests(2, temperature=0.0)
    for bad in (-1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
            sampler.generate_ids(prompts, params, guidance=bad, unconditional=blank)
    with pytest.raises(ValueError, match="one unconditional prompt per prompt: 2 prompts, 1"):
        sampler.generate_ids(prompts, params, guidance=2.0, unconditional=blank[:1])
    with pytest.raises(ValueError, match="one unconditional prompt per prompt: 2 prompts, none"):
        sampler.generate_ids(prompts, params, guidance=2.0)
    with pytest.raises(ValueError, match="read only with guidance"):
        sampler.generate_ids(prompts, params, unconditional=blank)
    text_only = Sampler(build_model(dataclasses.replace(PRESETS["test"], vocab_size=tok.vocab_size)), tok)
    with pytest.raises(ValueError, match="writes text only"):
        text_only.generate_ids(prompts, params, guidance=2.0, unconditional=blank)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok, build_model):
    """A run that writes images (random weights, no checkpoint on disk), its unconditional prompt recorded."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=tok.vocab_size + IMAGE_TOKENIZER.codebook_size,
                                 image_output=ImageOutputConfig(codebook_size=IMAGE_TOKENIZER.codebook_size,
                                                                codes_per_image=IMAGE_TOKENIZER.codes_per_image))
    run_dir = tmp_path_factory.mktemp("run")
    save_image_tokenizer(ImageTokenizer(IMAGE_TOKENIZER, rngs=nnx.Rngs(0)), run_dir / IMAGE_TOKENIZER_DIR)
    write_unconditional_prompt(run_dir, BLANK)
    return Run(model=build_model(config), tokenizer=tok, run_dir=run_dir, step=0)


def test_generate_parts_with_guidance_and_its_refusals(run, tmp_path):
    options = dict(max_new_tokens=24, temperature=30.0, seed=3)
    def comparable(parts):
        return [p if isinstance(p, str) else p.tolist() for p in parts]

    assert comparable(api.generate_parts(run, "Draw a red circle.", guidance=1.0, **options)) == \
        comparable(api.generate_parts(run, "Draw a red circle.", **options))
    saved = run.run_dir / IMAGE_TOKENIZER_DIR / GUIDANCE_FILE
    assert json.loads(saved.read_text()) == {"unconditional_prompt": BLANK}
    with pytest.raises(ConfigError, match="guidance must be a finite number >= 0"):
        api.generate_parts(run, "Draw a red circle.", guidance=-0.5)
    saved.rename(tmp_path / "kept.json")
    try:
        with pytest.raises(ConfigError, match="no image_tokenizer/guidance.json.*guidance_dropout > 0"):
            api.generate(run, "Draw a red circle.", guidance=2.0)
    finally:
        (tmp_path / "kept.json").rename(saved)


def test_the_flags_reach_guidance_and_refuse_what_it_cannot_apply_to(run, tok, build_model, monkeypatch, capsys):
    seen = []
    sample = Sampler.generate_ids
    monkeypatch.setattr(Sampler, "generate_ids", lambda self, *a, **k: seen.append(k) or sample(self, *a, **k))
    monkeypatch.setattr(api, "load", lambda *args, **kwargs: run)  # the checkpoint "on disk"
    assert main(["generate", "--max-new-tokens", "8", "--guidance", "2", "Draw a red circle."]) == 0
    [called] = seen
    assert called["guidance"] == 2.0 and called["unconditional"][0].contents[0].parts == (Part(text=BLANK),)
    capsys.readouterr()
    assert main(["generate", "--guidance", "-1", "x"]) == 2
    assert "must be 0 or more" in capsys.readouterr().err
    text_only = Run(model=build_model(dataclasses.replace(PRESETS["test"], vocab_size=tok.vocab_size)), tokenizer=tok,
                    run_dir=run.run_dir, step=0)
    monkeypatch.setattr(api, "load", lambda *args, **kwargs: text_only)
    assert main(["generate", "--guidance", "2", "x"]) == 2
    assert "writes text only" in capsys.readouterr().err
    assert main(["eval", "--tasks", "vqa", "--guidance", "2"]) == 2
    assert "--guidance (for demo sets only)" in capsys.readouterr().err


def test_the_eval_task_samples_with_the_runs_unconditional_prompt(run, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from gemini_jax.evals.eval_task import EvalContext
    from gemini_jax.evals.registry import EvalOptions
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.evals.tasks.image_generation import ImageGeneration, draw_images, run_image_writer

    seen = []
    sample = Sampler.generate_ids
    monkeypatch.setattr(Sampler, "generate_ids", lambda self, *a, **k: seen.append(k) or sample(self, *a, **k))
    options = EvalOptions(guidance=2.0, temperature=1.0, progress=False)
    context = EvalContext(model=run.model, tokenizer=run.tokenizer, options=options, run_dir=run.run_dir)
    ImageGeneration().check(context)
    requests = [SimpleNamespace(request=turn(text)) for text in PROMPTS[:3]]
    images = draw_images(context, run_image_writer(context), requests, batch_size=2)
    assert len(images) == 3 and [len(k["unconditional"]) for k in seen] == [2, 1]
    assert all(k["guidance"] == 2.0 and k["unconditional"][0] == turn(BLANK) for k in seen)
    unguided = EvalContext(model=run.model, tokenizer=run.tokenizer, options=EvalOptions(progress=False),
                           run_dir=tmp_path)
    ImageGeneration().check(unguided)  # no unconditional prompt needed without --guidance
    with pytest.raises(TaskDataError, match="image_generation --guidance 2.0: .*no image_tokenizer/guidance.json"):
        ImageGeneration().check(EvalContext(model=run.model, tokenizer=run.tokenizer, options=options,
                                            run_dir=tmp_path))
    with pytest.raises(TaskDataError, match="--guidance must be a finite number >= 0"):
        EvalOptions(guidance=-1.0)


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_top_k_and_top_p_truncate_the_guided_choice_of_each_code(model, tok, guidance):
    """Inside a span, top-k 1 (or a nucleus of almost no mass) keeps only the likeliest code of
    the (guided) logits: sampling at temperature 1 then writes what greedy decoding writes."""
    sampler = spans_sampler(model, tok, OpenSpans)
    prompts, greedy_params, blank = requests(4, temperature=0.0)
    guided = dict(guidance=guidance, unconditional=blank) if guidance is not None else {}
    greedy = sampler.generate_ids(prompts, greedy_params, **guided)

    def sampled(**fields):
        params = [dataclasses.replace(p, **{"temperature": 1.0, **fields}) for p in greedy_params]
        return sampler.generate_ids(prompts, params, **guided)

    assert sampled(top_k=1) == greedy
    assert sampled(top_p=1e-6) == greedy
    assert sampled(temperature=50.0) != greedy  # untruncated sampling does differ: the test can fail


def test_the_eval_samples_codes_with_top_k_and_top_p_and_refuses_bad_values(run, monkeypatch, capsys):
    from types import SimpleNamespace

    from gemini_jax.evals.eval_task import EvalContext
    from gemini_jax.evals.registry import EvalOptions
    from gemini_jax.evals.tasks.base import TaskDataError
    from gemini_jax.evals.tasks.image_generation import draw_images, run_image_writer

    seen = []
    sample = Sampler.generate_ids
    monkeypatch.setattr(Sampler, "generate_ids", lambda self, prompts, params, **k: seen.extend(params) or
                        sample(self, prompts, params, **k))
    options = EvalOptions(temperature=1.0, top_k=7, top_p=0.9, guidance=2.0, progress=False)
    context = EvalContext(model=run.model, tokenizer=run.tokenizer, options=options, run_dir=run.run_dir)
    draw_images(context, run_image_writer(context), [SimpleNamespace(request=turn(t)) for t in PROMPTS[:3]],
                batch_size=2)
    assert [(p.temperature, p.top_k, p.top_p) for p in seen] == [(1.0, 7, pytest.approx(0.9))] * 3
    for bad, message in ((dict(top_k=-1), "--top-k must be >= 0"), (dict(top_p=0.0), r"--top-p must be in \(0, 1\]"),
                         (dict(top_p=1.5), r"--top-p must be in \(0, 1\]")):
        with pytest.raises(TaskDataError, match=message):
            EvalOptions(**bad)
    assert main(["eval", "--tasks", "vqa", "--top-k", "5"]) == 2
    assert "--top-k (for demo sets only)" in capsys.readouterr().err


def drawing_examples(count: int) -> list[Example]:
    """Alternating draw (a request, a picture) and edit (a conversation whose first request is a
    drawing one) examples, as the corpus's."""
    out = []
    for i in range(count):
        draw = (Content("user", (Part(text=f"Draw a red circle. {i}"),)), Content("model", (Part(image=f"t{i}.png"),)))
        edit = (Content("model", (Part(image=f"e{i}.png"),)),) if i % 2 else ()
        turns = (*draw, Content("user", (Part(text=f"Make it blue. {i}"),)), *edit) if edit else draw
        out.append(Example(contents=turns, group=str(i), train_on="last" if edit else "model"))
    return out


def test_training_drops_the_expected_share_of_drawing_requests_and_no_edit():
    from gemini_jax.recipes.image_generation import UNCONDITIONAL_PROMPT, drop_requests

    examples = drawing_examples(8000)
    dropped = drop_requests(examples, fraction=0.1, seed=0)
    changed = [i for i, (a, b) in enumerate(zip(examples, dropped)) if a != b]
    assert all(i % 2 == 0 for i in changed)  # edits kept whole
    assert abs(len(changed) / 4000 - 0.1) < 0.02  # about 400 of the 4000 drawing requests (sd 19)
    for i in changed:
        assert dropped[i].contents[0].parts == (Part(text=UNCONDITIONAL_PROMPT),)
        assert dropped[i].contents[1:] == examples[i].contents[1:] and dropped[i].group == examples[i].group
    assert drop_requests(examples, fraction=0.1, seed=0) == dropped  # fixed per run, on every resume
    assert drop_requests(examples, fraction=0.1, seed=1) != dropped
    assert drop_requests(examples, fraction=0.0, seed=0) == examples


def test_the_unconditional_prompt_is_in_the_recipes_tokenizer_and_the_fields_are_checked(tmp_path):
    from gemini_jax.data.corpora.drawings import DRAW_TEMPLATES
    from gemini_jax.recipes.image_generation import ImageGenerationRecipe, check_unconditional_prompt

    prompts = [t.format(colour=c, shape=s) for t in DRAW_TEMPLATES for c in ("red", "blue") for s in ("circle", "square")]
    check_unconditional_prompt(train_tokenizer(prompts * 10, vocab_size=384, path=tmp_path / "draw.model"))
    with pytest.raises(ConfigError, match="never learned"):
        check_unconditional_prompt(train_tokenizer(["the cat sat on the mat.\n"] * 50, vocab_size=300,
                                                   path=tmp_path / "cat.model"))
    with pytest.raises(ConfigError, match="guidance_dropout"):
        ImageGenerationRecipe(guidance_dropout=1.0)
    with pytest.raises(ConfigError, match="eval_guidance needs guidance_dropout > 0"):
        ImageGenerationRecipe(guidance_dropout=0.0, eval_guidance=2.0)
    with pytest.raises(ConfigError, match="eval_guidance must be"):
        ImageGenerationRecipe(eval_guidance=-1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"eval_top_p .* in \(0, 1\]; got"):
            ImageGenerationRecipe(eval_top_p=bad)
