"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a Budget") on a whole pool.

1. FAISS k-means of every labeled and unlabeled embedding into |L| + b clusters (the paper's number; the
   authors' code caps it at 500 for its sklearn k-means, we do not: ``n_clusters`` caps it, and the
   strategy's ``--max-clusters``).
2. Clusters of at most ``min_cluster_size`` = 5 points (labeled ones included) are never chosen (the
   authors' code); the others are visited by fewest labeled points, then largest first, then cluster
   number, so the first are the largest clusters holding no labeled point (the paper's "largest uncovered
   clusters": with |L| + b clusters at least b hold none). Past the last, the visits start again; a
   revisited cluster keeps its k-NN lists, each with a spare neighbour for every later visit (at most
   MAX_SPARE), so a pick only shortens the lists that held it; a list left shorter than K is measured
   again.
3. From each visited cluster, its most typical unlabeled point not yet picked (ties: smallest id):

       typicality(x) = 1 / ((1/K) sum_{y in K-NN(x)} |x - y|_2),   K = min(20, floor(n / 2)),

   the K nearest among the n unlabeled, unpicked points of x's own cluster (the authors' code: density
   within the cluster, K halved for small ones). The paper writes the Euclidean distance, which we use;
   the authors' code averages FAISS's squared distances, which can rank points differently.

The k-NN distances are float64 GEMMs over each cluster's points centred at their mean: within
(d + 6) 2^-53 (|a| + |b|)^2 of exact (1e-13 of the cluster's spread at d = 512), so the typicalities are
exact to float64 precision, whichever of near-equal neighbours are named. (Not FAISS: it searches in
float32, and measuring its candidates again in float64, 29 per point, cost more than the GEMM when it was
tried at 1M x 512, b = 10,000, where clusters hold about N / (|L| + b) points; the picks' time at that size
is in docs/benchmarks.md, "TypiClust at 1M points".)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaal_dist.clustering.kmeans import NITER, TRAIN_POINTS, check_embeddings, nearest_centroids, train_centroids
from vaal_dist.errors import InputError

NEIGHBOURS = 20
MIN_CLUSTER_SIZE = 5
MAX_SPARE = 32          # neighbours kept a row beyond K, for the clusters' later visits


@dataclass(frozen=True)
class TypiClustPicks:
    picks: np.ndarray        # (b,) int64 indices into the pool, in pick order
    typicality: np.ndarray   # (b,) float64: each pick's typicality when picked (NaN: alone in its cluster)
    cluster: np.ndarray      # (b,) int64: each pick's k-means cluster


def typiclust_picks(embeddings: np.ndarray, ids, labeled: np.ndarray, budget: int, n_clusters: int | None = None,
                    neighbours: int = NEIGHBOURS, min_cluster_size: int = MIN_CLUSTER_SIZE, seed: int = 0,
                    niter: int = NITER, train_points: int = TRAIN_POINTS, chunk: int = 65536) -> TypiClustPicks:
    """TypiClust's ``budget`` picks among the pool's unlabeled points (``labeled`` (N,) bool is False).

    k-means into ``n_clusters`` (default |L| + b): ``niter`` Lloyd iterations on a seeded sample of
    ``train_points`` points, then every point assigned (``kmeans``; the assignment, N (|L| + b) d
    multiply-adds, dominates at scale); then ``typiclust_picks_in_clusters``."""
    x, ids, labeled = _check(embeddings, ids, labeled, budget)
    k = n_clusters or min(len(x), int(labeled.sum()) + budget)
    assign = nearest_centroids(x, train_centroids(x, k, seed, niter, train_points), chunk)
    return _pick(x, ids, labeled, assign, k, budget, neighbours, min_cluster_size)


def typiclust_picks_in_clusters(embeddings: np.ndarray, ids, labeled: np.ndarray, assign: np.ndarray, budget: int,
                                neighbours: int = NEIGHBOURS, min_cluster_size: int = MIN_CLUSTER_SIZE
                                ) -> TypiClustPicks:
    """TypiClust's picks given each point's cluster ``assign`` (N,) int: steps 2 and 3 above."""
    x, ids, labeled = _check(embeddings, ids, labeled, budget)
    assign = np.asarray(assign, dtype=np.int64)
    if assign.shape != (len(x),) or assign.min() < 0:
        raise InputError(f"assign must be one cluster number >= 0 per point, got shape {assign.shape}")
    return _pick(x, ids, labeled, assign, int(assign.max()) + 1, budget, neighbours, min_cluster_size)


def _pick(x: np.ndarray, ids: np.ndarray, labeled: np.ndarray, assign: np.ndarray, k: int, budget: int,
          neighbours: int, min_cluster_size: int) -> TypiClustPicks:
    members = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=k))])
    unlabeled = {}                                       # in visiting order: each cluster's unlabeled rows
    for c in _visit_order(assign, labeled, k, min_cluster_size):
        rows = members[bounds[c]:bounds[c + 1]]
        if (~labeled[rows]).any():
            unlabeled[c] = rows[~labeled[rows]]
    # Keep each cluster's k-NN lists only when clusters will be visited again, with a spare neighbour a row
    # for each later visit (memory: 16 (K + spare) bytes a point); one visit removes one point.
    revisit = budget > len(unlabeled)
    spare = min(MAX_SPARE, -(-budget // max(1, len(unlabeled))) - 1)
    states = {c: _Cluster(rows, spare) for c, rows in unlabeled.items()}
    picks, typicality, clusters = [], [], []
    while len(picks) < budget:
        if not states:
            raise InputError(f"only {len(picks)} unlabeled points lie in clusters of more than "
                             f"{min_cluster_size} points; the budget is {budget}")
        for c in list(states):
            pick, typical = states[c].most_typical(x, ids, neighbours)
            picks.append(pick), typicality.append(typical), clusters.append(c)
            if revisit and len(states[c].rows) > 1:
                states[c].remove(x, pick, neighbours)
            else:
                del states[c]
            if len(picks) == budget:
                break
    return TypiClustPicks(np.array(picks, dtype=np.int64), np.array(typicality), np.array(clusters, dtype=np.int64))


def _check(embeddings, ids, labeled, budget) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = check_embeddings(embeddings, ids)
    labeled = np.asarray(labeled, dtype=bool)
    if labeled.shape != (len(x),):
        raise InputError(f"labeled must be one bool per point, got shape {labeled.shape}")
    if not 0 <= budget <= int((~labeled).sum()):
        raise InputError(f"budget {budget} must be between 0 and the {int((~labeled).sum())} unlabeled points")
    return x, np.asarray(ids, dtype=str), labeled


def _visit_order(assign: np.ndarray, labeled: np.ndarray, k: int, min_cluster_size: int) -> np.ndarray:
    """Clusters of more than ``min_cluster_size`` points: fewest labeled, then largest, then by number."""
    sizes = np.bincount(assign, minlength=k)
    covered = np.bincount(assign[labeled], minlength=k)
    order = np.lexsort((np.arange(k), -sizes, covered))
    return order[sizes[order] > min_cluster_size]


class _Cluster:
    """A cluster's unlabeled points not yet picked and, once measured, each one's nearest among them: the K the
    typicality averages and up to ``spare`` more, so that a pick only shortens the lists that held it."""

    def __init__(self, rows: np.ndarray, spare: int = 0):
        self.rows = rows                                 # (n,) indices into the pool
        self.spare = spare
        self.k = 0
        self.sq = self.nbrs = None                       # (n, k + spare): exact squared distances, ascending
                                                         # (inf past a list's end), pool indices (-1 there)

    def most_typical(self, x: np.ndarray, ids: np.ndarray, neighbours: int) -> tuple[int, float]:
        """(row, its typicality): ties to the smallest id; NaN for a lone point (nothing to measure)."""
        if self.sq is None:
            self.k = min(neighbours, len(self.rows) // 2)
            if self.k == 0:
                return int(self.rows[0]), float("nan")
            self.sq, self.nbrs = self._measure(x, None)
        t = _inverse_mean_distance(self.sq[:, :self.k])
        best = self.rows[t == t.max()]
        return int(best[np.argmin(ids[best])]), float(t.max())

    def remove(self, x: np.ndarray, pick: int, neighbours: int) -> None:
        """Drop ``pick`` from the cluster and from the lists that held it; a row left with fewer than K is
        measured again (``knn`` on those queries), and all are when K itself changes (small clusters)."""
        keep = self.rows != pick
        self.rows = self.rows[keep]
        if self.sq is None or min(neighbours, len(self.rows) // 2) != self.k:
            self.sq = self.nbrs = None
            return
        self.sq, self.nbrs = self.sq[keep], self.nbrs[keep]
        held = np.flatnonzero((self.nbrs == pick).any(1))
        if len(held):
            sq, nbrs = self.sq[held], self.nbrs[held]
            gone = nbrs == pick
            sq[gone], nbrs[gone] = np.inf, -1
            order = np.argsort(sq, axis=1, kind="stable")                 # the gap to the end of the list
            self.sq[held] = np.take_along_axis(sq, order, 1)
            self.nbrs[held] = np.take_along_axis(nbrs, order, 1)
        short = np.flatnonzero(np.isinf(self.sq[:, self.k - 1]))
        if len(short):
            self.sq[short], self.nbrs[short] = self._measure(x, short)

    def _measure(self, x: np.ndarray, queries: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, pool indices) of the K + spare nearest (fewer if the cluster is smaller, padded
        with inf and -1) of the rows at ``queries`` (all when None)."""
        width = self.k + self.spare if self.sq is None else self.sq.shape[1]
        sq, positions = knn(x[self.rows], min(width, len(self.rows) - 1), queries=queries)
        pad = width - sq.shape[1]
        return (np.pad(sq, ((0, 0), (0, pad)), constant_values=np.inf),
                np.pad(self.rows[positions], ((0, 0), (0, pad)), constant_values=-1))


def _inverse_mean_distance(sq: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(sq).mean(1)


def knn(points: np.ndarray, k: int, queries: np.ndarray | None = None,
        chunk_bytes: int = 2 ** 26) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other points of each of ``points`` (or of the points at positions ``queries``):
    (m, k) squared distances, ascending, and (m, k) their positions (among equal distances, any).

    Distances are |a|^2 + |b|^2 - 2 a.b in float64 (one GEMM per block of at most ``chunk_bytes``) on
    the points centred at their float64 mean: each is within (d + 6) 2^-53 (|a| + |b|)^2 of the exact
    value, a and b centred (1e-13 of the cluster's spread at d = 512), and so are the k smallest, whichever
    of near-equal points they name."""
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if not 1 <= k < n:
        raise InputError(f"need 1 <= k < n points, got k={k}, n={n}")
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    centred = x - x.mean(0)
    norms = np.einsum("ij,ij->i", centred, centred)
    sq_out, nbrs_out = np.empty((len(queries), k)), np.empty((len(queries), k), dtype=np.int64)
    step = max(1, chunk_bytes // (8 * n))
    for start in range(0, len(queries), step):
        q = queries[start:start + step]
        dist = centred[q] @ centred.T
        dist *= -2
        dist += norms[q, None]
        dist += norms[None, :]
        np.maximum(dist, 0, out=dist)                    # rounding can make a duplicate's slightly negative
        dist[np.arange(len(q)), q] = np.inf              # not its own neighbour
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(dist, part, 1)
        order = np.argsort(values, axis=1, kind="stable")
        sq_out[start:start + step] = np.take_along_axis(values, order, 1)
        nbrs_out[start:start + step] = np.take_along_axis(part, order, 1)
    return sq_out, nbrs_out
