"""Seeded FAISS k-means over a whole pool, and each cell's exact size, mean and spread.

Lloyd's iterations run on a seeded sample of about ``train_points`` points (FAISS's subsampling), then
every point is assigned to its nearest centroid in one chunked pass: with K centroids that pass is N K d
multiply-adds and the training niter x train_points x K x d, so the defaults (10 iterations on 2^17
points, 1.3M K d multiply-adds) cost about one assignment pass of a 1.3M-point pool. The float32 search
is FAISS's (a GPU index when faiss-gpu sees a GPU); k-means is a heuristic, so nothing here claims
exactness beyond "deterministic for the same inputs, order and seed".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vaal_dist.errors import InputError
from vaal_dist.flat_index import faiss_gpus, flat_index

TRAIN_POINTS = 2 ** 17
NITER = 10


@dataclass(frozen=True)
class Cells:
    """A k-means partition of N points into K cells (some may be empty)."""

    assign: np.ndarray       # (N,) int64: each point's cell
    sizes: np.ndarray        # (K,) int64
    means: np.ndarray        # (K, d) float64: the mean of each cell's points (0 for an empty cell)
    spreads: np.ndarray      # (K,) float64: mean squared distance of a cell's points to its mean


def check_embeddings(x: np.ndarray, ids=None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"embeddings must be a non-empty 2-d array (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("embeddings contain NaN or infinite values")
    if ids is not None and len(ids) != len(x):
        raise InputError(f"{len(ids)} ids for {len(x)} embeddings")
    return x


def train_centroids(x: np.ndarray, k: int, seed: int = 0, niter: int = NITER,
                    train_points: int = TRAIN_POINTS) -> np.ndarray:
    """(k, d) float32 centroids: ``niter`` FAISS Lloyd iterations from k seeded random points, on a seeded
    sample of k ceil(train_points / k) points (all of them when there are fewer)."""
    import faiss

    if not 1 <= k <= len(x):
        raise InputError(f"cannot make {k} clusters of {len(x)} points")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=math.ceil(train_points / k),
                      min_points_per_centroid=1, gpu=faiss_gpus() > 0, verbose=False)
    km.train(x)
    return km.centroids


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N,) int64: each point's nearest centroid (FAISS flat search, float32), ``chunk`` points at a time."""
    index = flat_index(centroids)
    return np.concatenate([index.search(x[s:s + chunk], 1)[1][:, 0] for s in range(0, len(x), chunk)])


def cell_stats(x: np.ndarray, assign: np.ndarray, k: int, chunk: int = 65536) -> Cells:
    """Each cell's size, exact mean and spread (float64); memory O(chunk d + K d) beyond the input."""
    d = x.shape[1]
    sums = torch.zeros((k, d), dtype=torch.float64)
    sq_norms = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        rows = torch.from_numpy(x[start:start + chunk]).double()
        cells = torch.from_numpy(assign[start:start + chunk])
        sums.index_add_(0, cells, rows)
        sq_norms.index_add_(0, cells, (rows * rows).sum(1))
    sizes = np.bincount(assign, minlength=k)
    counts = torch.from_numpy(np.maximum(sizes, 1)).double()
    means = sums / counts[:, None]
    # mean |a - mu|^2 = mean |a|^2 - |mu|^2; clipped at 0 against the cancellation's rounding
    spreads = (sq_norms / counts - (means * means).sum(1)).clamp_(min=0)
    return Cells(assign, sizes, means.numpy(), spreads.numpy())


def kmeans_cells(x: np.ndarray, k: int, seed: int = 0, niter: int = NITER, train_points: int = TRAIN_POINTS,
                 chunk: int = 65536) -> Cells:
    """FAISS k-means of ``x`` (N, d) into ``k`` cells, every point assigned (see ``train_centroids``)."""
    x = check_embeddings(x)
    assign = nearest_centroids(x, train_centroids(x, k, seed, niter, train_points), chunk)
    return cell_stats(x, assign, k, chunk)
