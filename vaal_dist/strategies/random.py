"""Random sampling without replacement, as a streaming score: a seeded hash of each id.

Every id gets a uniform pseudo-random score from (seed, id) alone, so the top-b is a uniform sample that
does not depend on pool order, block splits or actor count.
"""
from __future__ import annotations

import numpy as np

from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.ids import uniform_scores
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.strategies.base import TopKStrategy


class RandomScorer:
    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return uniform_scores(batch["id"], self.seed)


class Random(TopKStrategy):
    name = "random"
    trains = ()

    def train(self, inputs: RoundInputs) -> Trained:
        return Trained(ScorerSpec(RandomScorer, {"seed": inputs.config.seed}))


STRATEGIES = (Random,)
