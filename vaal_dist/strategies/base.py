"""The strategy interface: train what you need, then score batches (higher = pick)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa

from vaal_dist.config import RoundConfig
from vaal_dist.pool.dataset import read_pool, split_labeled
from vaal_dist.pool.io import PoolMeta
from vaal_dist.scoring.stream import ScoredTopK, stream_top_k


@dataclass(frozen=True)
class RoundInputs:
    """What a strategy may use to train: the round's config, the pool's layout and the labeled ids."""

    config: RoundConfig
    meta: PoolMeta
    labeled_ids: pa.Array
    train_dir: str            # checkpoint storage for this round (local path or URI)


class Scorer(Protocol):
    """Built once per scoring actor from the kwargs ``Strategy.train`` returned."""

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """One float per row of ``batch`` (columns ``id``, ``image``); higher means label it first."""


class Strategy(Protocol):
    name: ClassVar[str]
    scorer: ClassVar[type[Scorer]]
    needs_labeled: ClassVar[bool]     # trains on labeled images (each training worker needs some)

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        """Train (on Ray Train) what scoring needs; return (scorer kwargs, facts for the run record)."""

    def select(self, inputs: RoundInputs, scorer_kwargs: dict) -> ScoredTopK:
        """The ``budget`` unlabeled ids to label, best first."""


class TopKStrategy:
    """Selection by independent per-image scores: the pool streams through the exact top-b."""

    def select(self, inputs: RoundInputs, scorer_kwargs: dict) -> ScoredTopK:
        cfg = inputs.config
        _, unlabeled = split_labeled(read_pool(cfg.pool), inputs.labeled_ids)
        return stream_top_k(unlabeled, self.scorer, scorer_kwargs, cfg.budget, cfg.scoring, cfg.use_gpu)
