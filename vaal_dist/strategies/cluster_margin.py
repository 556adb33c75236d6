"""Cluster-Margin (Citovsky et al., NeurIPS 2021): the lowest-margin images, spread over clusters of the pool.

1. The task model trains on the labeled images (Ray Train).
2. One pass of the pool through the scoring actors gives every image's penultimate features and margin
   (the margin alone where the features come from a file: ``--embeddings``, or the ``--embedding``
   backbone's, computed once).
3. The pool (labeled and unlabeled) is clustered on those features (``clustering.cluster_margin``: FAISS
   k-means cells, then average-linkage HAC over them), cached beside the round's checkpoints and
   fingerprinted, so a rerun of the round reuses it; on features from a file, once per pool and embedding
   (as the paper does), in the embeddings cache, and every later round reuses it.
4. The 10 x b unlabeled images of smallest margin are taken round-robin over their clusters, smallest
   cluster first, until b are picked. Each pick's score is its margin score, p(2nd) - p(1st): the order is
   the round-robin's, not the scores'.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from vaal_dist.acquisition import margin
from vaal_dist.clustering.cluster_margin import round_robin_picks
from vaal_dist.pool.clusters import cached_cluster_pool
from vaal_dist.pool.io import PoolMeta
from vaal_dist.pool.storage import join
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.base import GivenVectors, SelectionClock
from vaal_dist.strategies.task import TaskScorer

FILE_CLUSTERS_SEED = 0     # clusters of vectors from a file are the pool's and the embedding's, not a round's


GUESS_AND_SCORE = 3     # embed's last columns: the predicted class, its probability, the margin score


class FeaturesAndMargin(TaskScorer):
    """``embed``: the task model's penultimate features, then its guess (class, probability) and the margin
    score as the GUESS_AND_SCORE last columns; with ``features=False`` (the features come from a file) those
    alone."""

    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, use_gpu: bool = False, features: bool = True):
        super().__init__(checkpoint, meta, use_gpu)
        self.with_features = features
        self.embedding_dim = self.embedding_dim + GUESS_AND_SCORE if features else GUESS_AND_SCORE

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        out = self.model.net(self.inputs(batch))
        probs = torch.softmax(out.logits.double(), -1)
        confidence, predicted = probs.max(-1)
        guess_and_score = torch.stack([predicted.double(), confidence, margin(probs)], 1)
        columns = [out.features.double(), guess_and_score] if self.with_features else [guess_and_score]
        return torch.cat(columns, 1).float().cpu().numpy()


class ClusterMargin:
    name = "cluster_margin"
    trains = ("task",)
    given_vectors = GivenVectors.BESIDE_ITS_MODEL

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task()
        scorer = inputs.scorer_spec(FeaturesAndMargin, checkpoint=task.checkpoint, features=inputs.vectors is None)
        return Trained(scorer, (task,))

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        clock = SelectionClock()
        ids, unlabeled = inputs.embeddings(trained.scorer, "unlabeled")
        predicted, confidence, scores = unlabeled[:, -GUESS_AND_SCORE:].astype(np.float64).T
        cache, pool_ids, features, seed = _pool_features(inputs, trained, ids, unlabeled[:, :-GUESS_AND_SCORE])
        clock.choosing()
        clusters = cached_cluster_pool(cache, features, pool_ids, seed=seed)
        picks = round_robin_picks(scores, clusters.of(ids), ids, inputs.config.budget, seed=inputs.round_seed)
        return clock.selection(ids[picks], scores[picks], candidates=len(ids),
                               predicted=predicted[picks].astype(np.int64), confidence=confidence[picks])


def _pool_features(inputs: RoundInputs, trained: Trained, unlabeled_ids: np.ndarray, unlabeled: np.ndarray
                   ) -> tuple[str, np.ndarray, np.ndarray, int]:
    """(where the clusters are cached, the pool's ids, their features, the clustering's seed). The task model's
    features (this round's), cached beside the round's checkpoints; or vectors from a file, cached in the
    embeddings cache, in id order and seeded with FILE_CLUSTERS_SEED, so that every later round reads the
    clusters computed once for the pool and embedding."""
    vectors = inputs.vectors
    if vectors is None:
        labeled_ids, labeled = inputs.embeddings(trained.scorer, "labeled")
        return (join(inputs.train_dir, "clusters.parquet"), np.concatenate([labeled_ids, unlabeled_ids]),
                np.concatenate([labeled[:, :-GUESS_AND_SCORE], unlabeled]), inputs.config.seed)
    order = np.argsort(vectors.ids)
    ids = vectors.ids[order]
    which = hashlib.sha256(vectors.key.encode() + b"\x00".join(np.char.encode(ids))).hexdigest()
    return join(inputs.embeddings_cache, f"clusters-{which}.parquet"), ids, vectors.x[order], FILE_CLUSTERS_SEED


STRATEGIES = (ClusterMargin,)
