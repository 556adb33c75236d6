"""Core-set (Sener & Savarese, ICLR 2018): k-center greedy over embeddings of the whole pool.

A global-view strategy: every unlabeled and labeled image is embedded through the same Ray Data actor
path as scoring, then the exact greedy runs on the driver (``coreset.kcenter``). ``coreset`` embeds
with the task model's penultimate features (the paper's choice); ``coreset_vae`` with the encoder means
of a VAAL-trained VAE.
"""
from __future__ import annotations

import time


from vaal_dist.coreset.kcenter import k_center_greedy_with_distances
from vaal_dist.pool.dataset import filter_ids, read_pool
from vaal_dist.scoring.stream import ScoredTopK, stream_embeddings
from vaal_dist.strategies.base import RoundInputs
from vaal_dist.strategies.task import TaskScorer, train_task_model
from vaal_dist.strategies.vaal import VAAL, VAALScorer


class Coreset:
    name = "coreset"
    scorer = TaskScorer
    needs_labeled = True

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        return train_task_model(inputs)

    def select(self, inputs: RoundInputs, scorer_kwargs: dict) -> ScoredTopK:
        """Picks best first; each pick's score is its distance to the nearest center when picked."""
        cfg = inputs.config
        start = time.perf_counter()
        labeled, unlabeled = filter_ids(read_pool(cfg.pool), inputs.labeled_ids), inputs.unlabeled()
        _, labeled_emb = stream_embeddings(labeled, self.scorer, scorer_kwargs, cfg.scoring, cfg.use_gpu)
        ids, unlabeled_emb = stream_embeddings(unlabeled, self.scorer, scorer_kwargs, cfg.scoring, cfg.use_gpu)
        greedy_start = time.perf_counter()
        picks, radii = k_center_greedy_with_distances(unlabeled_emb, labeled_emb, cfg.budget, ids)
        end = time.perf_counter()
        return ScoredTopK(ids[picks], radii, candidates=len(ids), seconds=end - start,
                          merge_seconds=end - greedy_start)


class CoresetVAE(Coreset):
    name = "coreset_vae"
    scorer = VAALScorer

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        return VAAL().train(inputs)
