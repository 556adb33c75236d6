"""Core-set (Sener & Savarese, ICLR 2018): k-center greedy over embeddings of the whole pool.

A global-view strategy: every unlabeled and labeled image is embedded through the same Ray Data actor
path as scoring, then the exact greedy runs on the driver (``coreset.kcenter``). ``coreset`` embeds
with the task model's penultimate features (the paper's choice), or with a user's torchvision backbone
(``--embedding``) and then trains nothing; ``coreset_vae`` with the encoder means of a VAAL-trained VAE.
"""
from __future__ import annotations

import time

from vaal_dist.coreset.kcenter import k_center_greedy_with_distances
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.task import TaskScorer
from vaal_dist.strategies.vaal import VAAL


class Coreset:
    name = "coreset"
    trains = ("task",)
    trains_with_backbone = ()

    def train(self, inputs: RoundInputs) -> Trained:
        if inputs.vectors is not None:     # --embeddings, or the --embedding backbone's: nothing to train
            return Trained(None)
        task = inputs.train_task()
        return Trained(inputs.scorer(TaskScorer, checkpoint=task.checkpoint), (task,))

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        """Picks best first; each pick's score is its distance to the nearest center when picked."""
        start = time.perf_counter()
        _, labeled = inputs.features(trained.scorer, "labeled")
        ids, unlabeled = inputs.features(trained.scorer, "unlabeled")
        greedy_start = time.perf_counter()
        picks, radii = k_center_greedy_with_distances(unlabeled, labeled, inputs.config.budget, ids)
        end = time.perf_counter()
        return Selection(ids[picks], radii, candidates=len(ids), seconds=end - start, merge_seconds=end - greedy_start)


class CoresetVAE(Coreset):
    name = "coreset_vae"
    trains = ("vaal",)
    trains_with_backbone = None         # its embedding is the VAE's: with a backbone it is coreset

    def train(self, inputs: RoundInputs) -> Trained:
        return VAAL().train(inputs)


STRATEGIES = (Coreset, CoresetVAE)
