"""Core-set (Sener & Savarese, ICLR 2018): k-center greedy over embeddings of the whole pool.

A global-view strategy: every unlabeled and labeled image is embedded through the same Ray Data actor
path as scoring, then the exact greedy runs on the driver (``coreset.kcenter``). ``coreset`` embeds
with the task model's penultimate features (the paper's choice), or with a user's torchvision backbone
(``--embedding``) and then trains nothing; ``coreset_vae`` with the encoder means of a VAAL-trained VAE.
"""
from __future__ import annotations

from vaal_dist.coreset.kcenter import k_center_greedy_with_distances
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.base import GivenVectors, SelectionClock
from vaal_dist.strategies.task import TaskScorer
from vaal_dist.strategies.vaal import VAAL


class Coreset:
    name = "coreset"
    trains = ("task",)
    given_vectors = GivenVectors.REPLACE_ITS_MODEL

    def train(self, inputs: RoundInputs) -> Trained:
        if inputs.vectors is not None:     # --embeddings, or the --embedding backbone's: nothing to train
            return Trained(None)
        task = inputs.train_task()
        return Trained(inputs.scorer_spec(TaskScorer, checkpoint=task.checkpoint), (task,))

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        """Picks best first; each pick's score is its distance to the nearest center when picked."""
        clock = SelectionClock()
        _, labeled = inputs.features(trained.scorer, "labeled")
        ids, unlabeled = inputs.features(trained.scorer, "unlabeled")
        clock.choosing()
        picks, radii = k_center_greedy_with_distances(unlabeled, labeled, inputs.config.budget, ids)
        return clock.selection(ids[picks], radii, candidates=len(ids))


class CoresetVAE(Coreset):
    name = "coreset_vae"
    trains = ("vaal",)
    given_vectors = GivenVectors.REFUSED      # its embedding is the VAE's: with a backbone it is coreset

    def train(self, inputs: RoundInputs) -> Trained:
        return VAAL().train(inputs)


STRATEGIES = (Coreset, CoresetVAE)
