"""Text normalisation: one spelling for the same text, before filters, dedup and training.

`\r\n` and `\r` become `\n`; control characters other than `\n` and `\t` are dropped;
runs of spaces and tabs inside a line become one space (leading indentation is kept, so Python
source stays valid); trailing spaces go; at most two blank lines in a row; Unicode NFC. Idempotent:
`normalize_text(normalize_text(t)) == normalize_text(t)`.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")  # C0/C1 less \t \n, zero-width space, BOM
# after trailing blanks are gone, a run of blanks that follows a visible character is inside a line
_INNER_BLANKS = re.compile(r"(?<=\S)(?:[ \t\u00a0\u2000-\u200a\u3000]{2,}|[\t\u00a0\u2000-\u200a\u3000])")
_TRAILING = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{4,}")  # three or more blank lines


def normalize_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text)
    text = _INNER_BLANKS.sub(" ", text)
    text = _BLANK_LINES.sub("\n\n\n", text)
    if unicodedata.is_normalized("NFC", text):  # a quick check, true for almost all text
        return text
    return unicodedata.normalize("NFC", text)  # last: dropping a control character can join a letter to its accent
