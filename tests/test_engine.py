"""The continuous-batching engine: cached decoding equal to full forward passes, requests joining
mid-decode and reusing freed slots, per-slot sampling, stop strings, streaming, one compiled step."""

import dataclasses
import inspect
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gemini_jax.config import PRESETS
from gemini_jax.data.encode import EncodeError, encode_example
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.model.attention import KVCache
from gemini_jax.model.gemini import ModelOutput
from gemini_jax.sample.engine import Engine, QueueFull
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams
from gemini_jax.sample.streaming import TextStream

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)
SENTENCE = "A red circle. A blue square."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    return train_tokenizer(corpus, vocab_size=400, path=tmp_path_factory.mktemp("tok") / "t.model")


def user(*parts: Part) -> Example:
    return Example(contents=[Content("user", list(parts))])


def greedy_reference(model, tok, example: Example, max_new_tokens: int, *, pad_to: int = 96) -> list[int]:
    """The answer by argmax of full-sequence logits, recomputed from scratch for every token (no cache).
    Sequences are right-padded (segment id 0) to one length, so that this compiles once per prompt kind."""
    row = encode_example(example, tokenizer=tok, config=CONFIG, for_generation=True)
    tokens = list(row["tokens"])
    answer = []
    for _ in range(max_new_tokens):
        t = len(tokens)
        batch = {k: v[None] for k, v in row.items()}
        batch.update(tokens=np.array([tokens + [0] * (pad_to - t)], np.int32),
                     segment_ids=(np.arange(pad_to) < t).astype(np.int32)[None],
                     positions=np.arange(pad_to, dtype=np.int32)[None],
                     media_spans=np.pad(row["media_spans"], (0, pad_to - len(row["media_spans"])))[None])
        next_id = int(np.argmax(np.asarray(model(batch).logits[0, t - 1])))
        if next_id in (tok.end_of_turn_id, tok.eos_id):
            break
        answer.append(next_id)
        tokens.append(next_id)
    return answer


def sharpened(model, factor: float = 3.0):
    """A copy with sharper attention and MLP gates: random weights at init scale repeat one token
    whatever the context, which would hide a cache that lost its context."""
    graphdef, state = nnx.split(model)
    state = jax.tree_util.tree_map_with_path(lambda p, x: x * factor if p[-2].key in ("q", "gate") else x, state)
    return nnx.merge(graphdef, state)


def test_batched_cached_decoding_equals_full_forward_passes(build_model, tok, tmp_path):
    model = sharpened(build_model(CONFIG, seed=3))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 36, 3), np.uint8)).save(tmp_path / "a.png")
    prompts = [
        user(Part(text="What colour is the shape?")),
        user(Part(text="A")),
        user(Part(image=str(tmp_path / "a.png")), Part(text="A red circle. A blue")),  # joins mid-decode
        user(Part(text=SENTENCE * 3)),  # reuses the slot the second request left
    ]
    lengths = [7, 3, 6, 5]
    engine = Engine(model, tok, slots=3, max_len=128)
    first = [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in zip(prompts[:2], lengths[:2])]
    engine.step()
    engine.step()
    assert first[1].done and len(first[0].token_ids) == 3  # the second left; the first is mid-answer
    third = engine.submit(prompts[2], SamplingParams(max_new_tokens=lengths[2]))
    engine.step()
    assert engine.active_slots == 2 and engine._live[1] is third  # joined in the slot the second left
    fourth = engine.submit(prompts[3], SamplingParams(max_new_tokens=lengths[3]))
    engine.run_until_idle()
    for request, prompt, n in zip([*first, third, fourth], prompts, lengths):
        assert request.result().token_ids == greedy_reference(model, tok, prompt, n)
    # One compiled decode step served every occupancy and every prompt length.
    assert engine.programs._decode._cache_size() == 1
    assert any(len(r.token_ids) > 1 and len(set(r.token_ids)) > 1 for r in [*first, third, fourth])


class BigramModel(nnx.Module):
    """A mock decoder whose next-token logits depend only on the last token: logits = table[token].
    It follows the engine's model interface (config, init_cache, prefill, decode_step)."""

    def __init__(self, table: np.ndarray):
        self.config = CONFIG
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))  # [V, V]

    def init_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        return KVCache.zeros(num_layers=1, batch_size=batch_size, max_len=max_len, num_kv_heads=1, head_dim=2,
                             dtype=jnp.float32)

    def prefill(self, batch, cache):
        logits = self.table[...][batch["tokens"]]  # [B, T, V]
        index = jnp.sum(batch["segment_ids"] > 0, axis=1, dtype=jnp.int32)
        valid = jnp.arange(cache.max_len)[None, :] < index[:, None]
        return ModelOutput(logits=logits, hidden=logits, intermediates={}), KVCache(cache.layers, valid, index, cache.code_run)

    def decode_step(self, tokens, cache):
        return self.table[...][tokens], KVCache(cache.layers, cache.valid, cache.index + 1, cache.code_run)


