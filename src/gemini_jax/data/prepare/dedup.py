"""Exact and near-duplicate detection in two passes: `add(index, text)` for every record, then
`duplicates()` -> the indices to drop (all but the first of each group).

Memory is a few numpy arrays per record, never the text: `ExactDedup` keeps 8 bytes per record
(a hash of the lowercased, whitespace-collapsed text); `NearDedup` keeps one uint64 per LSH band and,
to verify candidates, the MinHash signature (uint32 x num_perm: 512 B at 128 permutations), in memory
or, after `spill_to(folder)`, in files (memory then holds an 8-byte index a record).

`NearDedup`: MinHash (datasketch, 32-bit affine permutations) over the set of word 3-gram shingles;
locality-sensitive hashing with b bands of r rows, chosen as datasketch's `MinHashLSH` does: the (b, r)
with b * r <= num_perm that minimises the weighted sum of the false-positive area (the probability that a
pair below the Jaccard threshold collides in some band, integrated over similarity 0..threshold) and the
false-negative area (threshold..1). Candidates are verified, so a false positive costs only a comparison
while a false negative keeps a duplicate: the weights are 0.1 and 0.9, which gives 14 bands of 9 rows for
128 permutations at 0.8 (a pair at Jaccard 0.85 collides with probability 0.97; equal weights would give
9 x 13 and 0.69). The defaults, 3-word shingles and 0.6, catch a document with 5% of its words
replaced one by one (about 0.75 Jaccard with 3-grams, 0.63 with 5-grams): docs/data.md has the
measurements. Pairs that share a band are candidates; with `verify` a candidate counts only when its
estimated Jaccard similarity (the fraction of equal signature entries) reaches the threshold. Groups are
the connected components.
`signature(text)` is a plain function so that a pool of workers can compute signatures and the parent
adds them with `add_signature`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
from datasketch import MinHash

from gemini_jax.data.prepare.hashing import hash_grams, mix, word_hashes

SHINGLE_WORDS = 3


class _Column:
    """A growing 1-D or 2-D numpy array (amortised doubling)."""

    def __init__(self, dtype, width: int | None = None):
        self.data = np.zeros((16,) if width is None else (16, width), dtype)
        self.size = 0

    def append(self, value) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.data[:self.size]


class ExactDedup:
    """Records whose lowercased text is equal after collapsing whitespace."""

    name = "dedup"

    def __init__(self):
        self._indices = _Column(np.int64)
        self._keys = _Column(np.uint64)

    @staticmethod
    def key(text: str) -> int:
        canonical = " ".join(text.lower().split()).encode("utf-8")
        return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")

    def add(self, index: int, text: str) -> None:
        self.add_key(index, self.key(text))

    def add_key(self, index: int, key: int) -> None:
        self._indices.append(index)
        self._keys.append(key)

    def duplicates(self) -> set[int]:
        keys, indices = self._keys.view(), self._indices.view()
        order = np.lexsort((indices, keys))  # by key, then index: the first of each run is kept
        keys, indices = keys[order], indices[order]
        repeat = np.r_[False, keys[1:] == keys[:-1]]
        return set(indices[repeat].tolist())


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return MinHash(num_perm=num_perm, seed=seed).permutations


def signature(text: str, *, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """uint32[num_perm]: the MinHash of the text's word 3-gram shingles (one shingle of all its words
    when it has fewer than 3; an empty text has the all-max signature)."""
    _, hashes = word_hashes(text)
    n = min(SHINGLE_WORDS, len(hashes))
    shingles = hash_grams(hashes, n) >> np.uint64(32) if n else np.zeros(0, np.uint64)  # 32-bit for affine32
    minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, permutations=_permutations(num_perm, seed),
                      scheme="affine32")
    minhash.update_batch(shingles.tolist())  # a repeated shingle changes no minimum
    return minhash.hashvalues


def _area(fn, lo: float, hi: float) -> float:
    s = np.linspace(lo, hi, 201)
    return float(np.trapezoid(fn(s), s))


def lsh_bands(num_perm: int, threshold: float, *, false_positive_weight: float = 0.1,
              false_negative_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas around the threshold."""
    best, best_error = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            collide = lambda s: 1.0 - (1.0 - s ** r) ** b  # noqa: E731  P(some band equal | Jaccard s)
            error = (false_positive_weight * _area(collide, 0.0, threshold)
                     + false_negative_weight * _area(lambda s: 1.0 - collide(s), threshold, 1.0))
            if error < best_error:
                best, best_error = (b, r), error
    return best


@functools.lru_cache(maxsize=8)
def _cached_lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    return lsh_bands(num_perm, threshold)


