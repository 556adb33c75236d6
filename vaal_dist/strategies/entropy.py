"""Entropy sampling: the unlabeled images whose softmax prediction is most uncertain."""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.acquisition import entropy
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, guess


class EntropyScorer(GuessingScorer):
    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        probs = self.probs(batch)
        return guess(entropy(probs), probs)


class Entropy(TopKStrategy):
    name = "entropy"
    trains = ("task",)

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task()
        return Trained(inputs.scorer_spec(EntropyScorer, checkpoint=task.checkpoint), (task,))


STRATEGIES = (Entropy,)
