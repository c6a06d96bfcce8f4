"""Capital letters written as a marker piece and the lower-case letter, reversibly.

A tokenizer that learns "What" and "what" as different pieces makes a model learn every word
twice, and a model that has seen only one of them reads the other as a different word. With
case markers the text is tokenized lower-cased, each capital letter announced by `CAPITAL`:

    mark_capitals("What is Red?")    # "<cap>what is<cap> red?"

The marker goes before the space in front of a capitalised word, so " red" and " Red" share
the piece " red" and differ only by the marker. Only letters whose lower case maps back to them
one to one are marked ("İ" is left as it is); `restore_capitals` undoes `mark_capitals` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

CAPITAL = "<cap>"


def _markable(ch: str) -> bool:
    low = ch.lower()
    return low != ch and len(low) == 1 and low.upper() == ch


def mark_capitals(text: str) -> str:
    """`text` lower-cased, `CAPITAL` before each capital letter (before the whitespace in front
    of it, where there is one)."""
    out: list[str] = []
    previous = ""
    for ch in text:
        if _markable(ch):
            if previous.isspace():
                out.insert(len(out) - 1, CAPITAL)
            else:
                out.append(CAPITAL)
            ch = ch.lower()
        out.append(ch)
        previous = ch
    return "".join(out)


def restore_capitals(segments: Iterable[str]) -> str:
    """The text of `segments` (text between markers, in order; the first is before any):
    the letter that follows each marker, after at most one whitespace character, upper-cased.
    A marker not followed by a letter is dropped."""
    pieces = iter(segments)
    out = [next(pieces, "")]
    for segment in pieces:
        at = 1 if segment[:1].isspace() else 0
        ch = segment[at : at + 1]
        if ch and ch.upper() != ch and len(ch.upper()) == 1:
            segment = segment[:at] + ch.upper() + segment[at + 1 :]
        out.append(segment)
    return "".join(out)
