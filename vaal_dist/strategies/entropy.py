"""Entropy sampling: the unlabeled images whose softmax prediction is most uncertain."""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.strategies.base import RoundInputs, TopKStrategy
from vaal_dist.strategies.task import TaskScorer, entropy, train_task_model


class EntropyScorer(TaskScorer):
    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        logits = self.model.net(self.inputs(batch)).logits.double()
        return entropy(torch.softmax(logits, -1)).cpu().numpy()


class Entropy(TopKStrategy):
    name = "entropy"
    scorer = EntropyScorer
    needs_labeled = True

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        return train_task_model(inputs)
