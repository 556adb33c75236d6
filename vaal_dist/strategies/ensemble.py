"""Ensembles with variation ratio (Beluch et al., CVPR 2018): M task models, trained in parallel on Ray.

Each Ray Train worker trains its share of the M members (different seeds, the whole labeled set each);
an image's score is 1 - (members voting for the modal class) / M.
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.acquisition import variation_ratio
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, guess


class EnsembleScorer(GuessingScorer):
    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        x = self.inputs(batch)
        logits = torch.stack([m.net(x).logits for m in self.models])           # (M, B, C)
        votes = variation_ratio(logits.argmax(-1), logits.shape[-1])
        return guess(votes, torch.softmax(logits.double(), -1).mean(0))     # the guess: the members' mean softmax


class Ensemble(TopKStrategy):
    name = "ensemble"
    trains = ("task",)

    def train(self, inputs: RoundInputs) -> Trained:
        members = inputs.config.acquisition.ensemble_members
        if members < 1:
            raise ValueError(f"an ensemble needs at least 1 member, got {members}")
        task = inputs.train_task(members=members)
        return Trained(inputs.scorer_spec(EnsembleScorer, checkpoint=task.checkpoint), (task,))


STRATEGIES = (Ensemble,)
