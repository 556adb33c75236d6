"""Learning Loss (Yoo & Kweon, CVPR 2019): pick the images whose predicted task loss is highest.

The loss-prediction module rides on the task model's four stages and is trained jointly with it:
- ``learning_loss``: the paper's margin ranking loss (margin 1, weight 1);
- ``learning_loss_v2``: TA-VAAL's ablation, the same module trained with its ranking BCE, Eq. (1).
Both score a seeded random subset of 10 x b unlabeled images, as the authors' code does (10,000 for 1,000).
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, guess


class PredictedLossScorer(GuessingScorer):
    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        out, predicted_loss = self.model(self.inputs(batch))
        return guess(predicted_loss, torch.softmax(out.logits.double(), -1))


class LearningLoss(TopKStrategy):
    name = "learning_loss"
    trains = ("task",)
    subset_factor = 10
    rank_loss = "margin"

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task(rank_loss=self.rank_loss)
        return Trained(inputs.scorer_spec(PredictedLossScorer, checkpoint=task.checkpoint), (task,))


class LearningLossV2(LearningLoss):
    name = "learning_loss_v2"
    rank_loss = "bce"


STRATEGIES = (LearningLoss, LearningLossV2)
