"""Seeded functions of ids alone: a hash per id, uniform scores from it, and seeded uniform subsets.

Each id's value comes from (seed, id) alone, so a result does not depend on pool order, block splits or
actor count: the random strategy's scores, the subset method's candidates and MC-Dropout's masks.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from vaal_dist.scoring.topk import top_k


def id_hash(ids, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each id, (N,) uint64: the same for an id wherever and whenever it is scored."""
    key = seed.to_bytes(8, "little", signed=True)
    digests = (hashlib.blake2b(str(i).encode(), digest_size=8, key=key).digest() for i in ids)
    return np.fromiter((int.from_bytes(d, "little") for d in digests), np.uint64, count=len(ids))


def uniform_scores(ids, seed: int) -> np.ndarray:
    """A uniform pseudo-random score in [0, 1) per id, (N,) float64, from (seed, id) alone."""
    return (id_hash(ids, seed) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53  # [0, 1), exact


def random_subset(ids: pa.Array, size: int, seed: int) -> pa.Array:
    """A seeded uniform sample of ``size`` ids (all when fewer), independent of their order."""
    if size >= len(ids):
        return ids
    names = ids.to_numpy(zero_copy_only=False).astype(str)
    chosen, _ = top_k(names, uniform_scores(names, seed), size)
    return pa.array(chosen, pa.string())
