"""Margin sampling (Scheffer et al., 2001): the unlabeled images whose two likeliest classes are closest.

Score = p(2nd) - p(1st) of the task model's softmax, so the smallest margin ranks first. The baseline the
ImageNet-scale study (Emam et al.) found hardest to beat, and the ranking Cluster-Margin builds on.
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.acquisition import margin
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, guess


class MarginScorer(GuessingScorer):
    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        probs = self.probs(batch)
        return guess(margin(probs), probs)


class Margin(TopKStrategy):
    name = "margin"
    trains = ("task",)

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task()
        return Trained(inputs.scorer_spec(MarginScorer, checkpoint=task.checkpoint), (task,))


STRATEGIES = (Margin,)
