"""Exact k-center greedy (Sener & Savarese, ICLR 2018; Gonzalez 1985) without an N x N or N x L matrix.

Greedy: repeatedly pick the unlabeled point farthest from its nearest center (labeled points and the
picks so far), ties broken by smallest id. "Distance" is the squared Euclidean distance computed in
float64 as ``sum((x - c) ** 2)`` on the float32 embeddings (``exact_sq_dists``): that is the textbook
reference the picks must equal.

Speed comes from doing the bulk arithmetic in float32 and only the decisions in float64:
- the distance of every point to its nearest labeled point starts from a FAISS k-NN search in float32;
  each row's true nearest is provably among the returned neighbours unless the k-th lies within the
  float32 error bound of the best, and then that row is recomputed exactly against all labeled points;
- each greedy step computes the new center's float32 dot product with all N points (one matrix-vector
  product: the only pass over the embeddings), and recomputes in float64 only the rows whose float32
  dot product, allowing for its error bound, could put them closer than their current minimum (a
  handful per step);
- a pass over the embeddings costs about the same for one center as for a few (it is memory-bound), so
  each pass also computes the dot products of the next likely picks (the currently farthest points);
  a step whose pick was speculated needs no pass.
The min-distance vector is therefore exact at every step, and so is every pick. The start runs on
FAISS (a GPU index when faiss-gpu sees a GPU; torch on the GPU when only torch sees one); the greedy
steps run in torch, on a GPU when there is
one (TF32 off: the bounds assume float32 products) and on the CPU otherwise, at numpy's speed there.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from vaal_dist.errors import InputError
from vaal_dist.flat_index import faiss_gpus, flat_index

_UNIT = 2.0 ** -23   # twice float32's unit roundoff: a safety factor of 2 on the bound below


def exact_sq_dists(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(n,) float64 squared distances of ``points`` (n, d) to one ``center`` (d,), or to the matching
    rows of ``center`` (n, d)."""
    diff = points.astype(np.float64) - center.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def _gemm_error_bound(d: int, norms_a: np.ndarray, norm_b) -> np.ndarray:
    """Bound on |fl32(|a|^2 + |b|^2 - 2 a.b) - |a - b|^2| for any summation order (2 gamma_{d+4})."""
    return (d + 4) * _UNIT * (norms_a + norm_b) ** 2


