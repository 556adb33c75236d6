"""The strategy interface: train what you need, then select; and what every model-loading scorer shares."""
from __future__ import annotations

import time
from enum import Enum
from typing import ClassVar, Protocol

import numpy as np
import torch

from vaal_dist.models.vaal import pixels_to_input
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection


class GivenVectors(Enum):
    """What a strategy does with vectors from elsewhere (``--embedding``'s backbone, an ``--embeddings`` file)."""

    REFUSED = "refused"                      # it embeds with its own model or not at all
    REPLACE_ITS_MODEL = "replace its model"  # its model only embedded the pool: it trains nothing
    BESIDE_ITS_MODEL = "beside its model"    # its model still gives the scores (Cluster-Margin's margins)


class Strategy(Protocol):
    name: ClassVar[str]
    trains: ClassVar[tuple[str, ...]]   # the models it trains ("task", "vaal", "aalu"); none: no labeled image needed
    # A strategy that embeds the pool may take vectors from elsewhere instead: its ``given_vectors``
    # (default REFUSED); see ``strategies.models_trained``.

    def train(self, inputs: RoundInputs) -> Trained:
        """Train (through ``inputs``, on Ray Train) what selecting needs."""

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        """The ``budget`` unlabeled ids to label, best first."""


class TopKStrategy:
    """Selection by independent per-image scores: the pool streams through the exact top-b.

    ``subset_factor``: score only a seeded uniform subset of factor x b unlabeled images (the "subset
    method" of Learning Loss and TA-VAAL, against outliers and overlap); None scores the whole pool.
    """

    subset_factor: ClassVar[int | None] = None

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        return inputs.top_k(trained.scorer, self.subset_factor)


class SelectionClock:
    """Times a selection that gathers vectors and then chooses from them on the driver (Core-set, TypiClust, BADGE,
    Cluster-Margin): its ``seconds`` from the clock's start, its ``merge_seconds`` from ``choosing``."""

    def __init__(self):
        self.start = self.choosing_from = time.perf_counter()

    def choosing(self) -> None:
        """The vectors are gathered: choosing starts now."""
        self.choosing_from = time.perf_counter()

    def selection(self, ids: np.ndarray, scores: np.ndarray, candidates: int, **guess: np.ndarray) -> Selection:
        """The picks, best first, timed up to now; ``guess``: the task model's ``predicted`` and ``confidence``."""
        end = time.perf_counter()
        return Selection(ids, scores, candidates=candidates, seconds=end - self.start,
                         merge_seconds=end - self.choosing_from, **guess)


def model_input(batch: dict[str, np.ndarray], meta: PoolMeta, size: int, device: torch.device) -> torch.Tensor:
    """A batch's images decoded, moved to ``device`` and scaled to [-1, 1]: (B, C, size, size) float."""
    pixels = decode_images(batch["id"], batch["image"], meta, size)         # (B, C, S, S) uint8
    return pixels_to_input(torch.from_numpy(pixels).to(device, non_blocking=True))
