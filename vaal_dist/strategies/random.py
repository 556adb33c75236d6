"""Random sampling without replacement, as a streaming score: a seeded hash of each id.

Every id gets a uniform pseudo-random score from (seed, id) alone, so the top-b is a uniform sample that
does not depend on pool order, block splits or actor count.
"""
from __future__ import annotations

import hashlib

import numpy as np

from vaal_dist.strategies.base import RoundInputs, TopKStrategy


def id_hash(ids, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each id, (N,) uint64: the same for an id wherever and whenever it is scored."""
    key = seed.to_bytes(8, "little", signed=True)
    digests = (hashlib.blake2b(str(i).encode(), digest_size=8, key=key).digest() for i in ids)
    return np.fromiter((int.from_bytes(d, "little") for d in digests), np.uint64, count=len(ids))


class RandomScorer:
    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return (id_hash(batch["id"], self.seed) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53  # [0, 1), exact


class Random(TopKStrategy):
    name = "random"
    scorer = RandomScorer
    needs_labeled = False

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        return {"seed": inputs.config.seed}, {}
