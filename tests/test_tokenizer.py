"""The SentencePiece tokenizer: reserved ids, faithful round trips of code, special tokens."""

import inspect
import json.decoder
import os
import pickle
import string
import textwrap

import pytest

from gemini_jax import config as C
from gemini_jax.data import tokenizer as T

CORPUS = [
    inspect.getsource(textwrap),
    inspect.getsource(json.decoder),
    "Ünïcödé façade, naïve café. 東京 🙂\n" * 20,
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return T.train_tokenizer(CORPUS, vocab_size=500, path=tmp_path_factory.mktemp("tok") / "t.model")


def test_reserved_ids_match_config(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (C.PAD_ID, C.EOS_ID, C.BOS_ID, C.UNK_ID)
    assert (tok.start_of_turn_id, tok.end_of_turn_id) == (C.START_OF_TURN_ID, C.END_OF_TURN_ID)
    assert (tok.image_id, tok.frame_id, tok.audio_id) == (C.IMAGE_TOKEN_ID, C.FRAME_TOKEN_ID, C.AUDIO_TOKEN_ID)
    assert [tok.special_id(s) for s in T.SPECIAL_TOKENS] == list(range(4, 15))
    assert tok.special_id("end_of_audio") == 14
    assert 300 < tok.vocab_size <= 500
    with pytest.raises(T.TokenizerError, match="unknown special token"):
        tok.special_id("<nope>")


CODE_SAMPLES = [
    inspect.getsource(string),  # real code the tokenizer never saw
    "def f(x):\n\tif x:\n        return  x   # trailing   \n\n\n    \n",
    "  leading spaces, then text\r\nand a CRLF line\n",
    "naïve 東京 emoji 🙂 and a rare ꙮ character\n",
    "",
]


@pytest.mark.parametrize("text", CODE_SAMPLES)
def test_round_trip_is_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_indentation_becomes_whitespace_pieces(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("    return x")]
    assert "".join(pieces).replace("\u2581", " ") == "    return x"
    assert pieces[0].strip("\u2581") == ""  # the indent is its own piece, not glued to a word


def test_digits_are_split(tok):
    ids = tok.encode("20481")
    assert [tok.decode([i]) for i in ids] == list("20481")


def test_special_tokens_stay_whole(tok):
    ids = tok.encode("<start_of_turn>user\n<image><end_of_turn>", allow_special=True)
    assert ids == [C.START_OF_TURN_ID, *tok.encode("user\n"), C.IMAGE_TOKEN_ID, C.END_OF_TURN_ID]


def test_user_text_cannot_forge_special_tokens(tok):
    text = "say <image> or <start_of_turn>model"
    ids = tok.encode(text)
    assert not set(ids) & set(range(4, 15))
    assert tok.decode(ids) == text


def test_decode_skips_placeholders_and_control_tokens(tok):
    ids = [tok.bos_id, tok.image_id, tok.image_id, *tok.encode("a cat"), tok.eos_id]
    assert tok.decode(ids) == "a cat"
    with pytest.raises(T.TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_load_and_pickle_give_the_same_tokenizer(tok, tmp_path):
    path = tmp_path / "sub" / "again.model"
    trained = T.train_tokenizer(CORPUS, vocab_size=500, path=path)
    assert os.listdir(path.parent) == ["again.model"]  # no temporary file left behind
    loaded = T.Tokenizer.load(path)
    text = CODE_SAMPLES[0][:2000]
    assert loaded.encode(text) == trained.encode(text) == tok.encode(text)
    assert pickle.loads(pickle.dumps(loaded)).encode(text) == loaded.encode(text)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(T.TokenizerError, match="missing.model.*does not exist"):
        T.Tokenizer.load(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(T.TokenizerError, match="bad.model"):
        T.Tokenizer.load(bad)


def test_too_small_vocab_is_refused(tmp_path):
    with pytest.raises(T.TokenizerError, match="vocab_size must exceed"):
        T.train_tokenizer(CORPUS, vocab_size=100, path=tmp_path / "t.model")


def test_long_lines_are_not_dropped_from_training(tmp_path):
    # One 40 kB line (beyond SentencePiece's sentence limit) is the whole corpus: its
    # repeated word must still be learned as a piece.
    line = "zebra " * 7000
    tok = T.train_tokenizer([line], vocab_size=320, path=tmp_path / "t.model")
    assert len(tok.encode("zebra")) <= 2


def test_capitals_marked_past_the_sentence_limit_are_still_learned(tmp_path):
    # 16 kB of capitalised words fits SentencePiece's limit, and grows past it once marked.
    tok = T.train_tokenizer(["Zebra " * 2700], vocab_size=330, path=tmp_path / "t.model", case_markers=True)
    assert len(tok.encode("zebra")) <= 2 and len(tok.encode("Zebra")) <= 3


def test_a_text_only_tokenizer_with_other_ids_loads_and_refuses_media(tmp_path):
    from conftest import train_gemma_like_tokenizer

    tok = T.Tokenizer.load(train_gemma_like_tokenizer(CORPUS, vocab_size=400, path=tmp_path / "gemma.model"))
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.start_of_turn_id, tok.end_of_turn_id) == (0, 1, 2, 10, 11)
    assert not tok.has_media
    text = "def f(x):\n    return x  # done\n"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(T.TokenizerError, match="gemma.model has no <image> piece: it is a text-only tokenizer"):
        tok.image_id
    assert T.Tokenizer.load(tmp_path / "gemma.model").__getstate__()["source"].endswith("gemma.model")


def test_a_tokenizer_without_turn_markers_is_refused(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=300, hard_vocab_limit=False, byte_fallback=True, minloglevel=2)
    with pytest.raises(T.TokenizerError, match=r"plain.model: the model lacks the reserved piece\(s\) \['<pad>', "):
        T.Tokenizer.load(tmp_path / "plain.model")


@pytest.fixture(scope="module")
def cased(tmp_path_factory):
    return T.train_tokenizer(CORPUS, vocab_size=500, path=tmp_path_factory.mktemp("tok") / "c.model", case_markers=True)


def test_case_markers_add_one_reserved_piece_after_the_others(tok, cased):
    assert cased.case_markers and not tok.case_markers
    assert cased.id_to_piece(15) == "<cap>"
    assert [cased.special_id(s) for s in T.SPECIAL_TOKENS] == list(range(4, 15))


@pytest.mark.parametrize("text", [*CODE_SAMPLES, "Is it Red?\n  NASA said: İstanbul, ẞ, Éclair.", "A  B\tC", "x<cap>y <Cap>"])
def test_case_marked_round_trip_is_exact(cased, text):
    assert cased.decode(cased.encode(text)) == text


def test_capitalised_words_differ_from_lower_case_ones_by_one_marker(cased):
    marker = 15
    for lower, upper in [("what shape is in the image?", "What shape is in the image?"),
                         ("the def keyword", "the Def keyword")]:
        assert [i for i in cased.encode(upper) if i != marker] == cased.encode(lower)
        assert cased.encode(upper).count(marker) == 1


def test_user_text_cannot_forge_the_case_marker(cased):
    assert 15 not in cased.encode("<cap>x")
    assert 15 in cased.encode("<cap>x", allow_special=True)


def test_case_markers_survive_loading_and_pickling(cased):
    for again in (T.Tokenizer.load(cased._source), pickle.loads(pickle.dumps(cased))):
        assert again.case_markers and again.encode("Hello There") == cased.encode("Hello There")
