"""BADGE (Ash et al., ICLR 2020): k-means++ seeding over the unlabeled images' gradient embeddings.

1. The task model trains on the labeled images (Ray Train).
2. One pass of the unlabeled pool through the scoring actors gives each image's softmax p and penultimate
   features h.
3. ``coreset.badge`` seeds k-means++ on g = (p - onehot(argmax p)) (x) h, exactly, without the N x (C D)
   matrix: the first pick is the largest gradient, each later one is drawn with probability proportional
   to its squared distance D^2 to the nearest pick so far, from a generator seeded by the round.
Each pick's score is its D^2 when it was drawn (the first's: its squared norm, its distance to no center).
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.coreset.badge import badge_seeding_with_d2, gradient_factors
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.base import SelectionClock
from vaal_dist.strategies.task import TaskScorer


class ProbsAndFeatures(TaskScorer):
    """``embed``: the softmax (C columns) followed by the penultimate features (D columns)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embedding_dim += self.model.net.fc.out_features

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        out = self.model.net(self.inputs(batch))
        return torch.cat([torch.softmax(out.logits.float(), -1), out.features.float()], 1).cpu().numpy()


class BADGE:
    name = "badge"
    trains = ("task",)

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task()
        return Trained(inputs.scorer_spec(ProbsAndFeatures, checkpoint=task.checkpoint), (task,))

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        clock = SelectionClock()
        ids, rows = inputs.embeddings(trained.scorer, "unlabeled")
        clock.choosing()
        classes = trained.models[0].num_classes
        a, h = gradient_factors(rows[:, :classes]), rows[:, classes:]
        picks, d2, _ = badge_seeding_with_d2(a, h, inputs.config.budget, inputs.round_seed % 2**64, ids)
        first = picks[0]
        d2[0] = float(np.sum(a[first].astype(np.float64) ** 2) * np.sum(h[first].astype(np.float64) ** 2))
        probs = rows[picks, :classes].astype(np.float64)
        return clock.selection(ids[picks], d2, candidates=len(ids), predicted=probs.argmax(1), confidence=probs.max(1))


STRATEGIES = (BADGE,)
