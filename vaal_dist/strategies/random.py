"""Random sampling without replacement, as a streaming score: a seeded hash of each id.

Every id gets a uniform pseudo-random score from (seed, id) alone, so the top-b is a uniform sample that
does not depend on pool order, block splits or actor count.
"""
from __future__ import annotations

import hashlib

import numpy as np

from vaal_dist.strategies.base import RoundInputs, TopKStrategy


class RandomScorer:
    def __init__(self, seed: int):
        self.key = seed.to_bytes(8, "little", signed=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        digests = (hashlib.blake2b(str(i).encode(), digest_size=8, key=self.key).digest() for i in batch["id"])
        return np.fromiter((int.from_bytes(d, "little") >> 11 for d in digests), np.float64,
                           count=len(batch["id"])) / 2.0 ** 53     # uniform in [0, 1), exact in float64


class Random(TopKStrategy):
    name = "random"
    scorer = RandomScorer
    needs_labeled = False

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        return {"seed": inputs.config.seed}, {}
