"""TA-VAAL (Kim et al., CVPR 2021): VAAL whose VAE and discriminator are conditioned on a loss ranker.

1. The task model and its ranker (the loss-prediction module) train jointly on Ray Train with the ranking
   BCE of Eq. (1), weight eta (``task.loss_weight``); the ranker's inputs are detached late in training.
2. The ranker's output r is computed once for every labeled and unlabeled image (Ray Data actors).
3. VAAL's VAE and D train on Ray Train with the decoder fed [z, sigmoid(r)] and D fed [mu, r] (Eqs. 3-6).
4. Selection, Eq. (7): the lowest D(mu, r), over a seeded random subset of 10 x b unlabeled images.

``ta_vaal_lloss`` is the paper's "VAAL + learning loss" ablation (Sec. 5.1): the same pipeline with the
ranker trained by Learning Loss' margin loss instead of Eq. (1).
"""
from __future__ import annotations

import numpy as np
import ray.train
import torch

from vaal_dist.pool.dataset import read_pool, filter_ids
from vaal_dist.pool.images import check_image_size, decode_images
from vaal_dist.pool.io import PoolMeta
from vaal_dist.scoring.stream import stream_columns
from vaal_dist.strategies.base import RoundInputs, TopKStrategy
from vaal_dist.strategies.task import TaskScorer, train_task_model
from vaal_dist.strategies.vaal import VAALScorer, train_vaal


class RankScorer(TaskScorer):
    """The ranker's output r: as a score (the rank itself) and as training columns (pixels + rank)."""

    def __init__(self, checkpoint: ray.train.Checkpoint, meta: PoolMeta, use_gpu: bool = False,
                 pixel_size: int | None = None):
        super().__init__(checkpoint, meta, use_gpu)
        self.pixel_size = pixel_size or self.size

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        _, r = self.model(self.inputs(batch))
        return r.double().cpu().numpy()

    def columns(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{'pixels' at the VAE's size, 'rank'}: a TA-VAAL training batch."""
        pixels = decode_images(batch["id"], batch["image"], self.meta, self.pixel_size)
        return {"pixels": pixels, "rank": self(batch).astype(np.float32)}


class TAVAALScorer:
    """score = -logit D(mu, r): the lowest D first."""

    def __init__(self, checkpoint: ray.train.Checkpoint, vaal_checkpoint: ray.train.Checkpoint, meta: PoolMeta,
                 use_gpu: bool = False):
        self.ranker = RankScorer(checkpoint, meta, use_gpu)
        self.vaal = VAALScorer(vaal_checkpoint, meta, use_gpu)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        r = torch.from_numpy(self.ranker(batch)).to(self.vaal.device, torch.float32)
        return (-self.vaal.disc(self.vaal._mu(batch), r)).double().cpu().numpy()


class TAVAAL(TopKStrategy):
    name = "ta_vaal"
    scorer = TAVAALScorer
    needs_labeled = True
    subset_factor = 10
    rank_loss = "bce"

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        cfg = inputs.config
        check_image_size(inputs.meta, cfg.vaal.image_size)
        task_kwargs, facts = train_task_model(inputs, rank_loss=self.rank_loss)
        pool = read_pool(cfg.pool)
        rank_kwargs = {**task_kwargs, "pixel_size": cfg.vaal.image_size}
        datasets = {name: stream_columns(filter_ids(pool, ids, keep), RankScorer, rank_kwargs, cfg.scoring,
                                         cfg.use_gpu)
                    for name, ids, keep in (("labeled", inputs.labeled_ids, True),
                                            ("unlabeled", inputs.not_unlabeled, False))}
        result = train_vaal(inputs, conditioned=True, datasets=datasets)
        return ({**task_kwargs, "vaal_checkpoint": result.checkpoint},
                {**facts, "checkpoint": result.checkpoint.path, "last_epoch": result.metrics})


class TAVAALLearningLoss(TAVAAL):
    name = "ta_vaal_lloss"
    rank_loss = "margin"
