"""Exact average-linkage (UPGMA) agglomerative clustering of weighted items, and its flat cuts.

Average linkage between clusters A and B is the mean dissimilarity over all pairs of their members. When
the items are groups of points (k-means cells) with ``weights`` = their sizes, merging updates

    D(k, i + j) = (w_i D(k, i) + w_j D(k, j)) / (w_i + w_j),

so every merged distance is the mean over all *point* pairs of the cell-level dissimilarity. scipy's
``linkage(method="average")`` is the same update with every weight 1 (each item counts once, whatever it
stands for), which is why this module exists; with unit weights the two give the same dendrogram (tested).

The nearest-neighbour chain (Murtagh 1983; Müllner 2011) finds the same merges as the textbook greedy
(average linkage is reducible) in O(K^2) time and one K x K float64 matrix (K = 4096: 128 MiB).
"""
from __future__ import annotations

import numpy as np

from vaal_dist.errors import InputError


def average_linkage(dist: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Merges (K - 1, 3) of the K items with dissimilarities ``dist`` (K, K), symmetric: rows [kept item,
    absorbed item, height], in the order made; a merged cluster keeps the smaller item number.

    Heights are made monotone along the tree (a merge is never lower than the merges below it): average
    linkage is monotone, and this only removes last-bit rounding inversions."""
    d = np.array(dist, dtype=np.float64)               # a copy: rows are overwritten as clusters merge
    k = len(d)
    if d.shape != (k, k):
        raise InputError(f"dissimilarities must be a square matrix, got shape {d.shape}")
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64).copy()
    if w.shape != (k,) or not (w > 0).all():
        raise InputError("weights must be one positive number per item")
    np.fill_diagonal(d, np.inf)
    merges = np.empty((max(k - 1, 0), 3))
    below = np.zeros(k)                                  # height of the last merge into each item
    alive = np.ones(k, dtype=bool)
    chain: list[int] = []
    for m in range(k - 1):
        while True:
            if not chain:
                chain.append(int(np.argmax(alive)))      # the first item still alive
            a = chain[-1]
            b = int(np.argmin(d[a]))                     # ties: the smallest item ...
            if len(chain) > 1 and d[a, chain[-2]] == d[a, b]:
                b = chain[-2]                            # ... but the chain's previous one first (termination)
            if len(chain) > 1 and b == chain[-2]:
                break
            chain.append(b)
        chain.pop(), chain.pop()
        keep, gone = min(a, b), max(a, b)
        height = max(d[a, b], below[keep], below[gone])
        merged = (w[keep] * d[keep] + w[gone] * d[gone]) / (w[keep] + w[gone])
        d[keep], d[:, keep] = merged, merged
        d[gone], d[:, gone] = np.inf, np.inf
        d[keep, keep] = np.inf
        w[keep] += w[gone]
        alive[gone] = False
        below[keep] = height
        merges[m] = keep, gone, height
    return merges


def cut(merges: np.ndarray, k: int, n_clusters: int | None = None,
        distance_threshold: float | None = None) -> np.ndarray:
    """Flat clusters (K,) int64 numbered 0.. by their smallest item, from ``average_linkage``'s merges.

    Exactly one of: ``n_clusters`` (undo the highest merges until that many clusters are left; merges of
    equal height are undone last-made first) or ``distance_threshold`` (keep the merges lower than it,
    sklearn's ``distance_threshold``: clusters at or above it are not merged)."""
    if (n_clusters is None) == (distance_threshold is None):
        raise InputError("give exactly one of n_clusters and distance_threshold")
    order = np.argsort(merges[:, 2], kind="stable")
    if n_clusters is not None:
        if not 1 <= n_clusters <= k:
            raise InputError(f"n_clusters must be between 1 and the {k} items, got {n_clusters}")
        applied = np.sort(order[:k - n_clusters])        # back in the order made: children before parents
    else:
        applied = np.flatnonzero(merges[:, 2] < distance_threshold)
    root = np.arange(k)
    for keep, gone in merges[applied, :2].astype(np.int64):
        root[gone] = keep                                # a kept item is alive until it is absorbed later
    for i in range(k):                                   # items in increasing order: a root is smaller
        root[i] = root[root[i]] if root[i] < i else root[i]
    return np.unique(root, return_inverse=True)[1].astype(np.int64)
