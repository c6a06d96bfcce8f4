"""The whole model: token embedding, media encoders, soft-token insertion, decoder, logits.

    model = Gemini(get_preset("test"), rngs=nnx.Rngs(0))
    out = model(batch)                     # out.logits float32[B, T, V]
    cache = model.init_cache(batch_size=B, max_len=S)
    out, cache = model.prefill(prompts, cache)
    logits, cache = model.decode_step(next_tokens, cache)

A batch is the dict of arrays described in `gemini_jax.batch`. Each media family
(images, video frames, audio) is optional per batch; when present, its encoder's soft
tokens replace the placeholder tokens in order (the k-th placeholder of a row takes the
row's k-th valid soft token of that modality).

Dimension letters: B batch, T sequence, D width, V vocabulary, S cache slots,
M soft tokens of one modality in a row (slots x tokens per slot).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.batch import AUDIO_KEYS, FRAME_KEYS, IMAGE_KEYS
from gemini_jax.config import ModelConfig, PromptAttention
from gemini_jax.model.attention import KVCache, LayerKV
from gemini_jax.model.audio import AudioEncoder
from gemini_jax.model.layers import Embedder, SoftTokens, param
from gemini_jax.model.mask import SegmentMask, attention_mask
from gemini_jax.model.transformer import Decoder
from gemini_jax.model.vision import VisionEncoder

_DECODER_KEYS = ("tokens", "segment_ids", "positions", "media_spans")


@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """logits float32[B, T, V]; hidden [B, T, D] after the final norm; intermediates:
    "embedded" [B, T, D] (decoder input, soft tokens in place) and, per modality in the
    batch, "<image|frame|audio>_soft_tokens" [B, slots, n, D] with "..._valid" [B, slots, n]."""

    logits: jax.Array
    hidden: jax.Array
    intermediates: dict[str, jax.Array]


jax.tree_util.register_dataclass(ModelOutput)


def _is_concrete(*arrays: jax.Array) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _fill_placeholders(x: jax.Array, tokens: jax.Array, *, placeholder_id: int, soft: SoftTokens) -> jax.Array:
    """x[B, T, D] with the k-th `placeholder_id` of each row replaced by its k-th valid soft token."""
    batch, slots, per_slot, width = soft.tokens.shape
    num_soft = slots * per_slot
    if num_soft == 0:
        return x
    flat = soft.tokens.reshape(batch, num_soft, width)  # [B, M, D]
    valid = soft.valid.reshape(batch, num_soft)  # [B, M]
    # A stable sort on "invalid" moves the valid tokens to the front, in slot order.
    order = jnp.argsort((~valid).astype(jnp.int32), axis=1, stable=True)  # [B, M]
    compact = jnp.take_along_axis(flat, order[:, :, None], axis=1)  # [B, M, D]
    is_placeholder = tokens == placeholder_id  # [B, T]
    rank = jnp.cumsum(is_placeholder.astype(jnp.int32), axis=1) - 1  # k of the k-th placeholder
    gathered = jnp.take_along_axis(compact, jnp.clip(rank, 0, num_soft - 1)[:, :, None], axis=1)  # [B, T, D]
    return jnp.where(is_placeholder[:, :, None], gathered.astype(x.dtype), x)


def _check_placeholder_counts(batch: Mapping[str, jax.Array], config: ModelConfig) -> None:
    """Outside jit, before any encoder runs: in every row, each modality needs exactly as
    many placeholder tokens as its media give valid soft tokens."""
    mask_keys = ("image_patch_mask", "frame_patch_mask", "audio_mel_mask")
    arrays = [batch["tokens"], *(batch[k] for k in mask_keys if k in batch)]
    if not _is_concrete(*arrays):
        return
    tokens = np.asarray(batch["tokens"])
    rows = tokens.shape[0]
    for name, placeholder_id, mask_key in (
        ("image", config.image_token_id, "image_patch_mask"),
        ("frame", config.frame_token_id, "frame_patch_mask"),
        ("audio", config.audio_token_id, "audio_mel_mask"),
    ):
        available = np.zeros(rows, np.int64)
        if mask_key in batch:
            mask = np.asarray(batch[mask_key])  # [B, slots, P or M]
            if name == "audio":
                per_token = config.audio.subsampling * config.audio.pooling
                available = np.sum(-(-mask.sum(axis=-1) // per_token), axis=-1)
            else:
                real = mask.sum(axis=-1)  # [B, slots]
                per_slot = np.vectorize(lambda n: config.vision.num_soft_tokens(int(n), frame=name == "frame"),
                                        otypes=[np.int64])
                available = np.where(real > 0, per_slot(real), 0).sum(axis=-1)
        placeholders = np.sum(tokens == placeholder_id, axis=1)
        bad = np.nonzero(placeholders != available)[0]
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"batch row {row} has {placeholders[row]} {name} placeholder tokens (id {placeholder_id}) "
                f"but its {name} inputs give {available[row]} soft tokens; the two must be equal"
            )


def code_runs(tokens: jax.Array, *, first_code: int, num_codes: int, run_before: jax.Array) -> jax.Array:
    """int32[B, T]: how many consecutive image codes end at each token (0 where it is no code),
    counting the `run_before` (int32[B]) codes that came before tokens[:, 0] (a decode step's
    cache): a code's place in its image is its run minus one."""
    is_code = (tokens >= first_code) & (tokens < first_code + num_codes)
    count = jnp.cumsum(is_code, axis=1, dtype=jnp.int32)
    runs = count - jax.lax.cummax(jnp.where(is_code, 0, count), axis=1)
    from_start = runs == jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.int32)[None, :]  # unbroken since token 0
    return runs + jnp.where(from_start, run_before[:, None], 0)


