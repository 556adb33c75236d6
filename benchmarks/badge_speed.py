"""BADGE seeding speed: ours (factorised passes, exact float64 decisions) against the straightforward
implementation on the materialised N x (C*D) gradient embedding, on the same data and draws.

    .venv/bin/python benchmarks/badge_speed.py --n 100000 --classes 10 --dim 512 --budget 2000 --plain-steps 20

Seeded synthetic pool: softmax probabilities of random logits (per-row temperature) and ReLU features.
The baselines materialise the embedding as float32 (as the public BADGE code does) and run
``--plain-steps`` steps of the same seeded D^2 draw (module docstring of vaal_dist/coreset/badge.py);
their time for the whole budget is extrapolated from those steps (every plain step costs the same: one
pass over the N x C*D matrix). Their picks are compared with ours over the steps they ran.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from vaal_dist.coreset import badge
from vaal_dist.coreset.kcenter import exact_sq_dists


def synthetic_pool(n: int, classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a (n, classes), h (n, dim)) float32: gradient factors of softmax outputs and ReLU features."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=rng.uniform(0.5, 4, size=(n, 1)), size=(n, classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    a = badge.gradient_factors(p / p.sum(1, keepdims=True))
    h = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        block = rng.normal(size=(min(8192, n - start), dim))
        h[start:start + len(block)] = np.maximum(block, 0)
    return a, h


def materialise(a: np.ndarray, h: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The N x (C*D) float32 gradient embedding (2 GB at 100k x 10 x 512)."""
    g = np.empty((len(a), a.shape[1] * h.shape[1]), np.float32)
    for start in range(0, len(a), chunk):
        g[start:start + chunk] = badge.embedding_rows(a[start:start + chunk], h[start:start + chunk])
    return g


def plain_exact(g: np.ndarray, steps: int, seed: int, chunk: int = 1024) -> np.ndarray:
    """Plain numpy k-means++ on the matrix: the float64 D^2 of the reference, one chunked pass per step."""
    def sq_dists(center):
        return np.concatenate([exact_sq_dists(g[s:s + chunk], g[center]) for s in range(0, len(g), chunk)])

    zero = np.zeros(g.shape[1], np.float32)
    first = int(np.argmax(np.concatenate([exact_sq_dists(g[s:s + chunk], zero) for s in range(0, len(g), chunk)])))
    return _seeding(sq_dists, first, len(g), steps, seed)


def public_code_style(g: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """As the public BADGE code: sklearn ``pairwise_distances`` from the matrix to each new center, the
    first center by ``np.linalg.norm``; D^2 = distance squared (and the same draw rule as ours)."""
    from sklearn.metrics import pairwise_distances

    def sq_dists(center):
        return pairwise_distances(g, g[center:center + 1]).ravel().astype(np.float64) ** 2

    return _seeding(sq_dists, int(np.argmax(np.linalg.norm(g, axis=1))), len(g), steps, seed)


def _seeding(sq_dists, first: int, n: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d2, picks = np.full(n, np.inf), [first]
    while len(picks) < steps:
        d2 = np.minimum(d2, sq_dists(picks[-1]))
        running = np.cumsum(d2)
        picks.append(int(np.searchsorted(running, rng.random() * running[-1], side="right")))
    return np.array(picks)


def count_exact_rows():
    """Wrap the exact recomputation to count the rows it materialises and the time it takes."""
    stats = {"rows": 0, "seconds": 0.0, "calls": 0}
    inner = badge.exact_embedding_sq_dists

    def counted(a, h, rows, center, chunk=64):
        start = time.perf_counter()
        out = inner(a, h, rows, center, chunk)
        stats["rows"] += len(rows)
        stats["calls"] += 1
        stats["seconds"] += time.perf_counter() - start
        return out

    badge.exact_embedding_sq_dists = counted
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-steps", type=int, default=20, help="steps the baselines run (0: none)")
    p.add_argument("--skip", nargs="*", default=[], choices=["exact", "sklearn"])
    p.add_argument("--device", help="where our passes run (default: a GPU when torch sees one)")
    p.add_argument("--chunk", type=int, default=64)
    args = p.parse_args()
    a, h = synthetic_pool(args.n, args.classes, args.dim, args.seed)

    stats = count_exact_rows()
    start = time.perf_counter()
    ours = badge.badge_seeding(a, h, args.budget, args.seed, chunk=args.chunk, device=args.device)
    ours_s = time.perf_counter() - start
    print(f"| vaal_dist badge_seeding | {ours_s:.1f} s | reference |")
    print(f"  exact rows materialised: {stats['rows']} ({stats['rows'] / args.n:.2f} x N) in {stats['calls']} "
          f"steps, {stats['seconds']:.1f} s of the total", flush=True)
    if not args.plain_steps:
        return
    start = time.perf_counter()
    g = materialise(a, h)
    build_s = time.perf_counter() - start
    print(f"| materialise N x C*D float32 ({g.nbytes / 2**30:.1f} GiB) | {build_s:.1f} s | |", flush=True)
    for name, fn in (("exact", plain_exact), ("sklearn", public_code_style)):
        if name in args.skip:
            continue
        start = time.perf_counter()
        picks = fn(g, args.plain_steps, args.seed)
        seconds = time.perf_counter() - start
        whole = build_s + seconds * args.budget / args.plain_steps   # one pass per pick
        same = "same picks" if np.array_equal(picks, ours[:len(picks)]) else \
            f"differs from pick {int(np.argmax(picks != ours[:len(picks)]))}"
        print(f"| {name}: {args.plain_steps} steps | {seconds:.1f} s | {same} | whole budget extrapolated: "
              f"{whole:.0f} s = {whole / ours_s:.0f}x ours |", flush=True)


if __name__ == "__main__":
    main()
