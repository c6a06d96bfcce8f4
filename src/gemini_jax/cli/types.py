"""Flag value types with their ranges: argparse turns their errors into one usage line."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def spike_factor(text: str) -> float:
    value = _number(text, float)
    if not (value == 0 or value > 1):
        raise argparse.ArgumentTypeError(f"must be 0 (off) or above 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    """A share in (0, 1], e.g. top-p."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def unit_interval(text: str) -> float:
    """A weight in [0, 1], e.g. distillation's alpha."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def int_list(text: str, *, least: int, what: str, example: str, skip_empty: bool = False) -> tuple[int, ...]:
    """Integers of at least `least` separated by commas; `skip_empty` passes over empty items ("8,,5")."""
    pieces = [n for n in text.split(",") if n.strip()] if skip_empty else text.split(",")
    try:
        values = tuple(int(n) for n in pieces)
    except ValueError:
        values = ()
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"takes {what} separated by commas (e.g. {example}), got {text!r}")
    return values


def lengths(text: str) -> tuple[int, ...]:
    """Token counts separated by commas, e.g. 256,512."""
    return int_list(text, least=1, what="positive token counts", example="256,512", skip_empty=True)


def port(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535], got {value}")
    return value


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32), got {value}")
    return value
