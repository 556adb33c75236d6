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
import torch

from vaal_dist.acquisition import least_discriminated
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import TaskScorer, guess
from vaal_dist.strategies.vaal import VAALScorer


class RankScorer(TaskScorer):
    """The ranker's output r: as a score (the rank itself) and as training columns (pixels + rank)."""

    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, use_gpu: bool = False,
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

    def __init__(self, checkpoint: CheckpointFiles, vaal_checkpoint: CheckpointFiles, meta: PoolMeta,
                 use_gpu: bool = False):
        self.ranker = RankScorer(checkpoint, meta, use_gpu)
        self.vaal = VAALScorer(vaal_checkpoint, meta, use_gpu)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.scored(batch)["score"]

    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        out, r = self.ranker.model(self.ranker.inputs(batch))
        scores = least_discriminated(self.vaal.disc(self.vaal.mu(batch), r.float()))
        return guess(scores, torch.softmax(out.logits.double(), -1))


class TAVAAL(TopKStrategy):
    name = "ta_vaal"
    trains = ("task", "vaal")
    subset_factor = 10
    rank_loss = "bce"

    def train(self, inputs: RoundInputs) -> Trained:
        cfg = inputs.config
        task = inputs.train_task(rank_loss=self.rank_loss)
        ranks = inputs.scorer_spec(RankScorer, checkpoint=task.checkpoint, pixel_size=cfg.vaal.image_size)
        vaal = inputs.train_vaal(columns={side: inputs.columns(ranks, side) for side in ("labeled", "unlabeled")})
        scorer = inputs.scorer_spec(TAVAALScorer, checkpoint=task.checkpoint, vaal_checkpoint=vaal.checkpoint)
        return Trained(scorer, (task, vaal))


class TAVAALLearningLoss(TAVAAL):
    name = "ta_vaal_lloss"
    rank_loss = "margin"


STRATEGIES = (TAVAAL, TAVAALLearningLoss)