def _check(unlabeled: np.ndarray, labeled: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    unlabeled = np.ascontiguousarray(unlabeled, dtype=np.float32)
    if unlabeled.ndim != 2:
        raise InputError(f"unlabeled embeddings must be 2-d (n, d), got shape {unlabeled.shape}")
    labeled = np.ascontiguousarray(labeled, dtype=np.float32)
    if labeled.size == 0:
        labeled = labeled.reshape(0, unlabeled.shape[1])
    if labeled.ndim != 2 or labeled.shape[1] != unlabeled.shape[1]:
        raise InputError(f"labeled embeddings have shape {labeled.shape}, unlabeled {unlabeled.shape}: "
                         f"the dimensions differ")
    for name, x in (("unlabeled", unlabeled), ("labeled", labeled)):
        if not np.isfinite(x).all():
            raise InputError(f"{name} embeddings contain NaN or infinite values")
    if not 0 <= budget <= len(unlabeled):
        raise InputError(f"budget {budget} must be between 0 and the {len(unlabeled)} unlabeled points")
    return unlabeled, labeled


def nearest_sq_dists(points: np.ndarray, centers: np.ndarray, k: int = 8, chunk: int = 4096,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Exact (float64) squared distance of each point to its nearest center; +inf with no centers.

    The float32 k-NN search runs on FAISS (its GPU index when faiss-gpu sees a GPU), or in torch when
    ``device`` is a CUDA device and FAISS has no GPU; the exact re-checks are the same for both.
    """
    n, d = points.shape
    if len(centers) == 0:
        return np.full(n, np.inf)
    k = min(k, len(centers))
    search = _knn_search(centers, torch.device(device))
    center_norms = np.sqrt((centers.astype(np.float64) ** 2).sum(1))
    out = np.empty(n)
    for start in range(0, n, chunk):
        block = points[start:start + chunk]
        approx, nbrs = search(block, k)                       # (m, k) float32, ascending
        norms = np.sqrt((block.astype(np.float64) ** 2).sum(1))
        eps = _gemm_error_bound(d, norms, center_norms.max())
        # The true nearest has approx <= approx_min + 2 eps: measure exactly only those neighbours.
        close = approx <= approx[:, :1] + 2 * eps[:, None]
        rows, cols = np.nonzero(close)
        best = np.full(len(block), np.inf)
        np.minimum.at(best, rows, exact_sq_dists(block[rows], centers[nbrs[rows, cols]]))
        # If even the k-th neighbour is that close, a closer center may be missing from the list:
        # recompute those rows against every center.
        for i in np.flatnonzero(close[:, -1] & (k < len(centers))):
            best[i] = _min_sq_dist_to_all(block[i], centers, chunk)
        out[start:start + len(block)] = best
    return out


def _knn_search(centers: np.ndarray, device: torch.device):
    """``search(block, k) -> (float32 squared distances, indices)``, each (m, k) ascending, over
    ``centers``: a FAISS flat index, or torch on ``device`` when that is a GPU FAISS cannot use."""
    if device.type == "cuda" and not faiss_gpus():
        on_device = torch.from_numpy(centers).to(device)
        center_norms = (on_device * on_device).sum(1)

        def torch_search(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            b = torch.from_numpy(block).to(device)
            with full_float32_matmul():    # same arithmetic as FAISS: norms + float32 GEMM, so same bound
                approx = (b * b).sum(1, keepdim=True) + center_norms - 2 * (b @ on_device.T)
            dists, nbrs = torch.topk(approx, k, dim=1, largest=False)
            return dists.cpu().numpy(), nbrs.cpu().numpy()

        return torch_search
    return flat_index(centers).search


def _min_sq_dist_to_all(point: np.ndarray, centers: np.ndarray, chunk: int) -> float:
    return min(exact_sq_dists(centers[s:s + chunk], point).min() for s in range(0, len(centers), chunk))


def k_center_greedy(unlabeled: np.ndarray, labeled: np.ndarray, budget: int,
                    ids: np.ndarray | None = None, chunk: int = 4096, device: str | None = None) -> np.ndarray:
    """Indices into ``unlabeled`` of the ``budget`` greedy k-center picks, in pick order."""
    return k_center_greedy_with_distances(unlabeled, labeled, budget, ids, chunk, device=device)[0]


def k_center_greedy_with_distances(unlabeled: np.ndarray, labeled: np.ndarray, budget: int,
                                   ids: np.ndarray | None = None, chunk: int = 4096, speculate: int = 16,
                                   device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pick indices, each pick's distance to its nearest center when it was picked), in pick order.

    ``unlabeled`` (N, d) and ``labeled`` (L, d) are embeddings (L may be 0); ties between equally far
    points go to the smallest id (``ids``, default: the row index). Memory is O(N d) for the input plus
    O(N) working vectors and O(chunk L) for the labeled search; ``chunk`` does not change the picks.

    ``speculate``: each pass over the embeddings computes the dot products of the ``speculate`` farthest
    points at once, the likely next picks; a later step whose pick is among them needs no pass of its
    own. This changes only the work done, never the picks.

    ``device``: where the greedy steps run (torch); default a GPU when torch sees one, else the CPU.
    """
    unlabeled, labeled = _check(unlabeled, labeled, budget)
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable") if ids is not None else None
    x = unlabeled[order] if order is not None else unlabeled    # row order == id order: argmax ties
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    min_dist = nearest_sq_dists(x, labeled, chunk=chunk, device=device)   # (N,) float64, exact
    with full_float32_matmul():
        picks, radii = _greedy(torch.from_numpy(x).to(device), torch.from_numpy(min_dist).to(device), budget,
                               speculate, chunk)
    return (order[picks] if order is not None else picks), radii


def _greedy(x: torch.Tensor, min_dist: torch.Tensor, budget: int, speculate: int, chunk: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The greedy steps on ``x`` (N, d) float32 from the exact ``min_dist`` (N,) float64, on x's device."""
    n, d = x.shape
    norms_sq = torch.cat([_exact_norms_sq(x[s:s + chunk]) for s in range(0, n, chunk)])   # (N,) float64
    # Row i can only get closer to center c if fl32(x_i . c) >= floor_i + (1 - 2k) |c|^2 / 2, where
    # k = (d + 4) 2^-22 over-covers the float32 dot-product error (gamma_d |x||c|) eight times.
    k = (d + 4) * 2.0 ** -22
    floor = ((1 - 2 * k) * norms_sq - min_dist) / 2
    picks = np.empty(budget, dtype=np.int64)
    radii = np.empty(budget)
    width = max(1, min(speculate, n))
    speculated = torch.empty((n, width), dtype=torch.float32, device=x.device)
    column: dict[int, int] = {}                                # row -> its column of dot products
    for step in range(budget):
        best = int(torch.argmax(min_dist))                     # first maximum = smallest id
        picks[step], radii[step] = best, float(min_dist[best]) ** 0.5
        if best not in column:                                 # one pass over x: (N, d) @ (d, m)
            guesses = [best, *_farthest(min_dist, width, besides=best)]
            torch.mm(x, x[guesses].T, out=speculated)
            column = {g: j for j, g in enumerate(guesses)}
        dots = speculated[:, column[best]]                     # (N,) float32 dot products with center
        rows = torch.nonzero(dots >= floor + (1 - 2 * k) * float(norms_sq[best]) / 2).squeeze(1)
        closer = torch.minimum(min_dist[rows], _exact_sq_dists_torch(x[rows], x[best]))
        min_dist[rows] = closer
        floor[rows] = ((1 - 2 * k) * norms_sq[rows] - closer) / 2
        min_dist[best], floor[best] = -math.inf, math.inf      # never picked twice (distance is 0)
    return picks, radii


def _exact_norms_sq(x: torch.Tensor) -> torch.Tensor:
    x64 = x.double()
    return (x64 * x64).sum(1)


def _exact_sq_dists_torch(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``exact_sq_dists`` on torch tensors: float64 sum((x - c) ** 2)."""
    diff = points.double() - center.double()
    return (diff * diff).sum(1)


@contextlib.contextmanager
def full_float32_matmul():
    """The error bounds assume float32 products; TF32 (allowed on some GPUs) would break them."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def _farthest(min_dist: torch.Tensor, m: int, besides: int) -> list[int]:
    """Up to m - 1 other rows among the m farthest: the likely next picks (any choice is correct)."""
    m = min(m, len(min_dist))
    return [i for i in torch.topk(min_dist, m).indices.tolist() if i != besides][:m - 1]


def coverage_radius(points: np.ndarray, centers: np.ndarray) -> float:
    """max over points of the Euclidean distance to the nearest center: what k-center minimises."""
    points, centers = (np.ascontiguousarray(a, dtype=np.float32) for a in (points, centers))
    return float(np.sqrt(nearest_sq_dists(points, centers).max())) if len(points) else 0.0