class _SignatureFile:
    """Signatures read one at a time from a spilled file. Not a memory map: the pages a map touches
    count as the process's memory, and verifying candidates touches most of them."""

    def __init__(self, path: Path, num_perm: int):
        self._fd = os.open(path, os.O_RDONLY)
        self._size = 4 * num_perm

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(os.pread(self._fd, self._size, index * self._size), dtype=np.uint32)

    def close(self) -> None:
        os.close(self._fd)


class NearDedup:
    """Records whose word 3-gram sets have (estimated) Jaccard similarity >= threshold."""

    name = "near_dedup"
    spill_chunk = 4096  # records held in memory between writes when spilled

    def __init__(self, num_perm: int = 128, threshold: float = 0.6, *, seed: int = 1, verify: bool = True):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-dedup threshold must be in (0, 1], got {threshold}")
        self.num_perm, self.threshold, self.seed, self.verify = num_perm, threshold, seed, verify
        self.bands, self.rows = _cached_lsh_bands(num_perm, threshold)
        self._row_weights = mix(np.arange(1, self.rows + 1, dtype=np.uint64))  # [R] pseudo-random weights
        self._indices = _Column(np.int64)
        self._band_hashes = _Column(np.uint64, self.bands)
        self._signatures = _Column(np.uint32, num_perm) if verify else None
        self._folder: Path | None = None  # where the index lives when spilled (spill_to)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (band hashes, signature) not yet written

    def spill_to(self, folder: str | os.PathLike) -> None:
        """Keep the band hashes (one file a band) and the signatures in files under `folder`
        rather than in memory, so that memory stays flat as records grow: `duplicates()` reads
        one band at a time (8 bytes a record) and reads signatures one at a time. Call
        before the first `add`."""
        if self._indices.size:
            raise ValueError("spill_to comes before the first signature is added")
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        for b in range(self.bands):
            self._band_file(b).write_bytes(b"")
        self._signature_file().write_bytes(b"")

    def _band_file(self, b: int) -> Path:
        return self._folder / f"band-{b:03d}.u64"

    def _signature_file(self) -> Path:
        return self._folder / "signatures.u32"

    def _flush(self) -> None:
        if not self._pending:
            return
        bands = np.stack([band for band, _ in self._pending])  # [N, B]
        for b in range(self.bands):
            with open(self._band_file(b), "ab") as f:
                f.write(np.ascontiguousarray(bands[:, b]).tobytes())
        if self.verify:
            with open(self._signature_file(), "ab") as f:
                f.write(np.stack([sig for _, sig in self._pending]).astype(np.uint32).tobytes())
        self._pending = []

    def signature(self, text: str) -> np.ndarray:
        return signature(text, num_perm=self.num_perm, seed=self.seed)

    def add(self, index: int, text: str) -> None:
        self.add_signature(index, self.signature(text))

    def add_signature(self, index: int, sig: np.ndarray) -> None:
        if sig.shape != (self.num_perm,):
            raise ValueError(f"a signature of {self.num_perm} permutations was expected, got shape {sig.shape}")
        rows = sig[:self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)  # [B, R]
        band = mix((rows * self._row_weights).sum(axis=1))  # [B]: a hash of each band's rows
        self._indices.append(index)
        if self._folder is not None:
            self._pending.append((band, sig))
            if len(self._pending) >= self.spill_chunk:
                self._flush()
            return
        self._band_hashes.append(band)
        if self._signatures is not None:
            self._signatures.append(sig)

    def _band(self, b: int) -> np.ndarray:
        if self._folder is None:
            return self._band_hashes.view()[:, b]
        return np.fromfile(self._band_file(b), dtype=np.uint64)

    def duplicates(self) -> set[int]:
        count = self._indices.size
        parent = np.arange(count)

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        sigs = self._signatures.view() if self._signatures is not None else None
        if self._folder is not None:
            self._flush()
            sigs = _SignatureFile(self._signature_file(), self.num_perm) if self.verify else None
        for b in range(self.bands):
            hashes = self._band(b)
            order = np.argsort(hashes, kind="stable")  # equal hashes stay in position order
            column = hashes[order]
            same = np.flatnonzero(column[1:] == column[:-1]) + 1  # positions whose predecessor is equal
            for k in same.tolist():
                first, member = int(order[k - 1]), int(order[k])
                if sigs is not None and np.mean(sigs[first] == sigs[member]) < self.threshold:
                    continue
                a, c = find(first), find(member)
                if a != c:
                    parent[max(a, c)] = min(a, c)  # the root is the earliest record of the group
        if isinstance(sigs, _SignatureFile):
            sigs.close()
        roots = np.fromiter((find(i) for i in range(count)), np.int64, count)
        return set(self._indices.view()[roots != np.arange(count)].tolist())
