"""Cluster-Margin (Citovsky et al., NeurIPS 2021, "Batch Active Learning at Scale") on a whole pool.

Clustering, once per pool and embedding (``cluster_pool``): the paper runs average-linkage HAC over the
pool's embeddings, which is quadratic in N. Here FAISS k-means first cuts the pool into K cells (K = 2 sqrt(N)
by default), then exact average-linkage HAC runs over the cells, weighted by their sizes
(``hac.average_linkage``), and a point's cluster is its cell's. The dissimilarity of cells A and B is the
root mean square distance between their points,

    D(A, B) = sqrt(|mu_A - mu_B|^2 + s_A + s_B),   s = mean squared distance of a cell's points to its mean,

exact for squared distances (E|a - b|^2 over A x B) and, in high dimension where distances concentrate,
close to the mean distance that average linkage uses; size-weighted UPGMA then makes every merged
distance the mean over all point pairs of this cell-level D. The clusters cannot be finer than the
cells: n_clusters is at most K.

Selection, each round (``round_robin_picks``): the k_m unlabeled points of highest uncertainty (lowest margin),
grouped by cluster; clusters visited smallest first (their number of candidates; ties by cluster
number), one point per cluster per visit, round-robin until the budget is met. Within a cluster the paper
takes a random point; here the order is a seeded hash of (seed, id), so the picks depend neither on the
order of the inputs nor on where the ids were scored.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vaal_dist.clustering.hac import average_linkage, cut
from vaal_dist.clustering.kmeans import NITER, TRAIN_POINTS, check_embeddings, kmeans_cells
from vaal_dist.errors import InputError
from vaal_dist.scoring.ids import id_hash
from vaal_dist.scoring.topk import top_rows

@dataclass(frozen=True)
class PoolClusters:
    """Each pool id's cluster, and the fingerprint of the embeddings and settings it came from."""

    ids: np.ndarray          # (N,) str
    cluster: np.ndarray      # (N,) int64, clusters numbered 0..n-1
    fingerprint: str

    def of(self, ids) -> np.ndarray:
        """(M,) int64 clusters of ``ids``; every one must be in the pool."""
        where = pc.index_in(pa.array(np.asarray(ids, dtype=str)), value_set=pa.array(self.ids))
        if where.null_count:
            raise InputError(f"{where.null_count} ids are not in the clustered pool")
        return self.cluster[where.to_numpy()]


def default_centroids(n: int) -> int:
    """K = ceil(2 sqrt(N)) (about sqrt(N) / 2 points a cell), at most N and 4096 (from N = 4.2M on): the
    assignment pass (N K d multiply-adds) and the K x K HAC matrix (128 MiB at 4096) stay affordable on
    a CPU."""
    return min(n, 4096, math.ceil(2 * math.sqrt(n)))


def fingerprint(ids, embeddings: np.ndarray, **settings) -> str:
    """BLAKE2b of the ids (in order), the float32 embeddings' bytes and the clustering settings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(list(map(str, ids))).encode())
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    h.update(repr(x.shape).encode())
    h.update(x.data)
    return h.hexdigest()


@dataclass(frozen=True)
class ClusteringInputs:
    """A clustering to compute: checked embeddings, every setting resolved, and their fingerprint (what a saved
    clustering must match to be reused)."""

    x: np.ndarray            # (N, d) float32
    ids: object              # (N,) the pool's ids, in x's order
    settings: dict
    fingerprint: str


def clustering_inputs(embeddings: np.ndarray, ids, n_clusters: int | None = None,
                      distance_threshold: float | None = None, n_centroids: int | None = None, seed: int = 0,
                      niter: int = NITER, train_points: int = TRAIN_POINTS) -> ClusteringInputs:
    """``cluster_pool``'s inputs checked, its settings resolved and fingerprinted."""
    x = check_embeddings(embeddings, ids)
    settings = _settings(len(x), n_clusters, distance_threshold, n_centroids, seed, niter, train_points)
    return ClusteringInputs(x, ids, settings, fingerprint(ids, x, **settings))


def cluster_pool(embeddings: np.ndarray, ids, **settings) -> PoolClusters:
    """Cluster-Margin's clustering of the pool's ``embeddings`` (N, d): k-means into ``n_centroids`` cells
    (``default_centroids``; ``niter`` Lloyd iterations on a seeded sample of ``train_points``), then HAC
    over them cut at ``n_clusters`` (default: K // 4, about 2 sqrt(N) points a cluster) or at
    ``distance_threshold`` (the paper's epsilon, in the units of the embeddings)."""
    return cluster(clustering_inputs(embeddings, ids, **settings))


