"""The strategy interface: train what you need, then score batches (higher = pick)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
import ray.train
import torch

from vaal_dist.config import RoundConfig
from vaal_dist.errors import InputError
from vaal_dist.models.vaal import pixels_to_input
from vaal_dist.pool.dataset import filter_ids, read_pool
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta, read_pool_ids
from vaal_dist.scoring.ids import random_subset
from vaal_dist.scoring.stream import ScoredTopK, stream_top_k
from vaal_dist.train.trainer import fit


@dataclass(frozen=True)
class RoundInputs:
    """What a strategy may use to train: the round's config, the pool's layout and the labeled ids."""

    config: RoundConfig
    meta: PoolMeta
    labeled_ids: pa.Array
    train_dir: str            # checkpoint storage for this round (local path or URI)
    holdout_ids: pa.Array | None = None   # never trained on, never selected; task models evaluate on them

    @property
    def not_unlabeled(self) -> pa.Array:
        """Ids outside the unlabeled pool: the labeled ones and the held-out ones."""
        if self.holdout_ids is None:
            return self.labeled_ids
        return pa.concat_arrays([self.labeled_ids, self.holdout_ids])

    def unlabeled(self) -> ray.data.Dataset:
        return filter_ids(read_pool(self.config.pool), self.not_unlabeled, keep=False)

    def fit(self, train_loop, loop_config: dict, datasets: dict[str, ray.data.Dataset], name: str,
            workers: int | None = None, split: list[str] | None = None) -> ray.train.Result:
        """``train.trainer.fit`` under this round's checkpoint folder, workers, devices and failure budget."""
        cfg = self.config
        return fit(train_loop, loop_config, datasets, storage_path=self.train_dir, name=name,
                   workers=workers or cfg.workers, use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker,
                   seed=cfg.seed, max_failures=cfg.max_failures, split=split)


class Scorer(Protocol):
    """Built once per scoring actor from the kwargs ``Strategy.train`` returned."""

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """One float per row of ``batch`` (columns ``id``, ``image``); higher means label it first."""


def scorer_device(use_gpu: bool) -> torch.device:
    """Where a scorer runs: CUDA when the round asked for GPUs, never a silent fall back to the CPU."""
    if use_gpu and not torch.cuda.is_available():
        raise InputError("use_gpu (--use-gpu) was asked, but torch in this scoring actor sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    return torch.device("cuda" if use_gpu else "cpu")


def model_input(batch: dict[str, np.ndarray], meta: PoolMeta, size: int, device: torch.device) -> torch.Tensor:
    """A batch's images decoded, moved to ``device`` and scaled to [-1, 1]: (B, C, size, size) float."""
    pixels = decode_images(batch["id"], batch["image"], meta, size)         # (B, C, S, S) uint8
    return pixels_to_input(torch.from_numpy(pixels).to(device, non_blocking=True))


class Strategy(Protocol):
    name: ClassVar[str]
    scorer: ClassVar[type[Scorer]]
    needs_labeled: ClassVar[bool]     # trains on labeled images (each training worker needs some)

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        """Train (on Ray Train) what scoring needs; return (scorer kwargs, facts for the run record)."""

    def select(self, inputs: RoundInputs, scorer_kwargs: dict) -> ScoredTopK:
        """The ``budget`` unlabeled ids to label, best first."""


class TopKStrategy:
    """Selection by independent per-image scores: the pool streams through the exact top-b.

    ``subset_factor``: score only a seeded uniform subset of factor x b unlabeled images (the "subset
    method" of Learning Loss and TA-VAAL, against outliers and overlap); None scores the whole pool.
    ``AcquisitionConfig.subset_factor`` overrides it (0: whole pool).
    """

    subset_factor: ClassVar[int | None] = None

    def select(self, inputs: RoundInputs, scorer_kwargs: dict) -> ScoredTopK:
        cfg = inputs.config
        unlabeled = inputs.unlabeled()
        factor = self.subset_factor if cfg.acquisition.subset_factor is None else cfg.acquisition.subset_factor
        if factor:
            candidates = random_subset(unlabeled_ids(inputs), factor * cfg.budget, round_seed(inputs))
            unlabeled = filter_ids(unlabeled, candidates)
        return stream_top_k(unlabeled, self.scorer, scorer_kwargs, cfg.budget, cfg.scoring, cfg.use_gpu)


def unlabeled_ids(inputs: RoundInputs) -> pa.Array:
    ids = read_pool_ids(inputs.config.pool)
    return pc.filter(ids, pc.invert(pc.is_in(ids, value_set=inputs.not_unlabeled))).combine_chunks()


def round_seed(inputs: RoundInputs) -> int:
    """The config's seed mixed with the labeled set: a fresh draw each round, the same on a rerun."""
    digest = hashlib.sha256(str(inputs.config.seed).encode())
    for i in sorted(inputs.labeled_ids.to_pylist()):
        digest.update(b"\x00" + i.encode())
    return int.from_bytes(digest.digest()[:8], "little", signed=True)
