"""k-center greedy speed: the widely used sklearn sampler, a plain chunked torch loop, and ours.

    .venv/bin/python benchmarks/kcenter_speed.py --n 50000 --labeled 5000 --dim 512 --budget 2500

Seeded Gaussian features. Every implementation's picks are compared with ours; a mismatch is printed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vaal_dist.coreset.kcenter import k_center_greedy, nearest_sq_dists


def sklearn_greedy(unlabeled, labeled, budget):
    """The common public sampler (coreset code of the VAAL/TA-VAAL/Sener repos): an N x L matrix up
    front, then one ``pairwise_distances`` call per pick. Ties go to the first index (numpy argmax)."""
    from sklearn.metrics import pairwise_distances

    min_dist = pairwise_distances(unlabeled, labeled).min(axis=1)
    picks = []
    for _ in range(budget):
        best = int(np.argmax(min_dist))
        picks.append(best)
        min_dist = np.minimum(min_dist, pairwise_distances(unlabeled, unlabeled[best:best + 1]).ravel())
    return np.array(picks)


def torch_chunked_greedy(unlabeled, labeled, budget, chunk=8192):
    """A plain torch loop: chunked min-distance init, then per pick a chunked distance update."""
    x, l = torch.from_numpy(unlabeled), torch.from_numpy(labeled)
    min_dist = torch.cat([torch.cdist(x[s:s + chunk], l).min(1).values for s in range(0, len(x), chunk)])
    picks = []
    for _ in range(budget):
        best = int(torch.argmax(min_dist))
        picks.append(best)
        for s in range(0, len(x), chunk):
            new = torch.cdist(x[s:s + chunk], x[best:best + 1]).squeeze(1)
            torch.minimum(min_dist[s:s + chunk], new, out=min_dist[s:s + chunk])
    return np.array(picks)


def pruning_fraction(unlabeled, labeled, steps):
    """Share of (point, new center) pairs that triangle-inequality pruning could skip during the first
    ``steps`` greedy steps: those with d(current center, new center) >= 2 d(point, current center)."""
    import faiss

    index = faiss.IndexFlatL2(unlabeled.shape[1])
    index.add(labeled)
    dist2, nearest = index.search(unlabeled, 1)
    radius, nearest = np.sqrt(np.maximum(dist2[:, 0], 0)), nearest[:, 0]
    centers = list(labeled)
    prunable = 0
    for _ in range(steps):
        c = unlabeled[int(np.argmax(radius))]
        to_centers = np.sqrt(((np.asarray(centers) - c) ** 2).sum(1))       # (L + t,)
        prunable += int((to_centers[nearest] >= 2 * radius).sum())
        new = np.sqrt(((unlabeled - c) ** 2).sum(1))
        closer = new < radius
        radius[closer], nearest[closer] = new[closer], len(centers)
        centers.append(c)
    return prunable / (steps * len(unlabeled))


def problem_parser(doc: str) -> argparse.ArgumentParser:
    """The benchmark problem's size arguments (issue 4's setting by default)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--labeled", type=int, default=5000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--budget", type=int, default=2500)
    return p


def gaussian_problem(args) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (unlabeled (n, dim), labeled (labeled, dim)) float32 Gaussian features."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(args.n, args.dim)).astype(np.float32),
            rng.normal(size=(args.labeled, args.dim)).astype(np.float32))


def main() -> None:
    p = problem_parser(__doc__)
    p.add_argument("--skip", nargs="*", default=[], choices=["sklearn", "torch"])
    p.add_argument("--device", help="where our greedy runs (default: a GPU when torch sees one)")
    p.add_argument("--time-search", action="store_true", help="also time the labeled search alone")
    p.add_argument("--pruning-steps", type=int, default=0,
                   help="also report how much triangle-inequality pruning could skip in this many steps")
    args = p.parse_args()
    unlabeled, labeled = gaussian_problem(args)

    if args.time_search:
        start = time.perf_counter()
        nearest_sq_dists(unlabeled, labeled, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        print(f"| of which: exact distance to the nearest labeled point | {time.perf_counter() - start:.1f} s | |")
    start = time.perf_counter()
    ours = k_center_greedy(unlabeled, labeled, args.budget, device=args.device)
    print(f"| vaal_dist k_center_greedy | {time.perf_counter() - start:.1f} s | reference |", flush=True)
    for name, fn in (("torch", torch_chunked_greedy), ("sklearn", sklearn_greedy)):
        if name in args.skip:
            continue
        start = time.perf_counter()
        picks = fn(unlabeled, labeled, args.budget)
        same = "same picks" if np.array_equal(picks, ours) else \
            f"differs from pick {int(np.argmax(picks != ours))}"
        print(f"| {name} | {time.perf_counter() - start:.1f} s | {same} |", flush=True)
    if args.pruning_steps:
        share = pruning_fraction(unlabeled, labeled, args.pruning_steps)
        print(f"triangle-inequality pruning could skip {share:.4%} of point updates in the first "
              f"{args.pruning_steps} steps")


if __name__ == "__main__":
    main()
