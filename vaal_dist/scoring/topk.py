"""Exact top-b selection: score descending, then id ascending. Pure functions plus a bounded accumulator.

The global top-b of a pool is contained in the union of the top-b of any partition of it, so each
scoring batch keeps only its own top-b and the driver folds those into a running top-b: the answer is the
same as a full sort of every score, and memory is O(b + batch) wherever this runs.

The same pass keeps a sample of the pool's scores for its distribution (``RunningSample``): the rows whose ids
hash highest, a fixed number of them, folded the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_SIZE = 10_000     # scores kept for a round's score distribution, whatever the pool's size


@dataclass(frozen=True)
class ScoreSample:
    """Scores of a uniform sample of the scored rows: every row when there were at most ``limit``."""

    ids: np.ndarray        # (n,) str, n <= limit
    scores: np.ndarray     # (n,) float64
    limit: int


@dataclass(frozen=True)
class Selection:
    """A round's picks, best first, and what finding them cost."""

    ids: np.ndarray        # (b,) str, best first
    scores: np.ndarray     # (b,) float64
    candidates: int        # rows sent to the driver to choose from (each batch's top-b, or every embedding)
    seconds: float         # wall time of the selection, merging included
    merge_seconds: float   # driver time spent choosing from the candidates (and folding the score sample)
    sample: ScoreSample | None = None   # the pool's score distribution, where scores were streamed
    predicted: np.ndarray | None = None  # (b,) int64, the task model's class for each pick; None: no task model
    confidence: np.ndarray | None = None  # (b,) float64, the model's probability of ``predicted``


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
    best = top_rows(ids, scores, k)
    return ids[best], scores[best]


def top_rows(ids: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k rows with the highest key, ties by smallest id, in that order."""
    rows = np.arange(len(keys))
    if k == 0:
        return rows[:0]
    if len(keys) > k:
        # Every row keyed at least the k-th largest key is a candidate (ties at the cut included).
        kth = np.partition(keys, len(keys) - k)[len(keys) - k]
        rows = np.flatnonzero(keys >= kth)
    return rows[np.lexsort((ids[rows], -keys[rows]))[:k]]


class RunningTopK:
    """Folds (ids, scores) batches into the exact top-k, holding O(k + pending) rows; any ``columns`` given
    with them (the model's guess of each row) travel with their rows.

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
        self.columns: dict[str, np.ndarray] = {}     # the top-k's other columns, after ``result``
        self._pending: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_rows = 0
        self.rows_seen = 0

    def add(self, ids, scores, columns: dict[str, np.ndarray] | None = None) -> None:
        """Fold one batch; ``columns``: {name: (n,) values} of its rows, the same names in every batch."""
        ids = np.asarray(ids, dtype=str)
        scores = np.asarray(scores, dtype=np.float64)
        columns = {name: np.asarray(values) for name, values in (columns or {}).items()}
        if not np.isfinite(scores).all():
            raise ValueError("scores must be finite")
        self.rows_seen += len(ids)
        if len(self._scores) == self.k and self.k > 0:
            keep = scores >= self._scores[-1]   # below the current k-th can never enter
            ids, scores = ids[keep], scores[keep]
            columns = {name: values[keep] for name, values in columns.items()}
        self._pending.append((ids, scores, columns))
        self._pending_rows += len(ids)
        if self._pending_rows > self._fold_at:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        names = self._pending[0][2].keys()
        kept = self.columns or {name: self._pending[0][2][name][:0] for name in names}   # none kept yet
        parts = [(self._ids, self._scores, kept), *self._pending]
        ids, scores = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        columns = {name: np.concatenate([p[2][name] for p in parts]) for name in names}
        once = _one_per_id(ids, scores)
        best = once[top_rows(ids[once], scores[once], self.k)]
        self._ids, self._scores = ids[best], scores[best]
        self.columns = {name: values[best] for name, values in columns.items()}
        self._pending, self._pending_rows = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-k so far, best first."""
        self._fold()
        return self._ids, self._scores


def _one_per_id(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of each id once, the row with its highest score."""
    order = np.lexsort((-scores, ids))
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    return order[first]


class RunningSample:
    """The ``size`` rows of highest priority so far (ties by smallest id) with their scores, in
    O(size + pending) rows: with ``ids.sample_priorities`` a uniform sample of a stream's scores, the same for any
    split or order of the stream (it is the top-size of the priorities, found as ``RunningTopK`` finds the
    top-b). An id added again (a batch a restarted actor rescored) is kept once, with its highest score.

    ``add`` returns which rows could still be in the sample: a scoring actor that keeps its own sample of
    its batches sends the driver only those, since a row of the stream's sample is in the sample of any part
    of the stream that holds it."""

    def __init__(self, size: int = SAMPLE_SIZE, fold_at: int = 65536):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._fold_at = max(size, fold_at)
        self._ids, self._priorities, self._scores = np.array([], str), np.array([]), np.array([])
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, ids, priorities, scores) -> np.ndarray:
        ids = np.asarray(ids, dtype=str)
        priorities, scores = np.asarray(priorities, np.float64), np.asarray(scores, np.float64)
        if not (ids.shape == priorities.shape == scores.shape and ids.ndim == 1):
            raise ValueError(f"ids, priorities and scores must be 1-d of one length, got {ids.shape}, "
                             f"{priorities.shape} and {scores.shape}")
        keep = np.ones(len(ids), bool)
        if len(self._ids) == self.size:
            keep = priorities >= self._priorities[-1]     # below the current size-th can never enter
        self._pending.append((ids[keep], priorities[keep], scores[keep]))
        self._pending_rows += int(keep.sum())
        if self._pending_rows > self._fold_at:
            self._fold()
        return keep

    def _fold(self) -> None:
        parts = [(self._ids, self._priorities, self._scores), *self._pending]
        ids, priorities, scores = (np.concatenate([p[i] for p in parts]) for i in range(3))
        once = _one_per_id(ids, scores)
        ids, priorities, scores = ids[once], priorities[once], scores[once]
        best = top_rows(ids, priorities, self.size)
        self._ids, self._priorities, self._scores = ids[best], priorities[best], scores[best]
        self._pending, self._pending_rows = [], 0

    def result(self) -> ScoreSample:
        self._fold()
        return ScoreSample(self._ids, self._scores, self.size)
