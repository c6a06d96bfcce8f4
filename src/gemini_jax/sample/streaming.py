"""Turning a growing list of token ids into text deltas, with stop strings.

A request's text is re-decoded from all its ids at each step rather than piece by piece:
SentencePiece joins pieces (a leading "▁" becomes a space, byte-fallback pieces combine into
one UTF-8 character), so a piece has no text of its own. Two things are held back until
more tokens arrive, so that nothing streamed ever has to be taken back:

- a trailing U+FFFD: an incomplete UTF-8 sequence from byte-fallback pieces;
- a tail that could be the start of a stop string ("Obs" while "Observation:" is a stop).

The concatenation of the deltas is always the final text.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


def first_stop(text: str, stops: Sequence[str]) -> int:
    """Where the earliest occurrence of any stop string begins in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = first_stop(text, stops)
    return text if cut < 0 else text[:cut]


def _held_tail(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that begin some stop string (and so may not be sent yet)."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held


class TextStream:
    """The text of one request as its tokens arrive: `update(text)` -> (delta, stopped)."""

    def __init__(self, stops: Sequence[str] = ()):
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stops)!r}")
        self.stops = tuple(stops)
        self.sent = ""  # text already streamed: always a prefix of the final text
        self.text = ""  # the latest full text, truncated at a stop string once one is seen

    def update(self, text: str, *, final: bool = False) -> tuple[str, bool]:
        """Takes the request's whole decoded text so far; returns the new text that is safe to
        send and whether a stop string was found (the text is then cut just before it)."""
        cut = first_stop(text, self.stops)
        stopped = cut >= 0
        if stopped:
            text = text[:cut]
        self.text = text
        if stopped or final:
            safe = len(text)
        else:
            safe = len(text) - _held_tail(text, self.stops)
            while safe > 0 and text[safe - 1] == REPLACEMENT:
                safe -= 1
        if not text.startswith(self.sent):
            # Decoding rewrote text already sent (not seen with SentencePiece, whose decoding
            # only grows at the end): keep what was sent as the answer rather than contradict it.
            self.text = self.sent
            return "", stopped
        delta = text[len(self.sent):safe] if safe > len(self.sent) else ""
        self.sent += delta
        return delta, stopped
