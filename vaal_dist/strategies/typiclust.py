"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): the most typical image of each uncovered cluster.

For the first rounds, where the model is too weak to know what it does not know. The embedding is
unsupervised: the means of VAAL's VAE, trained on the whole pool (labeled and unlabeled) as VAAL trains it;
or, with ``--embedding``, a user's torchvision backbone (closer to the paper's self-supervised features),
and then no model is trained. Every labeled and unlabeled image is embedded through the scoring actors;
``clustering.typiclust`` runs k-means into |L| + b clusters (at most ``--max-clusters``) and picks, from the
largest clusters holding no labeled image, each one's most typical unlabeled image (the highest inverse mean
distance to its 20 nearest neighbours in its cluster); with fewer clusters than b it visits them again,
round after round.
Each pick's score is its typicality (0 for an image alone in its cluster).
"""
from __future__ import annotations

import numpy as np

from vaal_dist.clustering.typiclust import typiclust_picks
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.base import GivenVectors, SelectionClock
from vaal_dist.strategies.vaal import VAAL


class TypiClust:
    name = "typiclust"
    trains = ("vaal",)
    given_vectors = GivenVectors.REPLACE_ITS_MODEL

    def train(self, inputs: RoundInputs) -> Trained:
        if inputs.vectors is not None:     # --embeddings, or the --embedding backbone's: nothing to train
            return Trained(None)
        return VAAL().train(inputs)

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        clock = SelectionClock()
        labeled_ids, labeled = inputs.features(trained.scorer, "labeled")
        ids, unlabeled = inputs.features(trained.scorer, "unlabeled")
        labeled = labeled.reshape(len(labeled), unlabeled.shape[1])      # none labeled yet: (0, 0) streamed
        clock.choosing()
        is_labeled = np.concatenate([np.ones(len(labeled), bool), np.zeros(len(unlabeled), bool)])
        budget, cap = inputs.config.budget, inputs.config.acquisition.max_clusters
        chosen = typiclust_picks(np.concatenate([labeled, unlabeled]), np.concatenate([labeled_ids, ids]), is_labeled,
                        budget, n_clusters=cap and min(cap, len(labeled) + budget), seed=inputs.config.seed)
        return clock.selection(ids[chosen.picks - len(labeled)], np.nan_to_num(chosen.typicality, nan=0.0),
                               candidates=len(ids))


STRATEGIES = (TypiClust,)
