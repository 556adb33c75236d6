"""MC-Dropout (Gal et al., ICML 2017): T stochastic passes with dropout left on at test time.

- ``mc_dropout``: variation ratio, 1 - (votes for the modal class) / T;
- ``dbal``: max entropy, the entropy of the mean softmax over the T passes.

The task model is trained with dropout ``mc_dropout`` before its classifier, and only that layer is
stochastic, so each pass reuses one backbone forward. Each image's T dropout masks are drawn from a
generator seeded by (seed, id): its score does not depend on the batch, block or actor it lands in.
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.acquisition import predictive_entropy, variation_ratio
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.scoring.ids import id_hash
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, guess


class MCDropoutScorer(GuessingScorer):
    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, passes: int, seed: int,
                 acquisition: str, use_gpu: bool = False):
        super().__init__(checkpoint, meta, use_gpu)
        self.passes, self.seed, self.acquisition = passes, seed, acquisition
        self.p = self.model.net.dropout.p
        if not 0 < self.p < 1:
            raise ValueError(f"MC-Dropout needs a model trained with dropout in (0, 1), got {self.p}")

    def masks(self, ids: np.ndarray, dim: int) -> torch.Tensor:
        """(T, B, dim) inverted-dropout masks, each image's from its own seeded generator."""
        keep = np.stack([np.random.default_rng([self.seed, int(h)]).random((self.passes, dim)) >= self.p
                         for h in id_hash(ids, self.seed)], axis=1)
        return torch.from_numpy(keep).to(self.device, torch.float32) / (1 - self.p)

    def probs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """(T, B, C) softmax of each stochastic pass."""
        features = self.model.net(self.inputs(batch)).features                # (B, D), deterministic
        logits = self.model.net.fc(features[None] * self.masks(batch["id"], features.shape[1]))
        return torch.softmax(logits.double(), -1)

    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        probs = self.probs(batch)
        if self.acquisition == "variation_ratio":
            scores = variation_ratio(probs.argmax(-1), probs.shape[-1])
        else:
            scores = predictive_entropy(probs)
        return guess(scores, probs.mean(0))     # the guess: the class of the mean softmax over the T passes


class MCDropout(TopKStrategy):
    name = "mc_dropout"
    trains = ("task",)
    acquisition = "variation_ratio"

    def train(self, inputs: RoundInputs) -> Trained:
        cfg = inputs.config
        task = inputs.train_task(dropout=cfg.task.mc_dropout)
        scorer = inputs.scorer_spec(MCDropoutScorer, checkpoint=task.checkpoint, passes=cfg.acquisition.mc_passes,
                               seed=cfg.seed, acquisition=self.acquisition)
        return Trained(scorer, (task,))


class DBAL(MCDropout):
    name = "dbal"
    acquisition = "max_entropy"


STRATEGIES = (MCDropout, DBAL)
