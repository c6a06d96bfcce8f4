"""The demo's split rules: an item goes to test when a stable hash of what identifies it says
so, and a training item to validation when another hash of it says so.

Held-out data is kept apart by construction, never by chance: the same key always lands in the
same split, on every machine and in every process (Python's own `hash` is salted per process).
Test is fixed when the corpus is built (its files); validation is carved from train when it is
read, so recipes choose on validation and read test once, at the end.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "test")  # the corpus files
READ_SPLITS = ("train", "validation", "test")  # what a reader asks for: validation comes from train's file
TEST_PERCENT = 10  # share of the hash space that goes to test
VALIDATION_PERCENT = 5  # share of train that goes to validation


def is_test(key: str) -> bool:
    """The split rule: a stable hash of what identifies an item (never Python's salted hash)."""
    return _percentile(key) < TEST_PERCENT


def _percentile(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 100


def is_validation(key: str) -> bool:
    """Whether a training item is held out for validation (a hash independent of the test rule's)."""
    return _percentile(f"validation:{key}") < VALIDATION_PERCENT