class Gemini(nnx.Module):
    """A Gemini model: Gemma-1 decoder with optional vision and audio encoders."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.embedder = Embedder(config.vocab_size, config.width, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.vision = (
            VisionEncoder(config.vision, out_width=config.width, norm_eps=config.norm_eps, dtype=dtype, rngs=rngs)
            if config.vision is not None
            else None
        )
        self.audio = (
            AudioEncoder(
                config.audio, out_width=config.width, rope_base=config.rope_base,
                norm_eps=config.norm_eps, dtype=dtype, rngs=rngs,
            )
            if config.audio is not None
            else None
        )
        output = config.image_output
        if output is not None and output.code_positions:
            # Unit-size entries, as the scaled token embeddings they are added to.
            init = nnx.initializers.normal(stddev=1.0)
            self.code_position = param(init(rngs.params(), (output.codes_per_image, config.width), jnp.float32),
                                       "position", "embed")

    # -- inputs -------------------------------------------------------------------------

    def _media_families(self, batch: Mapping[str, jax.Array]) -> list[str]:
        """The media families present in the batch, after checking keys against the config."""
        families = []
        for family, keys, encoder, field in (
            ("image", IMAGE_KEYS, self.vision, "vision"),
            ("frame", FRAME_KEYS, self.vision, "vision"),
            ("audio", AUDIO_KEYS, self.audio, "audio"),
        ):
            present = [k for k in keys if k in batch]
            if not present:
                continue
            if len(present) != len(keys):
                missing = sorted(set(keys) - set(present))
                raise ValueError(f"batch has {present} but lacks {missing}: {family} inputs need all of {list(keys)}")
            if encoder is None:
                raise ValueError(
                    f"batch has {family} inputs {list(keys)} but the model config has no {field} "
                    f"encoder (ModelConfig.{field} is None); drop those keys or use a config with {field}"
                )
            families.append(family)
        return families

    def _check_text(self, batch: Mapping[str, jax.Array], keys: tuple[str, ...]) -> None:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}; the model needs {list(keys)} (see gemini_jax.batch)")
        shape = batch["tokens"].shape
        if len(shape) != 2:
            raise ValueError(f"batch['tokens'] must be int32[B, T], got shape {shape}")
        for k in keys:
            if batch[k].shape != shape:
                raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}, expected {shape} like batch['tokens']")
        if _is_concrete(batch["tokens"]) and batch["tokens"].size:
            tokens = np.asarray(batch["tokens"])
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"batch['tokens'] holds ids from {low} to {high}; accepted: 0 .. {self.config.vocab_size - 1} "
                    f"(vocab_size)"
                )

    def _encode_media(self, batch: Mapping[str, jax.Array], families: list[str]) -> dict[str, SoftTokens]:
        soft = {}
        for family in families:
            if family == "audio":
                soft[family] = self.audio(batch["audio_mels"], batch["audio_mel_mask"])
                continue
            encode = self.vision.encode_images if family == "image" else self.vision.encode_frames
            soft[family] = encode(
                batch[f"{family}_patches"], batch[f"{family}_coords"], batch[f"{family}_patch_mask"]
            )
        return soft

    def _code_runs(self, tokens: jax.Array, run_before: jax.Array | None = None) -> jax.Array | None:
        """code_runs of `tokens` when the model embeds code places, else None."""
        output = self.config.image_output
        if output is None or not output.code_positions:
            return None
        if run_before is None:
            run_before = jnp.zeros(tokens.shape[:1], jnp.int32)
        return code_runs(tokens, first_code=self.config.first_image_code, num_codes=output.codebook_size,
                         run_before=run_before)

    def _embed(self, batch: Mapping[str, jax.Array], runs: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
        tokens = batch["tokens"]
        x = self.embedder.encode(tokens)  # [B, T, D]
        if runs is not None:
            x = self._add_code_positions(x, runs)
        families = self._media_families(batch)
        _check_placeholder_counts(batch, self.config)
        soft = self._encode_media(batch, families)
        intermediates = {}
        config = self.config
        for family, placeholder_id in (
            ("image", config.image_token_id),
            ("frame", config.frame_token_id),
            ("audio", config.audio_token_id),
        ):
            media = soft.get(family)
            if media is None:
                continue
            x = _fill_placeholders(x, tokens, placeholder_id=placeholder_id, soft=media)
            intermediates[f"{family}_soft_tokens"] = media.tokens
            intermediates[f"{family}_valid"] = media.valid
        intermediates["embedded"] = x
        return x, intermediates

    def _add_code_positions(self, x: jax.Array, runs: jax.Array) -> jax.Array:
        """x[B, T, D] with each code's place embedding added (runs: code_runs of its tokens)."""
        table = self.code_position[...]
        places = jnp.clip(runs - 1, 0, table.shape[0] - 1)  # a malformed longer run keeps the last place
        added = jnp.take(table, places, axis=0).astype(x.dtype)  # [B, T, D]
        return x + jnp.where((runs > 0)[..., None], added, jnp.zeros_like(added))

    def _rope_positions(self, positions: jax.Array, runs: jax.Array | None) -> jax.Array:
        """The positions RoPE rotates by: a code's is max_seq_len + its place, the same in every
        picture (so code p of one picture lies as far from code p + 1 of another as from its own
        neighbour: copying is a fixed offset), and past every text position; the rest keep theirs.
        Slots and the causal order are unchanged."""
        if runs is None:
            return positions
        return jnp.where(runs > 0, self.config.max_seq_len + runs - 1, positions).astype(positions.dtype)

    def embed(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Decoder inputs [B, T, D]: scaled token embeddings (plus code places, where the model
        has them) with soft tokens in their slots."""
        self._check_text(batch, ("tokens",))
        return self._embed(batch, self._code_runs(batch["tokens"]))[0]

    def _self_attention_mask(self, batch: Mapping[str, jax.Array]) -> SegmentMask:
        """The decoder's mask over the whole batch, as the ids it is computed from: blockwise
        attention never builds the [T, T] array, the other implementations build it per layer
        (XLA computes it once)."""
        config = self.config
        # Without encoders and with causal prompts nothing is bidirectional (data/encode.py
        # writes no spans for such a model), and the mask says so statically: spans given
        # anyway are ignored, by every attention implementation alike.
        causal = config.vision is None and config.audio is None and config.prompt_attention == PromptAttention.CAUSAL
        spans = jnp.zeros_like(batch["media_spans"]) if causal else batch["media_spans"]
        return SegmentMask(segment_ids=batch["segment_ids"], media_spans=spans, causal=causal)

    # -- training / scoring ---------------------------------------------------------------

    def __call__(self, batch: Mapping[str, jax.Array]) -> ModelOutput:
        self._check_text(batch, _DECODER_KEYS)
        runs = self._code_runs(batch["tokens"])
        x, intermediates = self._embed(batch, runs)
        positions = self._rope_positions(batch["positions"], runs)
        hidden, _ = self.decoder(x, mask=self._self_attention_mask(batch), positions=positions)
        return ModelOutput(logits=self.embedder.decode(hidden), hidden=hidden, intermediates=intermediates)

    # -- decoding ---------------------------------------------------------------------------

    def init_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        """An empty cache of `max_len` slots per row, in the compute dtype."""
        config = self.config
        return KVCache.zeros(
            num_layers=config.depth, batch_size=batch_size, max_len=max_len,
            num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, dtype=jnp.dtype(config.dtype),
        )

    def prefill(self, batch: Mapping[str, jax.Array], cache: KVCache) -> tuple[ModelOutput, KVCache]:
        """Runs a batch of right-padded prompts (media included) and fills `cache` from slot 0.

        Each row's real tokens (segment_ids > 0) must form a prefix of the row; the
        previous contents of `cache` are discarded. The next decode step of row b
        writes at slot (and RoPE position) = its prompt length.
        """
        self._check_text(batch, _DECODER_KEYS)
        segment_ids = batch["segment_ids"]
        batch_size, length = segment_ids.shape
        if cache.valid.shape[0] != batch_size or length > cache.max_len:
            raise ValueError(
                f"prompt batch [{batch_size}, {length}] does not fit a cache of "
                f"{cache.valid.shape[0]} rows x {cache.max_len} slots"
            )
        real = segment_ids > 0  # [B, T]
        if _is_concrete(segment_ids):
            real_np = np.asarray(real)
            if np.any(real_np[:, 1:] & ~real_np[:, :-1]):
                raise ValueError("prefill needs right-padded prompts: segment_ids > 0 must be a prefix of each row")

        runs = self._code_runs(batch["tokens"])
        x, intermediates = self._embed(batch, runs)
        hidden, kvs = self.decoder(x, mask=self._self_attention_mask(batch),
                                   positions=self._rope_positions(batch["positions"], runs))
        layers = tuple(
            LayerKV(
                k=old.k.at[:, :length].set(new.k.astype(old.k.dtype)),
                v=old.v.at[:, :length].set(new.v.astype(old.v.dtype)),
            )
            for old, new in zip(cache.layers, kvs, strict=True)
        )  # each [B, S, K, H]
        valid = jnp.zeros_like(cache.valid).at[:, :length].set(real)  # [B, S]
        index = jnp.sum(real, axis=1, dtype=jnp.int32)
        code_run = jnp.zeros_like(index)
        if runs is not None:  # the run each prompt ends with
            last = jnp.take_along_axis(runs, jnp.maximum(index - 1, 0)[:, None], axis=1)[:, 0]
            code_run = jnp.where(index > 0, last, 0)
        cache = KVCache(layers=layers, valid=valid, index=index, code_run=code_run)
        output = ModelOutput(logits=self.embedder.decode(hidden), hidden=hidden, intermediates=intermediates)
        return output, cache

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One text token per row (int32[B]) -> (next-token logits float32[B, V], updated cache)."""
        if tokens.ndim != 1 or tokens.shape[0] != cache.index.shape[0]:
            raise ValueError(f"decode_step takes tokens int32[B] with B={cache.index.shape[0]}, got {tokens.shape}")
        batch_size = tokens.shape[0]
        slots = jnp.arange(cache.max_len, dtype=jnp.int32)[None, :]  # [1, S]
        valid = cache.valid | (slots == cache.index[:, None])  # [B, S]: the new token's own slot
        ones = jnp.ones((batch_size, 1), jnp.int32)
        mask = attention_mask(
            segment_ids=ones, media_spans=jnp.zeros_like(ones),
            kv_segment_ids=valid.astype(jnp.int32), q_indices=cache.index[:, None],
        )  # [B, 1, S]
        x = self.embedder.encode(tokens[:, None])  # [B, 1, D]
        runs = self._code_runs(tokens[:, None], cache.code_run)
        code_run = cache.code_run
        if runs is not None:
            x = self._add_code_positions(x, runs)
            code_run = runs[:, 0]
        hidden, layers = self.decoder(x, mask=mask, positions=self._rope_positions(cache.index[:, None], runs),
                                      cache=cache)
        logits = self.embedder.decode(hidden)[:, 0]  # [B, V]
        return logits, KVCache(layers=layers, valid=valid, index=cache.index + 1, code_run=code_run)


def count_params(config: ModelConfig) -> dict[str, int]:
    """Parameter counts by component ("decoder" includes the embedding); nothing is allocated.

    The blocks of each stack (decoder, vision, audio) are alike, so a component's count is
    affine in its depth: n(d) = n(1) + (d - 1) * (n(2) - n(1)). Counting abstract models with
    one and two blocks per stack is exact, and fast where tracing every block of the largest
    presets under eval_shape is not.
    """
    def with_depth(depth: int) -> ModelConfig:
        vision = config.vision and dataclasses.replace(config.vision, depth=depth)
        audio = config.audio and dataclasses.replace(config.audio, depth=depth)
        return dataclasses.replace(config, depth=depth, vision=vision, audio=audio)

    one, two = _abstract_counts(with_depth(1)), _abstract_counts(with_depth(2))
    depths = {"decoder": config.depth, "vision": config.vision.depth if config.vision else 1,
              "audio": config.audio.depth if config.audio else 1}
    counts = {k: one[k] + (depths[k] - 1) * (two[k] - one[k]) for k in depths}
    counts["total"] = sum(counts.values())
    return counts


def _abstract_counts(config: ModelConfig) -> dict[str, int]:
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))

    def size(module: nnx.Module | None) -> int:
        if module is None:
            return 0
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))

    return {"decoder": size(model.embedder) + size(model.decoder), "vision": size(model.vision),
            "audio": size(model.audio)}
