"""Image spans in sampling: codes only inside a span, every span exactly codes_per_image long
and closed, whatever the logits; through the compiled programs of a real (random) model too."""

import dataclasses
import inspect
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemini_jax.config import PRESETS
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.sample.image_spans import NO_ROOM, OUTSIDE, ImageSpans
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams

TEXT_VOCAB, CODES, PER_IMAGE = 40, 12, 5
SPANS = ImageSpans(start_id=9, end_id=10, first_code=TEXT_VOCAB, num_codes=CODES, codes_per_image=PER_IMAGE)


def span_errors(ids: list[int], spans: ImageSpans, text_vocab: int) -> list[str]:
    """What is wrong with a reply's image spans (empty: nothing), read independently of the
    state machine: a code outside a span, a marker out of place, a span of the wrong length."""
    errors, open_at = [], None
    for i, token in enumerate(ids):
        code = spans.first_code <= token < spans.first_code + spans.num_codes
        if open_at is None:
            if code or token == spans.end_id:
                errors.append(f"{token} at {i} outside a span")
            elif token == spans.start_id:
                open_at = i
            elif token >= text_vocab:
                errors.append(f"{token} at {i}: neither text nor a code")
        elif i - open_at <= spans.codes_per_image:
            if not code:
                errors.append(f"{token} at {i}: a span holds only codes")
        else:
            if token != spans.end_id:
                errors.append(f"{token} at {i}: the span opened at {open_at} is not closed after its codes")
            open_at = None
    if open_at is not None:
        errors.append(f"the span opened at {open_at} is never closed")
    return errors


def run_masked(logits: np.ndarray, spans: ImageSpans, text_vocab: int) -> list[int]:
    """Greedy choice through the mask and the host's state, as the sampler loop does."""
    steps = logits.shape[0]
    state = spans.initial(1, room=steps)
    ids = []
    for t in range(steps):
        masked = spans.mask(jnp.asarray(logits[t][None]), jnp.asarray(state), text_vocab=text_vocab)
        token = int(np.argmax(np.asarray(masked)[0]))
        ids.append(token)
        state = spans.advance(state, np.array([token]), room=steps - t - 1)
    return ids


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 30), boost=st.floats(0.0, 8.0))
def test_any_logits_give_whole_spans_and_no_stray_codes(seed, steps, boost):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(steps, TEXT_VOCAB + CODES + 3)).astype(np.float32)  # 3 ids past the codes
    # Push the markers and codes up at random steps, so spans open, close and get cut short by the end.
    logits[:, [SPANS.start_id, SPANS.end_id]] += boost * rng.random((steps, 2))
    logits[:, TEXT_VOCAB:] += boost * rng.random((steps, 1))
    ids = run_masked(logits, SPANS, TEXT_VOCAB)
    assert span_errors(ids, SPANS, TEXT_VOCAB) == []


def test_a_span_opens_when_it_fits_and_not_when_it_cannot_close():
    logits = np.zeros((PER_IMAGE + 2, TEXT_VOCAB + CODES), np.float32)
    logits[:, SPANS.start_id] = 10.0  # the start marker wins wherever it is allowed
    logits[:, TEXT_VOCAB + 3] = 5.0  # then code 3
    ids = run_masked(logits, SPANS, TEXT_VOCAB)
    assert ids == [SPANS.start_id] + [TEXT_VOCAB + 3] * PER_IMAGE + [SPANS.end_id]
    # One token less of room: an image cannot be finished, so none is begun.
    short = run_masked(logits[1:], SPANS, TEXT_VOCAB)
    assert SPANS.start_id not in short and span_errors(short, SPANS, TEXT_VOCAB) == []


def test_state_machine_by_hand():
    state = SPANS.initial(3, room=np.array([7, 6, 100]))
    assert state.tolist() == [OUTSIDE, NO_ROOM, OUTSIDE]
    state = SPANS.advance(state, np.array([SPANS.start_id, 3, 3]), room=np.array([6, 5, 99]))
    assert state.tolist() == [0, NO_ROOM, OUTSIDE]
    state = SPANS.advance(state, np.array([TEXT_VOCAB, 3, 3]), room=np.array([5, 4, 6]))
    assert state.tolist() == [1, NO_ROOM, NO_ROOM]  # the third row has no room left for an image
    allowed = np.asarray(SPANS.allowed(jnp.asarray(state), vocab=TEXT_VOCAB + CODES, text_vocab=TEXT_VOCAB))
    assert allowed[0].nonzero()[0].tolist() == list(range(TEXT_VOCAB, TEXT_VOCAB + CODES))
    assert not allowed[2, SPANS.start_id] and not allowed[2, TEXT_VOCAB:].any() and allowed[2, 3]
    full = SPANS.advance(np.array([PER_IMAGE - 1]), np.array([TEXT_VOCAB]), room=1)
    assert np.asarray(SPANS.allowed(jnp.asarray(full), vocab=TEXT_VOCAB + CODES,
                                    text_vocab=TEXT_VOCAB))[0].nonzero()[0].tolist() == [SPANS.end_id]


@pytest.mark.parametrize("bad", [dict(num_codes=0), dict(codes_per_image=0), dict(end_id=9),
                                 dict(start_id=TEXT_VOCAB + 1)])
def test_bad_spans_are_refused(bad):
    with pytest.raises(ValueError, match="span|codes|ids"):
        dataclasses.replace(SPANS, **bad)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "Draw a red circle. Draw a blue square.\n" * 30]
    return train_tokenizer(corpus, vocab_size=400, path=tmp_path_factory.mktemp("tok") / "t.model")


def test_the_compiled_sampler_keeps_spans_whole(tok, build_model):
    from gemini_jax.data.tokenizer import END_OF_IMAGE, START_OF_IMAGE

    codes = 16
    spans = ImageSpans(start_id=tok.special_id(START_OF_IMAGE), end_id=tok.special_id(END_OF_IMAGE),
                       first_code=tok.vocab_size, num_codes=codes, codes_per_image=4)
    model = build_model(dataclasses.replace(PRESETS["test"], vocab_size=tok.vocab_size + codes))
    sampler = Sampler(model, tok, image_spans=spans)
    prompt = Example(contents=(Content("user", (Part(text="Draw a red circle."),)),))
    # Temperature 50: nearly uniform over what the mask allows, so spans open often by chance.
    params = [SamplingParams(temperature=50.0, max_new_tokens=32, seed=s) for s in range(512)]
    replies = sampler.generate_ids([prompt] * len(params), params)
    assert all(span_errors(ids, spans, tok.vocab_size) == [] for ids in replies)
    opened = sum(ids.count(spans.start_id) for ids in replies)
    assert opened >= 10, f"only {opened} spans in {len(replies)} replies: the test does not exercise them"
    # Without image spans the same model never writes a code.
    plain = Sampler(model, tok).generate_ids([prompt] * 16, params[:16])
    assert all(max(ids, default=0) < tok.vocab_size for ids in plain)