def chain_table(tok, text: str, *, rest: float = -4.0) -> tuple[np.ndarray, str]:
    """A bigram table whose greedy path spells (about) `text`, then ends the turn; every other token
    stays possible. A bigram can follow no token twice, so repeated pieces are dropped: the text
    it spells is returned."""
    prefix = [tok.start_of_turn_id, *tok.encode("model\n")]  # the prompt's end: where the answer starts
    ids = [i for i in dict.fromkeys(tok.encode(text)) if i not in prefix]
    table = np.full((CONFIG.vocab_size, CONFIG.vocab_size), rest, np.float32)
    table[:, tok.vocab_size:] = -1e9
    table[:, [tok.eos_id]] = -1e9
    path = [*prefix, *ids, tok.end_of_turn_id]
    assert len(set(path)) == len(path)
    for a, b in zip(path[:-1], path[1:]):
        table[a, b] = 4.0
    return table, tok.decode(ids)


def test_stop_strings_cut_the_text_and_streaming_adds_up(tok):
    table, spelled = chain_table(tok, SENTENCE)
    engine = Engine(BigramModel(table), tok, slots=2, max_len=96)
    prompt = user(Part(text="Go"))
    assert engine.generate([prompt], [SamplingParams(max_new_tokens=40)])[0].text == spelled
    middle = len(spelled) // 2
    stop = spelled[middle: middle + 3]  # most likely spread over several tokens
    deltas = []
    request = engine.submit(prompt, SamplingParams(max_new_tokens=40), stop=[stop, "zebra"],
                            on_event=lambda e: deltas.append(e))
    plain = engine.submit(prompt, SamplingParams(max_new_tokens=4))
    engine.run_until_idle()
    result = request.result()
    assert result.text == spelled[: spelled.find(stop)] and result.finish_reason == "stop"
    assert "".join(e.delta for e in deltas) == result.text and deltas[-1].finished
    assert plain.result().finish_reason == "length" and spelled.startswith(plain.result().text)
    # A tail that may begin a stop string is held back until it is known not to be one.
    stream = TextStream(["circle!"])
    assert stream.update("A red circ") == ("A red ", False)
    assert stream.update("A red circle.") == ("circle.", False)


def test_sampling_masks_and_seeds_are_per_request(tok):
    rng = np.random.default_rng(0)
    table = np.where(np.arange(CONFIG.vocab_size) < tok.vocab_size, rng.normal(size=(CONFIG.vocab_size,) * 2),
                     -1e9).astype(np.float32)
    table[:, [tok.eos_id, tok.end_of_turn_id]] = -1e9  # answers run to max_new_tokens
    engine = Engine(BigramModel(table), tok, slots=4, max_len=64)
    prompt = user(Part(text="Go"))

    def hot(seed, **kw):
        return SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed, **kw)

    def answer(params, companions=()):
        [mine, *_] = engine.generate([prompt, *[prompt] * len(companions)], [params, *companions])
        return mine.token_ids

    alone = answer(hot(7))
    assert answer(hot(7), [hot(1), SamplingParams(max_new_tokens=3), hot(9, top_k=2)]) == alone
    assert answer(hot(8)) != alone
    # The same key schedule as Sampler: the engine and the static batch agree on sampled answers.
    assert Sampler(BigramModel(table), tok).generate_ids([prompt], [hot(7)])[0] == alone
    # top-k 2 / top-p: each token lies in its predecessor's allowed set.
    for params, allowed in ((hot(3, top_k=2), lambda row: np.argsort(row)[-2:]),
                            (hot(4, top_p=0.3), lambda row: nucleus(row, 0.3))):
        prev = int(engine.encode(prompt)["tokens"][-1])
        for token in answer(params):
            assert token in allowed(table[prev])
            prev = token


def nucleus(logits: np.ndarray, p: float) -> np.ndarray:
    order = np.argsort(logits)[::-1]
    probs = np.exp(logits[order] - logits.max())
    probs /= probs.sum()
    return order[: int(np.sum(np.cumsum(probs) - probs < p))]


def test_queue_limit_context_and_cancel(tok):
    engine = Engine(BigramModel(chain_table(tok, SENTENCE)[0]), tok, slots=1, max_len=40, max_queue=1)
    prompt = user(Part(text="Go"))
    engine.submit(prompt, SamplingParams(max_new_tokens=2))
    engine.submit(prompt, SamplingParams(max_new_tokens=2))
    with pytest.raises(QueueFull):
        engine.submit(prompt, SamplingParams(max_new_tokens=2))
    with pytest.raises(EncodeError, match="context"):
        engine.submit(prompt, SamplingParams(max_new_tokens=40))
    engine.run_until_idle()
    assert engine._in_flight == 0
    # A cancelled request (its client went away) leaves its slot at the next step.
    events = []
    request = engine.submit(prompt, SamplingParams(max_new_tokens=20), on_event=events.append)
    engine.step()
    request.cancel()
    engine.step()
    assert request.result().finish_reason == "cancelled" and events[-1].finished and engine.active_slots == 0
