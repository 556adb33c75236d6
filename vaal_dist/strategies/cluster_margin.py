"""Cluster-Margin (Citovsky et al., NeurIPS 2021): the lowest-margin images, spread over clusters of the pool.

1. The task model trains on the labeled images (Ray Train).
2. One pass of the pool through the scoring actors gives every image's penultimate features and margin
   (the features of a user's torchvision backbone instead, with ``--embedding``).
3. The pool (labeled and unlabeled) is clustered on those features (``clustering.cluster_margin``: FAISS
   k-means cells, then average-linkage HAC over them), cached beside the round's checkpoints and
   fingerprinted, so a rerun of the round reuses it.
4. The 10 x b unlabeled images of smallest margin are taken round-robin over their clusters, smallest
   cluster first, until b are picked. Each pick's score is its margin score, p(2nd) - p(1st): the order is
   the round-robin's, not the scores'.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from vaal_dist.acquisition import margin
from vaal_dist.clustering.cluster_margin import cached_cluster_pool, select
from vaal_dist.models.backbone import BackboneWeights
from vaal_dist.pool.io import PoolMeta, join
from vaal_dist.round_inputs import Checkpoint, RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies.backbone import BackboneScorer
from vaal_dist.strategies.task import TaskScorer


class FeaturesAndMargin(TaskScorer):
    """``embed``: the penultimate features (the task model's, or ``backbone``'s) with the margin score as one
    more, last, column."""

    def __init__(self, checkpoint: Checkpoint, meta: PoolMeta, use_gpu: bool = False,
                 backbone: BackboneWeights | None = None):
        super().__init__(checkpoint, meta, use_gpu)
        self.backbone = None if backbone is None else BackboneScorer(backbone, meta, use_gpu)
        if self.backbone is not None:
            self.embedding_dim = self.backbone.embedding_dim
        self.embedding_dim += 1

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        out = self.model.net(self.inputs(batch))
        features = out.features if self.backbone is None else self.backbone.features(batch)
        probs = torch.softmax(out.logits.double(), -1)
        return torch.cat([features.double(), margin(probs)[:, None]], 1).float().cpu().numpy()


class ClusterMargin:
    name = "cluster_margin"
    trains = ("task",)
    trains_with_backbone = ("task",)

    def train(self, inputs: RoundInputs) -> Trained:
        task = inputs.train_task()
        return Trained(inputs.scorer(FeaturesAndMargin, checkpoint=task.checkpoint, backbone=inputs.backbone),
                       (task,))

    def select(self, inputs: RoundInputs, trained: Trained) -> Selection:
        start = time.perf_counter()
        labeled_ids, labeled = inputs.embeddings(trained.scorer, "labeled")
        ids, unlabeled = inputs.embeddings(trained.scorer, "unlabeled")
        choosing = time.perf_counter()
        clusters = cached_cluster_pool(join(inputs.train_dir, "clusters.parquet"),
                                       np.concatenate([labeled[:, :-1], unlabeled[:, :-1]]),
                                       np.concatenate([labeled_ids, ids]), seed=inputs.config.seed)
        scores = unlabeled[:, -1].astype(np.float64)
        picks = select(scores, clusters.of(ids), ids, inputs.config.budget, seed=inputs.round_seed)
        end = time.perf_counter()
        return Selection(ids[picks], scores[picks], candidates=len(ids), seconds=end - start,
                         merge_seconds=end - choosing)


STRATEGIES = (ClusterMargin,)
