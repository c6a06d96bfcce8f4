"""The demo's split rule: an item goes to test when a stable hash of what identifies it says so.

Held-out data is kept apart by construction, never by chance: the same key always lands in the
same split, on every machine and in every process (Python's own `hash` is salted per process).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "test")
TEST_PERCENT = 10  # share of the hash space that goes to test


def is_test(key: str) -> bool:
    """The split rule: a stable hash of what identifies an item (never Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 100 < TEST_PERCENT
