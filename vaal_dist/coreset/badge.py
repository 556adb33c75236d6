"""BADGE's selection (Ash et al., ICLR 2020) exactly, without the N x (C*D) gradient embedding matrix.

BADGE runs k-means++ seeding on the gradient embeddings g_i = a_i (x) h_i of the unlabeled pool, where
h_i (D,) are the penultimate features and a_i = p_i - onehot(argmax p_i) (C,) (``gradient_factors``):
g_i is the gradient of the cross-entropy at the predicted label with respect to the last layer's
weights (the public code stores -g_i; distances do not see the sign). The first center is the point
of largest norm (as the public code does); each later center is drawn with probability proportional
to D^2, the squared distance to the nearest center so far.

The reference the picks equal (``tests/test_badge.py`` materialises it): g_i as float32 products
a_ij * h_il (the public code's float32 embedding), D^2 as the float64 ``sum((g_i - g_c) ** 2)``
(``kcenter.exact_sq_dists`` on materialised rows), rows in id order, and the draw rule:
- step 1 takes the largest norm, ties to the smallest id (no random draw);
- step t >= 2 draws one u = rng.random() from ``np.random.default_rng(seed)`` (the (t-1)-th draw)
  and takes the first row, in id order, whose running sum (``np.cumsum``) of D^2 exceeds u * T, T the
  last running sum (or, should rounding put u * T at T, the last row with D^2 > 0). A picked point and
  every duplicate of a pick have D^2 = 0, so they are never drawn;
- when T = 0 (every point not yet picked duplicates a pick: zero gradients included), k-means++ has no
  distribution; the step takes the floor(u * r)-th of the r points not picked, in id order (uniform,
  with the same u), where the public code stops in the debugger.
Labeled points play no part: BADGE seeds over the unlabeled pool only.

The squared distance factorises, ||a (x) h - b (x) h'||^2 = ||a||^2 ||h||^2 + ||b||^2 ||h'||^2
- 2 (a.b)(h.h'), so each step needs one float32 pass over the (C + D)-wide factors (two matrix-vector
products) for an estimate of every point's distance to the new center, with a proven error bound
(``lower_bounds``). Only rows whose estimate, less the bound, falls below their current D^2 can get
closer; those alone are recomputed by the reference's own float64 expression on their materialised
rows, in chunks (the first center recomputes every row once). Every other row provably keeps its D^2
in the reference too. So the D^2 vector equals the reference's bit for bit at every step (numpy's
row reduction does not depend on the other rows of the block; ``tests/test_badge.py`` checks it), and
so does each running sum and pick: rounding cannot flip a pick.

Memory: the factors, O(N (C + D)), plus O(N) float64 vectors and O(chunk C D) for the recomputed rows.
The passes run in torch on a GPU when there is one (TF32 off), else on one CPU thread; the exact
recomputations and the draws run in numpy on the host, so the picks do not depend on the device.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from vaal_dist.coreset.kcenter import full_float32_matmul, exact_sq_dists
from vaal_dist.errors import InputError

_LARGEST_FACTOR = 2.0 ** 60   # keeps every float32 product and dot product, and D^2 in float64, finite
_TINY = 2.0 ** -140           # covers float32 underflow (subnormal products and sums)


def gradient_factors(probs: np.ndarray) -> np.ndarray:
    """a = p - onehot(argmax p), (N, C) float32: the last layer's cross-entropy gradient at the
    predicted label is a_i (x) h_i. Ties in the argmax go to the first class (numpy's argmax)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise InputError(f"probabilities must be 2-d (n, classes), got shape {probs.shape}")
    a = probs.copy()
    a[np.arange(len(a)), np.argmax(probs, axis=1)] -= np.float32(1)
    return a


def embedding_rows(a: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The gradient embeddings a_i (x) h_i of ``a`` (m, C) and ``h`` (m, D) as (m, C*D) float32 rows."""
    return (a[:, :, None] * h[:, None, :]).reshape(len(a), -1)


def exact_embedding_sq_dists(a: np.ndarray, h: np.ndarray, rows: np.ndarray, center: int,
                             chunk: int = 64) -> np.ndarray:
    """(len(rows),) float64 reference D^2 of the ``rows`` to row ``center``: ``exact_sq_dists`` on
    materialised embeddings, ``chunk`` rows at a time."""
    g_center = embedding_rows(a[center:center + 1], h[center:center + 1])[0].astype(np.float64)
    out = np.empty(len(rows))
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        diff = np.subtract(embedding_rows(a[block], h[block]), g_center)   # float64, as exact_sq_dists
        out[start:start + len(block)] = np.einsum("ij,ij->i", diff, diff)
    return out


def badge_seeding(a: np.ndarray, h: np.ndarray, budget: int, seed: int, ids: np.ndarray | None = None,
                  chunk: int = 64, device: str | None = None) -> np.ndarray:
    """Indices into the rows of ``a`` (N, C) and ``h`` (N, D) of BADGE's ``budget`` picks, in pick order.

    ``ids`` (default: the row index) fix the order of the running sums and break ties (smallest id);
    with the same ``seed`` the picks are the same whatever the row order, ``chunk`` or ``device``.
    ``device``: where the passes run (torch); default a GPU when torch sees one, else the CPU.
    """
    return badge_seeding_with_d2(a, h, budget, seed, ids, chunk, device)[0]


def badge_seeding_with_d2(a: np.ndarray, h: np.ndarray, budget: int, seed: int, ids: np.ndarray | None = None,
                          chunk: int = 64, device: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picks, each pick's D^2 when it was drawn, the total T of D^2 then), in pick order: pick t was
    drawn with probability d2[t] / totals[t]. The first pick's entries are inf (no center yet); under
    the fallback (T = 0) both are 0."""
    a, h = _check(a, h, budget, ids)
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable") if ids is not None else None
    if order is not None:
        a, h = np.ascontiguousarray(a[order]), np.ascontiguousarray(h[order])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with full_float32_matmul(), _one_thread_on(device):
        picks, d2, totals = _seed(a, h, budget, np.random.default_rng(seed), chunk, device)
    return (order[picks] if order is not None else picks), d2, totals


@contextlib.contextmanager
def _one_thread_on(device: torch.device):
    """On the CPU the steps run on one torch thread: each is one memory-bound pass and a few O(N) vector
    operations, and torch's intra-op threads wait on each other whenever another process holds a core
    (at load 4-8 on the 2-core dev machine the 100k benchmark took 261 s on two threads, 82 s on one)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(a: np.ndarray, h: np.ndarray, budget: int, ids) -> tuple[np.ndarray, np.ndarray]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    h = np.ascontiguousarray(h, dtype=np.float32)
    if a.ndim != 2 or h.ndim != 2 or len(a) != len(h):
        raise InputError(f"gradient factors must be 2-d with one row per point, got a {a.shape}, h {h.shape}")
    if ids is not None and len(ids) != len(a):
        raise InputError(f"{len(ids)} ids for {len(a)} points")
    for name, x in (("a", a), ("h", h)):
        if not np.isfinite(x).all():
            raise InputError(f"gradient factor {name} contains NaN or infinite values")
        if x.size and np.abs(x).max() > _LARGEST_FACTOR:
            raise InputError(f"gradient factor {name} has entries above 2**60: rescale it")
    if not 0 <= budget <= len(a):
        raise InputError(f"budget {budget} must be between 0 and the {len(a)} unlabeled points")
    return a, h


def _seed(a: np.ndarray, h: np.ndarray, budget: int, rng: np.random.Generator, chunk: int,
          device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-means++ steps on rows in id order: (picks, their D^2 when drawn, the totals then)."""
    n = len(a)
    picks = np.empty(budget, dtype=np.int64)
    picked_d2, totals = np.full(budget, math.inf), np.full(budget, math.inf)
    if budget == 0:
        return picks, picked_d2, totals
    factors = _Factors(a, h, device)
    d2 = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    picked = np.zeros(n, dtype=bool)
    center = _largest_norm(a, h, factors.sq_norms.cpu().numpy(), chunk)
    for step in range(budget):
        picks[step], picked[center] = center, True
        if step + 1 == budget:
            break
        if totals[step] > 0:                  # D^2 >= 0 only decreases: once all 0, it stays 0
            _lower_to(center, d2, factors, a, h, chunk)
        host_d2 = d2.cpu().numpy()
        center, totals[step + 1] = _draw(host_d2, rng.random(), picked)
        picked_d2[step + 1] = host_d2[center]
    return picks, picked_d2, totals


class _Factors:
    """The factors on the device, and per row the float64 estimate of ||g_i||^2 and what the lower
    bounds need of it."""

    def __init__(self, a: np.ndarray, h: np.ndarray, device: torch.device):
        self.a, self.h = torch.from_numpy(a).to(device), torch.from_numpy(h).to(device)
        sq_norms_a = (self.a.double() ** 2).sum(1)
        sq_norms_h = torch.cat([(block.double() ** 2).sum(1) for block in self.h.split(4096)])
        self.sq_norms = sq_norms_a * sq_norms_h                 # ||g_i||^2, float64 estimate
        self.norms = self.sq_norms.sqrt()
        c, d = a.shape[1], h.shape[1]
        self.kappa = (c + d + 8) * 2.0 ** -23 + (c * d + c + d + 32) * 2.0 ** -52
        self.tiny = _TINY * (c * float(sq_norms_h.max()) + d * float(sq_norms_a.max()) + c * d)
        self.shrunk_sq_norms = (1 - self.kappa) * self.sq_norms


def lower_bounds(factors: _Factors, center: int) -> torch.Tensor:
    """For every row, a float64 lower bound on its reference D^2 to row ``center``, from one float32
    pass over the factors: the estimate ||a||^2 ||h||^2 + ||b||^2 ||h'||^2 - 2 (a.b)(h.h') less its error
    bound kappa x^2 + tiny, x = ||g_i|| + ||g_c||, written as (1 - kappa)(n_i + n_c) - 2 kappa ||g_i|| ||g_c||
    - 2 (a.b)(h.h') - tiny.

    The error bound, with u = 2^-24: float32 dot products (any order, FMA or not) err by at most
    gamma_C ||a_i|| ||a_c|| and gamma_D ||h_i|| ||h_c|| (gamma_n ~ n u), so 2 (a.b)(h.h') errs by at most
    (gamma_C + gamma_D + gamma_C gamma_D) x^2 / 2; the reference's float32 embedding moves the distance
    by at most (2u + u^2) x^2; its float64 sum by (C D + 3) 2^-53 x^2; our float64 norms and the seven
    float64 operations here by (C + D + 16) 2^-53 x^2. kappa = (C + D + 8) 2^-23 + (C D + C + D + 32)
    2^-52 covers the sum at least twice over; ``tiny`` covers float32 underflow (absolute errors of
    2^-149 per product and sum, times the largest factor norms).
    """
    dots_a = torch.mv(factors.a, factors.a[center]).double()    # the one pass over the factors
    dots_h = torch.mv(factors.h, factors.h[center]).double()
    constant = float(factors.shrunk_sq_norms[center]) - factors.tiny
    bound = torch.addcmul(factors.shrunk_sq_norms + constant, dots_a, dots_h, value=-2)
    return bound.add_(factors.norms, alpha=-2 * factors.kappa * float(factors.norms[center]))


def _lower_to(center: int, d2: torch.Tensor, factors: _Factors, a: np.ndarray, h: np.ndarray,
              chunk: int) -> None:
    """D^2 <- min(D^2, reference distance to ``center``), recomputing only rows that can get closer."""
    rows = torch.nonzero(lower_bounds(factors, center) < d2).squeeze(1)
    exact = exact_embedding_sq_dists(a, h, rows.cpu().numpy(), center, chunk)
    d2[rows] = torch.minimum(d2[rows], torch.from_numpy(exact).to(d2.device))
    d2[center] = 0.0                         # its own center (the exact distance is 0 too)


def _draw(d2: np.ndarray, u: float, picked: np.ndarray) -> tuple[int, float]:
    """(the next center by the module's draw rule, the total T of D^2 it was drawn from)."""
    running = np.cumsum(d2)
    total = float(running[-1])
    if total > 0:
        i = int(np.searchsorted(running, u * total, side="right"))
        return (i if i < len(d2) else int(np.flatnonzero(d2)[-1])), total
    free = np.flatnonzero(~picked)
    return int(free[min(int(u * len(free)), len(free) - 1)]), total


def _largest_norm(a: np.ndarray, h: np.ndarray, sq_norms: np.ndarray, chunk: int) -> int:
    """The first row of largest reference norm. The float64 estimates err by at most 3u relative
    (float32 embedding 2u + u^2, float64 sums (C D + C + D + 2) 2^-53); only rows within twice that
    of the largest estimate can hold the largest reference norm, and only they are materialised."""
    c, d = a.shape[1], h.shape[1]
    band = 4 * 2.0 ** -24 + (c * d + c + d + 8) * 2.0 ** -52
    candidates = np.flatnonzero(sq_norms * (1 + band) + 2 * _TINY >= sq_norms.max() * (1 - band))
    zero = np.zeros(c * d, dtype=np.float32)
    exact = np.concatenate([exact_sq_dists(embedding_rows(a[block], h[block]), zero)
                            for block in np.array_split(candidates, max(1, len(candidates) // chunk))])
    return int(candidates[np.argmax(exact)])
