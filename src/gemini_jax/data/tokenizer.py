"""A SentencePiece BPE tokenizer with the reserved ids of `config/schema.py`.

Layout (what `train_tokenizer` makes): pad 0, eos 1, bos 2, unk 3, then the user-defined
symbols below from id 4 (turn markers, the three media placeholders, the media begin/end
markers), then 256 byte pieces (byte fallback: no text is ever unknown), then learned pieces.

Special pieces are found by name, so other tokenizers load too: one needs pad, eos, bos,
unk and the two turn markers; the media pieces are optional. A text-only tokenizer (an
imported Gemma one: turn markers at 106 and 107, no media pieces) encodes and decodes text
and chat turns, and says so clearly when asked for a media placeholder.

Whitespace is kept exactly (no normalisation, no dummy prefix, whitespace-only
pieces allowed), so Python source round-trips with its indentation and newlines,
and the ids of two strings concatenated equal the concatenation of their ids at
any piece boundary: the chat template encodes its parts one at a time.

A tokenizer trained with `case_markers=True` (the demo's) has one more reserved piece, "<cap>",
and reads text lower-cased with a marker before each capital (data/case_markers.py): "What"
and "what" differ by one piece, not in every piece. There the concatenation rule holds except
where the first string ends in whitespace and the second starts with a capital letter.

    tok = train_tokenizer(texts, vocab_size=4096, path="tok.model")
    tok = Tokenizer.load("tok.model")
    tok.decode(tok.encode("def f(x):\n    return x\n"))
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from gemini_jax import config as C
from gemini_jax.data.case_markers import CAPITAL, mark_capitals, restore_capitals

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
IMAGE, FRAME, AUDIO = "<image>", "<frame>", "<audio>"
START_OF_IMAGE, END_OF_IMAGE = "<start_of_image>", "<end_of_image>"
START_OF_VIDEO, END_OF_VIDEO = "<start_of_video>", "<end_of_video>"
START_OF_AUDIO, END_OF_AUDIO = "<start_of_audio>", "<end_of_audio>"

# The order fixes the ids (4, 5, ...): it must agree with config/schema.py's constants.
SPECIAL_TOKENS = (
    START_OF_TURN, END_OF_TURN, IMAGE, FRAME, AUDIO,
    START_OF_IMAGE, END_OF_IMAGE, START_OF_VIDEO, END_OF_VIDEO, START_OF_AUDIO, END_OF_AUDIO,
)
PLACEHOLDERS = (IMAGE, FRAME, AUDIO)
MEDIA_MARKERS = (START_OF_IMAGE, END_OF_IMAGE, START_OF_VIDEO, END_OF_VIDEO, START_OF_AUDIO, END_OF_AUDIO)

REQUIRED = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)

# SentencePiece skips training sentences longer than this many bytes; documents are
# cut at line boundaries into pieces no longer than this.
_MAX_SENTENCE_BYTES = 16_384
_SPECIAL_PATTERN = re.compile("|".join(re.escape(s) for s in (*SPECIAL_TOKENS, CAPITAL)))


class TokenizerError(ValueError):
    """A tokenizer file or request that cannot be used."""


class Tokenizer:
    """Wraps a SentencePiece model; picklable (for grain workers) through its serialized proto."""

    def __init__(self, processor: spm.SentencePieceProcessor, *, source: str = "<memory>"):
        self._sp = processor
        self._source = source
        missing = [piece for piece in REQUIRED if not self._has_piece(piece)]
        if missing:
            raise TokenizerError(
                f"{source}: the model lacks the reserved piece(s) {missing}; a tokenizer needs {list(REQUIRED)} "
                f"(train_tokenizer makes them, with the media pieces {list(PLACEHOLDERS + MEDIA_MARKERS)})")
        self._placeholder_ids = frozenset(self._sp.piece_to_id(p) for p in PLACEHOLDERS if self._has_piece(p))
        has_capital = self._has_piece(CAPITAL)
        self._capital_id = self._sp.piece_to_id(CAPITAL) if has_capital else None

    @classmethod
    def from_bytes(cls, model: bytes, *, source: str = "<memory>") -> Tokenizer:
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{source}: not a SentencePiece model ({e})") from None
        return cls(processor, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist (expected a SentencePiece .model file)")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def _has_piece(self, piece: str) -> bool:
        return piece == UNK or self._sp.piece_to_id(piece) != self._sp.unk_id()

    @property
    def has_media(self) -> bool:
        """Whether the tokenizer has every media placeholder and marker (ours do)."""
        return all(self._has_piece(p) for p in PLACEHOLDERS + MEDIA_MARKERS)

    @property
    def case_markers(self) -> bool:
        """Whether capitals are read as a marker piece and the lower-case letter."""
        return self._capital_id is not None

    def __getstate__(self) -> dict:
        return {"model": self._sp.serialized_model_proto(), "source": self._source}

    def __setstate__(self, state: dict) -> None:
        other = Tokenizer.from_bytes(state["model"], source=state["source"])
        self.__dict__.update(other.__dict__)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def start_of_turn_id(self) -> int:
        return self.special_id(START_OF_TURN)

    @property
    def end_of_turn_id(self) -> int:
        return self.special_id(END_OF_TURN)

    @property
    def image_id(self) -> int:
        return self.special_id(IMAGE)

    @property
    def frame_id(self) -> int:
        return self.special_id(FRAME)

    @property
    def audio_id(self) -> int:
        return self.special_id(AUDIO)

    def special_id(self, name: str) -> int:
        """The id of a reserved piece: "<end_of_turn>" or "end_of_turn"."""
        piece = name if name.startswith("<") else f"<{name}>"
        if piece not in (PAD, EOS, BOS, UNK, *SPECIAL_TOKENS):
            raise TokenizerError(f"unknown special token {name!r}; known: {[PAD, EOS, BOS, UNK, *SPECIAL_TOKENS]}")
        if not self._has_piece(piece):
            raise TokenizerError(
                f"{self._source} has no {piece} piece: it is a text-only tokenizer (such as an imported Gemma "
                f"one) and cannot encode image, video or audio parts")
        return self._sp.piece_to_id(piece)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text` (no bos/eos).

        With allow_special=False (the default, right for any text a user wrote) a
        literal "<image>" in the text is spelled with ordinary pieces, so text can
        never forge a media placeholder or a turn marker.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        if allow_special:
            return self._encode(text)
        ids: list[int] = []
        start = 0
        for match in _SPECIAL_PATTERN.finditer(text):
            # Cut after the "<": both halves are encoded alone, and neither matches a symbol.
            ids += self._encode(text[start : match.start() + 1])
            start = match.start() + 1
        ids += self._encode(text[start:])
        return ids

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(mark_capitals(text) if self.case_markers else text)

    def decode(self, ids: Sequence[int] | Iterable[int]) -> str:
        """Text of `ids`; media placeholders and pad/bos/eos are dropped."""
        kept = [int(i) for i in ids if int(i) not in self._placeholder_ids]
        bad = [i for i in kept if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if not self.case_markers:
            return self._sp.decode(kept)
        segments: list[list[int]] = [[]]
        for i in kept:
            if i == self._capital_id:
                segments.append([])
            else:
                segments[-1].append(i)
        return restore_capitals(self._sp.decode(segment) for segment in segments)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Documents cut at newlines into pieces SentencePiece accepts (newlines kept inside)."""
    for text in texts:
        chunk: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            n = len(line.encode("utf-8"))
            if size + n > _MAX_SENTENCE_BYTES and chunk:
                yield "".join(chunk)
                chunk, size = [], 0
            while n > _MAX_SENTENCE_BYTES:  # one enormous line: cut by characters
                cut = _MAX_SENTENCE_BYTES // 4  # utf-8 takes at most 4 bytes a character
                yield line[:cut]
                line = line[cut:]
                n = len(line.encode("utf-8"))
            chunk.append(line)
            size += n
        if chunk:
            yield "".join(chunk)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, path: str | os.PathLike,
                    case_markers: bool = False, split_digits: bool = True) -> Tokenizer:
    """Trains a BPE tokenizer in memory and writes it atomically to `path`.

    `vocab_size` counts everything, reserved and byte pieces included (at least
    about 300). With a corpus too small to learn that many pieces the vocabulary
    comes out smaller; `Tokenizer.vocab_size` says what it is. `case_markers`: learn
    lower-cased text with a "<cap>" piece before capitals (the module's docstring).
    `split_digits=False` lets numbers that recur become pieces of their own (" 40,").
    """
    symbols = [*SPECIAL_TOKENS, *([CAPITAL] if case_markers else [])]
    sentences = _training_sentences(texts)
    if case_markers:
        sentences = map(mark_capitals, sentences)
    reserved = 4 + len(symbols) + 256
    if vocab_size <= reserved:
        raise TokenizerError(f"vocab_size must exceed {reserved} (reserved + byte pieces), got {vocab_size}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=0.9995,
            byte_fallback=True,
            split_digits=split_digits,
            pad_id=C.PAD_ID, eos_id=C.EOS_ID, bos_id=C.BOS_ID, unk_id=C.UNK_ID,
            pad_piece=PAD, eos_piece=EOS, bos_piece=BOS, unk_piece=UNK,
            user_defined_symbols=symbols,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            # A marker adds 5 bytes to a capital: room for a cut piece made of capitals.
            max_sentence_length=_MAX_SENTENCE_BYTES * (6 if case_markers else 1),
            max_sentencepiece_length=16,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    tokenizer = Tokenizer.from_bytes(model.getvalue(), source=str(path))
    _write_atomically(Path(path), model.getvalue())
    return tokenizer


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
