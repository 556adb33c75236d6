"""Exact top-b selection: score descending, then id ascending. Pure functions plus a bounded accumulator.

The global top-b of a pool is contained in the union of the top-b of any partition of it, so each
scoring batch keeps only its own top-b and the driver folds those into a running top-b: the answer is the
same as a full sort of every score, and memory is O(b + batch) wherever this runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A round's picks, best first, and what finding them cost."""

    ids: np.ndarray        # (b,) str, best first
    scores: np.ndarray     # (b,) float64
    candidates: int        # rows sent to the driver to choose from (each batch's top-b, or every embedding)
    seconds: float         # wall time of the selection, merging included
    merge_seconds: float   # driver time spent choosing from the candidates


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows with the highest score, ties broken by smallest id, in that order.

    ``ids`` are strings (any array-like), ``scores`` finite floats. Returns (ids as str array, float64
    scores), at most k rows.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ids = np.asarray(ids, dtype=str)
    scores = np.asarray(scores, dtype=np.float64)
    if ids.shape != scores.shape or ids.ndim != 1:
        raise ValueError(f"ids and scores must be 1-d of one length, got {ids.shape} and {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if k == 0:
        return ids[:0], scores[:0]
    if len(scores) > k:
        # Every row scoring at least the k-th largest score is a candidate (ties at the cut included).
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


class RunningTopK:
    """Folds (ids, scores) batches into the exact top-k, holding O(k + pending) rows.

    Rows are buffered and folded once the buffer outgrows ``max(k, fold_at)``, so a long stream of
    small batches costs O(N log k), not one sort per batch. An id folded more than once (a block that a
    restarted scoring actor delivered again) is kept once, with its highest score.
    """

    def __init__(self, k: int, fold_at: int = 65536):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self._fold_at = max(k, fold_at)
        self._ids, self._scores = top_k([], [], k)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.rows_seen = 0

    def add(self, ids, scores) -> None:
        ids = np.asarray(ids, dtype=str)
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError("scores must be finite")
        self.rows_seen += len(ids)
        if len(self._scores) == self.k and self.k > 0:
            keep = scores >= self._scores[-1]   # below the current k-th can never enter
            ids, scores = ids[keep], scores[keep]
        self._pending.append((ids, scores))
        self._pending_rows += len(ids)
        if self._pending_rows > self._fold_at:
            self._fold()

    def _fold(self) -> None:
        parts = [(self._ids, self._scores), *self._pending]
        ids, scores = _one_per_id(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        self._ids, self._scores = top_k(ids, scores, self.k)
        self._pending, self._pending_rows = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k so far, best first."""
        self._fold()
        return self._ids, self._scores


def _one_per_id(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id once, with its highest score."""
    order = np.lexsort((-scores, ids))
    ids, scores = ids[order], scores[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], scores[first]
