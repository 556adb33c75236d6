"""Seeded functions of ids alone: a hash per id, uniform scores from it, seeded uniform subsets, and the score
sample's priorities.

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
    return _blake2b_64(ids, key=seed.to_bytes(8, "little", signed=True))


def uniform_scores(ids, seed: int) -> np.ndarray:
    """A uniform pseudo-random score in [0, 1) per id, (N,) float64, from (seed, id) alone."""
    return _unit_interval(id_hash(ids, seed))


def sample_priorities(ids) -> np.ndarray:
    """Each id's claim to a place in the score sample (``topk.RunningSample``), uniform in [0, 1) from the id
    alone, (N,) float64. blake2b personalised for this use: independent of the random strategy's seeded scores
    of the same ids, whatever its seed (a sample of the rows those score highest would be the top of the
    distribution)."""
    return _unit_interval(_blake2b_64(ids, person=b"score-sample"))


def _blake2b_64(ids, **params) -> np.ndarray:
    """(N,) uint64: each id's 8-byte BLAKE2b digest under ``params`` (key or person), little-endian."""
    digests = (hashlib.blake2b(str(i).encode(), digest_size=8, **params).digest() for i in ids)
    return np.fromiter((int.from_bytes(d, "little") for d in digests), np.uint64, count=len(ids))


def _unit_interval(bits: np.ndarray) -> np.ndarray:
    """uint64 bits -> float64 in [0, 1), exactly: their top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def random_subset(ids: pa.Array, size: int, seed: int) -> pa.Array:
    """A seeded uniform sample of ``size`` ids (all when fewer), independent of their order."""
    if size >= len(ids):
        return ids
    names = ids.to_numpy(zero_copy_only=False).astype(str)
    chosen, _ = top_k(names, uniform_scores(names, seed), size)
    return pa.array(chosen, pa.string())
