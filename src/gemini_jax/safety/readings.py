"""The readings of a request: its text as written, and as it reads with encoded runs decoded.

A request written in base64 or ROT13 shares no n-grams with the requests the classifiers were
trained on, so a classifier that reads only what is written passes every one of them. A request
is scored on each of its readings, and its score in a category is the highest:
- the text as written;
- the text with every run of base64 (16 characters or more) that decodes to printable UTF-8
  replaced by what it decodes to (where there is one);
- the whole text under ROT13 (ROT13 is its own inverse; an ordinary request read under it is
  letter soup that no request of the policy resembles).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

# A run of the base64 alphabet not inside a longer one; shorter runs are ordinary words.
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")


def _decoded(match: re.Match[str]) -> str:
    run = match.group(0)
    try:
        text = base64.b64decode(run + "=" * (-len(run) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return run
    return text if text.isprintable() else run


def readings(text: str) -> list[str]:
    """[as written, base64 runs decoded (only where one decodes), ROT13]."""
    out = [text]
    decoded = _BASE64_RUN.sub(_decoded, text)
    if decoded != text:
        out.append(decoded)
    out.append(codecs.encode(text, "rot13"))
    return out
