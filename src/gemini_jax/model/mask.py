"""The one attention mask: who sees whom in a packed, multimodal sequence.

`attention_mask` builds it densely (bool[B, T, S]); `SegmentMask` carries what it is
computed from, so that blockwise attention can build it block by block instead.
`attention_mask` runs past 60 lines only because its docstring works three masks to check by eye.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def attention_mask(
    *,
    segment_ids: jax.Array,
    media_spans: jax.Array,
    kv_segment_ids: jax.Array | None = None,
    kv_media_spans: jax.Array | None = None,
    q_indices: jax.Array | None = None,
    kv_indices: jax.Array | None = None,
) -> jax.Array:
    """Which keys each query may attend to: bool[B, T, S].

    Query i sees key j iff both lie in the same packed segment (segment id > 0, so
    padding sees nothing and is seen by nothing) and either j comes no later than i
    (causal, compared by index in the sequence) or i and j lie in the same media span
    (id > 0): the soft tokens of one image, video frame or audio clip see each other.

    Args:
      segment_ids: int32[B, T] packed document id of each query; 0 is padding.
      media_spans: int32[B, T] media span id of each query; 0 outside media.
      kv_segment_ids, kv_media_spans: int32[B, S] the same for the keys; default:
        the queries' (self-attention). Key spans default to 0 when only key segments
        are given (e.g. a KV cache, whose text-only decode steps need no spans).
      q_indices, kv_indices: int32[B, T] / int32[B, S] index of each query / key in
        the sequence; default 0, 1, ... A decode step passes its cache write index.

    Examples (B = 1; rows are queries i, columns keys j):

      causal: segment_ids [1 1 1], media_spans [0 0 0]
        1 0 0
        1 1 0
        1 1 1

      two packed segments and one padding token: segment_ids [1 1 2 2 0], spans 0
        1 0 0 0 0
        1 1 0 0 0
        0 0 1 0 0
        0 0 1 1 0
        0 0 0 0 0

      an image of three soft tokens between two text tokens:
      segment_ids [1 1 1 1 1], media_spans [0 1 1 1 0]
        1 0 0 0 0
        1 1 1 1 0
        1 1 1 1 0
        1 1 1 1 0
        1 1 1 1 1
    """
    if kv_segment_ids is None:
        kv_segment_ids, kv_media_spans = segment_ids, media_spans
    elif kv_media_spans is None:
        kv_media_spans = jnp.zeros_like(kv_segment_ids)
    batch, num_q = segment_ids.shape
    num_kv = kv_segment_ids.shape[1]
    if q_indices is None:
        q_indices = jnp.broadcast_to(jnp.arange(num_q, dtype=jnp.int32)[None, :], (batch, num_q))
    if kv_indices is None:
        kv_indices = jnp.broadcast_to(jnp.arange(num_kv, dtype=jnp.int32)[None, :], (batch, num_kv))

    same_segment = (segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
        segment_ids[:, :, None] > 0
    )  # [B, T, S]
    causal = kv_indices[:, None, :] <= q_indices[:, :, None]  # [B, T, S]
    same_span = (media_spans[:, :, None] == kv_media_spans[:, None, :]) & (
        media_spans[:, :, None] > 0
    )  # [B, T, S]
    return same_segment & (causal | same_span)


@dataclasses.dataclass(frozen=True)
class SegmentMask:
    """A self-attention mask given by what it is computed from: segment_ids and
    media_spans int32[B, T] (see `attention_mask`). Blockwise attention computes its
    mask block by block from these; every other path builds `dense()` bool[B, T, T].

    `causal` (static) promises that no query sees a later key: the model has no media
    and no bidirectional prompts, so `media_spans` is all zero. cuDNN's kernel then skips
    the key blocks above the diagonal, half of the work, instead of reading them masked.
    """

    segment_ids: jax.Array
    media_spans: jax.Array
    causal: bool = False

    def dense(self) -> jax.Array:
        return attention_mask(segment_ids=self.segment_ids, media_spans=self.media_spans)


jax.tree_util.register_dataclass(SegmentMask, data_fields=["segment_ids", "media_spans"], meta_fields=["causal"])
