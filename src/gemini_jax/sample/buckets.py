"""Shape buckets: lengths and batch sizes rounded up, so a stream of requests (or of scoring
batches) reuses a few compiled shapes instead of compiling one per prompt.

    seq_len = length_bucket(37, limit=config.max_seq_len)   # 64
    rows = batch_bucket(3)                                   # 4
"""

from __future__ import annotations

import math

LENGTH_BUCKET = 32  # token lengths are rounded up to a multiple of this
MEL_FRAMES_BUCKET = 100  # one second of log-mel frames; the audio encoder masks the padding


def length_bucket(length: int, *, limit: int) -> int:
    """`length` rounded up to a multiple of LENGTH_BUCKET, at most `limit` (the context)."""
    return min(LENGTH_BUCKET * math.ceil(length / LENGTH_BUCKET), limit)


def batch_bucket(rows: int) -> int:
    """The power of two at or above `rows` (at least 1)."""
    return 1 << max(0, math.ceil(math.log2(rows)))