def _settings(n: int, n_clusters: int | None = None, distance_threshold: float | None = None,
              n_centroids: int | None = None, seed: int = 0, niter: int = NITER,
              train_points: int = TRAIN_POINTS) -> dict:
    """Every setting the clusters depend on, defaults resolved: what the fingerprint hashes."""
    k = n_centroids or default_centroids(n)
    if distance_threshold is None:
        n_clusters = n_clusters or max(1, k // 4)
    return dict(n_clusters=n_clusters, distance_threshold=distance_threshold, n_centroids=k, seed=seed,
                niter=niter, train_points=train_points)


def cluster(inputs: ClusteringInputs) -> PoolClusters:
    """The clustering of ``inputs`` (``clustering_inputs``)."""
    x, ids, settings = inputs.x, inputs.ids, inputs.settings
    k, n_clusters = settings["n_centroids"], settings["n_clusters"]
    cells = kmeans_cells(x, k, settings["seed"], settings["niter"], settings["train_points"])
    used = np.flatnonzero(cells.sizes)                       # cells that got no point take no part
    if n_clusters is not None and n_clusters > len(used):
        raise InputError(f"n_clusters={n_clusters} is more than the {len(used)} non-empty k-means cells; "
                         f"raise n_centroids")
    merges = average_linkage(cell_dissimilarities(cells.means[used], cells.spreads[used]), cells.sizes[used])
    of_cell = np.full(k, -1)
    of_cell[used] = cut(merges, len(used), n_clusters, settings["distance_threshold"])
    return PoolClusters(np.asarray(ids, dtype=str), of_cell[cells.assign], inputs.fingerprint)


def cell_dissimilarities(means: np.ndarray, spreads: np.ndarray) -> np.ndarray:
    """(K, K) root mean square distance between the points of two cells (see the module's docstring)."""
    sq_norms = (means * means).sum(1)
    between = sq_norms[:, None] + sq_norms[None, :] - 2 * means @ means.T
    return np.sqrt(np.maximum(between, 0) + spreads[:, None] + spreads[None, :])


def round_robin_picks(scores: np.ndarray, clusters: np.ndarray, ids, budget: int, candidates: int | None = None,
                      seed: int = 0) -> np.ndarray:
    """Cluster-Margin's picks: indices into the unlabeled points, in pick order.

    ``scores`` (N,): higher = more uncertain, e.g. ``acquisition.margin``'s p(2nd) - p(1st) (minus the
    paper's margin); ``clusters`` (N,): each point's cluster (``PoolClusters.of``); ``candidates``: the
    paper's k_m, default 10 x budget, ties at its edge to the smallest id. Memory and time O(N) plus
    O(k_m log k_m)."""
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(ids, dtype=str)
    clusters = np.asarray(clusters, dtype=np.int64)
    if not len(scores) == len(clusters) == len(ids):
        raise InputError(f"{len(scores)} scores, {len(clusters)} clusters and {len(ids)} ids must match")
    if np.isnan(scores).any():
        raise InputError("scores contain NaN")
    if not 0 <= budget <= len(scores):
        raise InputError(f"budget {budget} must be between 0 and the {len(scores)} unlabeled points")
    k_m = min(len(scores), candidates if candidates is not None else 10 * budget)
    if k_m < budget:
        raise InputError(f"candidates={candidates} must be at least the budget {budget}")
    pool = top_rows(ids, scores, k_m)
    _, cluster_of, counts = np.unique(clusters[pool], return_inverse=True, return_counts=True)
    rank_of_cluster = np.empty(len(counts), dtype=np.int64)
    rank_of_cluster[np.argsort(counts, kind="stable")] = np.arange(len(counts))   # smallest first
    visit_order = rank_of_cluster[cluster_of]
    # within a cluster: a seeded random order (the paper's random pick), ties by id
    within = np.lexsort((ids[pool], id_hash(ids[pool], seed), visit_order))
    starts = np.searchsorted(visit_order[within], visit_order[within], side="left")
    turn = np.empty(len(pool), dtype=np.int64)
    turn[within] = np.arange(len(pool)) - starts             # 0 for a cluster's first pick, 1 for its second...
    order = np.lexsort((visit_order, turn))                  # round-robin: by turn, then by cluster
    return pool[order[:budget]]
