"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a Budget") on a whole pool.

1. FAISS k-means of every labeled and unlabeled embedding into |L| + b clusters (the paper's number; the
   authors' code caps it at 500 for its sklearn k-means, we do not: ``n_clusters`` caps it).
2. Clusters of at most ``min_cluster_size`` = 5 points (labeled ones included) are never chosen (the
   authors' code); the others are visited by fewest labeled points, then largest first, then cluster
   number, so the first are the largest clusters holding no labeled point (the paper's "largest uncovered
   clusters": with |L| + b clusters at least b hold none). Past the last, the visits start again; a
   revisited cluster keeps its k-NN lists, and a pick re-measures only the points that had it among
   their K nearest.
3. From each visited cluster, its most typical unlabeled point not yet picked (ties: smallest id):

       typicality(x) = 1 / ((1/K) sum_{y in K-NN(x)} |x - y|_2),   K = min(20, floor(n / 2)),

   the K nearest among the n unlabeled, unpicked points of x's own cluster (the authors' code: density
   within the cluster, K halved for small ones). The paper writes the Euclidean distance, which we use;
   the authors' code averages FAISS's squared distances, which can rank points differently.

The k-NN distances are exact: a float32 search over the cluster's points centred at their mean proposes
candidates, each candidate's distance is recomputed in float64 (``coreset.kcenter.exact_sq_dists``), and a
row whose K-th distance is not provably below every other point's is recomputed against the whole
cluster. The search is FAISS's for clusters of 4,096 points or more and one numpy GEMM below: clusters
hold about N / (|L| + b) points, 100 at 1M and b = 10,000, where a FAISS search costs 6 ms a call (45 ms
with two OpenMP threads on this shared machine) and numpy 0.7 ms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaal_dist.clustering.kmeans import (NITER, TRAIN_POINTS, check_embeddings, flat_index, nearest_centroids,
                                         train_centroids)
from vaal_dist.coreset.kcenter import exact_sq_dists
from vaal_dist.errors import InputError

NEIGHBOURS = 20
MIN_CLUSTER_SIZE = 5
_UNIT = 2.0 ** -23       # twice float32's unit roundoff: a safety factor of 2, as in coreset.kcenter


@dataclass(frozen=True)
class TypiClustPicks:
    picks: np.ndarray        # (b,) int64 indices into the pool, in pick order
    typicality: np.ndarray   # (b,) float64: each pick's typicality when picked (NaN: alone in its cluster)
    cluster: np.ndarray      # (b,) int64: each pick's k-means cluster


def select(embeddings: np.ndarray, ids, labeled: np.ndarray, budget: int, n_clusters: int | None = None,
           neighbours: int = NEIGHBOURS, min_cluster_size: int = MIN_CLUSTER_SIZE, seed: int = 0,
           niter: int = NITER, train_points: int = TRAIN_POINTS, chunk: int = 65536) -> TypiClustPicks:
    """TypiClust's ``budget`` picks among the pool's unlabeled points (``labeled`` (N,) bool is False).

    k-means into ``n_clusters`` (default |L| + b): ``niter`` Lloyd iterations on a seeded sample of
    ``train_points`` points, then every point assigned (``kmeans``; the assignment, N (|L| + b) d
    multiply-adds, dominates at scale); then ``select_in_clusters``."""
    x, ids, labeled = _check(embeddings, ids, labeled, budget)
    k = n_clusters or min(len(x), int(labeled.sum()) + budget)
    assign = nearest_centroids(x, train_centroids(x, k, seed, niter, train_points), chunk)
    return _pick(x, ids, labeled, assign, k, budget, neighbours, min_cluster_size)


def select_in_clusters(embeddings: np.ndarray, ids, labeled: np.ndarray, assign: np.ndarray, budget: int,
                       neighbours: int = NEIGHBOURS, min_cluster_size: int = MIN_CLUSTER_SIZE) -> TypiClustPicks:
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
    remaining = {}                                       # cluster -> its unlabeled points not yet picked
    for c in _visit_order(assign, labeled, k, min_cluster_size):
        rows = members[bounds[c]:bounds[c + 1]]
        if (~labeled[rows]).any():
            remaining[c] = rows[~labeled[rows]]
    # keep each cluster's k-NN lists only when clusters will be visited again (memory: 16 k bytes a point)
    revisit = budget > len(remaining)
    states = {c: _Cluster(rows) for c, rows in remaining.items()}
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
    """A cluster's unlabeled points not yet picked and, once measured, each one's k nearest among them."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows                                 # (n,) indices into the pool
        self.sq = self.nbrs = None                       # (n, k): exact squared distances, pool indices

    def most_typical(self, x: np.ndarray, ids: np.ndarray, neighbours: int) -> tuple[int, float]:
        """(row, its typicality): ties to the smallest id; NaN for a lone point (nothing to measure)."""
        if self.sq is None:
            k = min(neighbours, len(self.rows) // 2)
            if k == 0:
                return int(self.rows[0]), float("nan")
            self.sq, positions = knn(x[self.rows], k)
            self.nbrs = self.rows[positions]
        t = _inverse_mean_distance(self.sq)
        best = self.rows[t == t.max()]
        return int(best[np.argmin(ids[best])]), float(t.max())

    def remove(self, x: np.ndarray, pick: int, neighbours: int) -> None:
        """Drop ``pick``; only the rows that had it among their k nearest are measured again (exactly,
        against the whole cluster), unless k itself changes (small clusters), which re-measures all."""
        keep = self.rows != pick
        self.rows = self.rows[keep]
        if self.sq is None or min(neighbours, len(self.rows) // 2) != self.sq.shape[1]:
            self.sq = self.nbrs = None
            return
        self.sq, self.nbrs = self.sq[keep], self.nbrs[keep]
        k = self.sq.shape[1]
        for i in np.flatnonzero((self.nbrs == pick).any(1)):
            row = exact_sq_dists(x[self.rows], x[self.rows[i]])
            row[i] = np.inf
            nearest = np.argsort(row, kind="stable")[:k]
            self.sq[i], self.nbrs[i] = row[nearest], self.rows[nearest]


def typicality(points: np.ndarray, k: int) -> np.ndarray:
    """(n,) float64: 1 / mean Euclidean distance of each point to its k nearest other points (inf when
    those are all at distance 0)."""
    return _inverse_mean_distance(knn(points, k)[0])


def _inverse_mean_distance(sq: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(sq).mean(1)


def knn(points: np.ndarray, k: int, slack: int = 8, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest other points: (n, k) exact (float64) squared distances, ascending, and
    (n, k) their positions (among equal distances, any).

    Candidates: the k + 1 + ``slack`` nearest by float32 distances on the points centred at their float64
    mean and rounded to float32 (so the error bound scales with the spread, not the distance from the
    origin). Each candidate is measured exactly; a row is recomputed against all points unless its k-th
    exact distance is at most the last candidate's float32 distance less the error bound, which no other
    point can undercut."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k < n:
        raise InputError(f"need 1 <= k < n points, got k={k}, n={n}")
    centred = (x.astype(np.float64) - x.mean(0, dtype=np.float64)).astype(np.float32)
    width = min(n, k + 1 + slack)
    cand, last = _candidates(centred, width)
    sq_out, nbrs_out = np.empty((n, k)), np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        exact = exact_sq_dists(np.repeat(x[rows], width, axis=0), x[cand[rows].ravel()]).reshape(len(rows), width)
        exact[cand[rows] == rows[:, None]] = np.inf      # not its own neighbour
        nearest = np.argsort(exact, axis=1, kind="stable")[:, :k]
        sq_out[rows] = np.take_along_axis(exact, nearest, 1)
        nbrs_out[rows] = np.take_along_axis(cand[rows], nearest, 1)
    if width < n:
        norms = np.sqrt((centred.astype(np.float64) ** 2).sum(1))
        # float32 error on |a|^2 + |b|^2 - 2 a.b (as in kcenter: 2 gamma_{d+4}; it also covers FAISS's
        # direct sum of squares) plus the centring's rounding (2 u (|a| + |b|)^2), on the centred norms;
        # times 2 for safety (_UNIT)
        eps = (d + 6) * _UNIT * (norms + norms.max()) ** 2
        for i in np.flatnonzero(sq_out[:, -1] > last - eps):
            row = exact_sq_dists(x, x[i])
            row[i] = np.inf
            nbrs_out[i] = np.argsort(row, kind="stable")[:k]
            sq_out[i] = row[nbrs_out[i]]
    return sq_out, nbrs_out


_FAISS_FROM = 4096       # points: below, numpy measured faster (a FAISS call costs 6-45 ms here, plus its heaps)


def _candidates(centred: np.ndarray, width: int, chunk_bytes: int = 2 ** 26) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) positions of each point's ``width`` nearest by float32 distance (itself among them,
    unless ``width`` exact ties crowd it out) and (n,) the largest of those float32 distances: a FAISS
    flat search for large sets, else |a|^2 + |b|^2 - 2 a.b from one numpy GEMM per block of rows."""
    n = len(centred)
    if width == n:
        return np.tile(np.arange(n), (n, 1)), np.full(n, np.inf, dtype=np.float32)
    if n >= _FAISS_FROM:
        approx, cand = flat_index(centred).search(centred, width)         # ascending
        return cand, approx[:, -1]
    sq = np.einsum("ij,ij->i", centred, centred)
    cand, last = np.empty((n, width), dtype=np.int64), np.empty(n, dtype=np.float32)
    step = max(1, chunk_bytes // (4 * n))
    for start in range(0, n, step):
        approx = sq[start:start + step, None] + sq[None, :] - 2 * (centred[start:start + step] @ centred.T)
        cand[start:start + step] = np.argpartition(approx, width - 1, axis=1)[:, :width]
        last[start:start + step] = np.take_along_axis(approx, cand[start:start + step], 1).max(1)
    return cand, last
