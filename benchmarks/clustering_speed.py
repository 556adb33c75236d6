"""Cluster-Margin and TypiClust at pool scale, each beside the straightforward implementation.

    .venv/bin/python benchmarks/clustering_speed.py cluster --n 1000000 --dim 512 --exact-sizes 5000 10000 20000
    .venv/bin/python benchmarks/clustering_speed.py select --n 1000000 --budget 50000
    .venv/bin/python benchmarks/clustering_speed.py typiclust --n 1000000 --dim 32 --budget 10000 --authors-n 1000000
    .venv/bin/python benchmarks/clustering_speed.py ari --n 2000

Seeded Gaussian blobs (100 blob centres N(0, 1), points N(centre, 1) per coordinate). Every command
prints the load average before and after and the float32 GEMM rate measured at the start: the machine is
shared, and the k-means passes are GEMM-bound. ``ari``: how far Cluster-Margin's clusters (k-means cells,
then HAC over them) are from exact average-linkage HAC on all points (scipy), and what the cell
dissimilarity and the size weights change.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np


def blobs(n: int, dim: int, centres: int = 100, spread: float = 1.0, seed: int = 0) -> np.ndarray:
    """(n, dim) float32, generated a block at a time (no float64 copy of the whole)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x[s:s + m] = means[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, dim), np.float32)
    return x


def pool_ids(n: int) -> np.ndarray:
    return np.array([f"img-{i:08d}" for i in range(n)])


def machine() -> str:
    a = np.ones((4096, 512), np.float32)
    b = np.ones((512, 4096), np.float32)
    a @ b
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    rate = 3 * 2 * 4096 * 512 * 4096 / (time.perf_counter() - start) / 1e9
    return f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}, float32 GEMM {rate:.0f} GFLOP/s"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_cluster(args) -> None:
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    from vaal_dist.clustering.cluster_margin import cluster_pool, default_centroids

    x, ids = blobs(args.n, args.dim), pool_ids(args.n)
    k = default_centroids(args.n)
    print(f"| vaal_dist cluster_pool, {args.n:,} x {args.dim}, K = {k} cells -> {k // 4} clusters | ", end="",
          flush=True)
    _, seconds = timed(cluster_pool, x, ids)
    print(f"{seconds:.1f} s | k-means {kmeans_tflop(args.n, k, args.dim):.1f} TFLOP |", flush=True)
    for m in args.exact_sizes:
        sub = x[:m]
        n_clusters = default_centroids(m) // 4
        exact, exact_s = timed(AgglomerativeClustering(n_clusters=n_clusters, linkage="average").fit_predict, sub)
        ours, ours_s = timed(cluster_pool, sub, ids[:m])
        extrapolated = exact_s * (args.n / m) ** 2 / 3600
        print(f"| sklearn AgglomerativeClustering(average), {m:,} x {args.dim}, {n_clusters} clusters | "
              f"{exact_s:.1f} s (distance matrix {m * (m - 1) / 2 * 8 / 2**30:.1f} GiB; x (N/m)^2 at N = "
              f"{args.n:,}: {extrapolated:.0f} h, {args.n * (args.n - 1) / 2 * 8 / 2**40:.1f} TiB) | "
              f"ours on the same points {ours_s:.1f} s, ARI {adjusted_rand_score(exact, ours.cluster):.3f} |",
              flush=True)


def plain_round_robin(scores, clusters, ids, budget, seed=0):
    """The straightforward Cluster-Margin selection (as public re-implementations write it): sort all
    points, take the k_m = 10 b most uncertain, a list per cluster, visit clusters smallest first."""
    from vaal_dist.scoring.ids import id_hash

    order = np.lexsort((ids, -scores))[:10 * budget]
    members: dict[int, list[int]] = {}
    for i in order.tolist():
        members.setdefault(int(clusters[i]), []).append(i)
    for c, rows in members.items():
        keys = id_hash(ids[rows], seed)
        members[c] = sorted(rows, key=lambda r, k=dict(zip(rows, keys.tolist())): (k[r], ids[r]))
    visit = sorted(members, key=lambda c: (len(members[c]), c))
    picks, turn = [], 0
    while len(picks) < budget:
        for c in visit:
            if turn < len(members[c]) and len(picks) < budget:
                picks.append(members[c][turn])
        turn += 1
    return np.array(picks)


def bench_select(args) -> None:
    from vaal_dist.clustering.cluster_margin import select

    rng = np.random.default_rng(0)
    ids = pool_ids(args.n)
    scores = rng.random(args.n).round(4)                    # rounded: ties at the k_m edge
    clusters = rng.integers(0, args.clusters, args.n)
    picks, ours_s = timed(select, scores, clusters, ids, args.budget)
    print(f"| vaal_dist select, {args.n:,} points, {args.clusters} clusters, b = {args.budget:,}, k_m = 10 b | "
          f"{ours_s:.1f} s | reference |", flush=True)
    plain, plain_s = timed(plain_round_robin, scores, clusters, ids, args.budget)
    same = "same picks, same order" if np.array_equal(plain, picks) else "DIFFERENT picks"
    print(f"| plain Python round-robin (full sort, dict of lists) | {plain_s:.1f} s | {same} |", flush=True)


def authors_typiclust(x, labeled, budget, seed=0, neighbours=20, min_size=5):
    """The authors' procedure (avihu111/TypiClust) without its 500-cluster cap: sklearn MiniBatchKMeans
    (batch 5000) into |L| + b clusters, then per cluster a FAISS flat k-NN and 1 / (mean squared
    distance + 1e-5) over its unlabeled points."""
    import faiss
    from sklearn.cluster import MiniBatchKMeans

    k = int(labeled.sum()) + budget
    assign = MiniBatchKMeans(n_clusters=k, batch_size=5000, random_state=seed).fit_predict(x)
    sizes, covered = np.bincount(assign, minlength=k), np.bincount(assign[labeled], minlength=k)
    order = [c for c in np.lexsort((-sizes, covered)) if sizes[c] > min_size]
    free = ~labeled
    picks, i = [], 0
    while len(picks) < budget:
        rows = np.flatnonzero((assign == order[i % len(order)]) & free)
        i += 1
        if len(rows) == 0:                  # an exhausted cluster: the authors' code fails here; skip it
            continue
        nn = min(neighbours, len(rows) // 2)     # 0 for a lone point: the authors take it (argmax of NaN)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[rows])
        dist, _ = index.search(x[rows], nn + 1)
        pick = rows[np.argmax(1 / (dist[:, 1:].mean(1) + 1e-5))] if nn else rows[0]
        picks.append(pick)
        free[pick] = False
    return np.array(picks)


def kmeans_tflop(n: int, k: int, dim: int) -> float:
    """Lloyd's 10 iterations on min(N, 2^17) points plus the assignment of all N: 2 N K d flops a pass."""
    return (n + 10 * min(n, 2 ** 17)) * 2 * k * dim / 1e12


def bench_typiclust(args) -> None:
    """typiclust.select's three steps timed one by one (the same calls it makes), so a run cut short
    still reports the finished ones."""
    from vaal_dist.clustering import typiclust
    from vaal_dist.clustering.kmeans import nearest_centroids, train_centroids

    x, ids = blobs(args.n, args.dim), pool_ids(args.n)
    labeled = np.zeros(args.n, bool)
    labeled[np.random.default_rng(1).choice(args.n, args.labeled, replace=False)] = True
    k = args.labeled + args.budget
    print(f"| vaal_dist typiclust, {args.n:,} x {args.dim}, |L| = {args.labeled:,}, b = {args.budget:,} "
          f"({k:,} clusters; k-means {kmeans_tflop(args.n, k, args.dim):.1f} TFLOP) | ", end="", flush=True)
    centroids, train_s = timed(train_centroids, x, k)
    print(f"train {train_s:.1f} s, ", end="", flush=True)
    assign, assign_s = timed(nearest_centroids, x, centroids)
    print(f"assign {assign_s:.1f} s, ", end="", flush=True)
    result, pick_s = timed(typiclust.select_in_clusters, x, ids, labeled, assign, args.budget)
    print(f"typicality and picks {pick_s:.1f} s: **{train_s + assign_s + pick_s:.1f} s** | "
          f"{len(set(result.cluster.tolist())):,} clusters picked from |", flush=True)
    if args.authors_n:
        m = args.authors_n
        _, authors_s = timed(authors_typiclust, x[:m], labeled[:m], args.budget)
        print(f"| authors' procedure (MiniBatchKMeans + per-cluster FAISS), {m:,} x {args.dim} | "
              f"{authors_s:.1f} s | |", flush=True)


def bench_ari(args) -> None:
    """Exact average-linkage HAC on all points (scipy) against cells + HAC, cut at the same number of
    clusters; our default (RMS cell distance, size-weighted) and its alternatives."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.metrics import adjusted_rand_score

    from vaal_dist.clustering.cluster_margin import cell_dissimilarities
    from vaal_dist.clustering.hac import average_linkage, cut
    from vaal_dist.clustering.kmeans import kmeans_cells

    n = args.n
    cell_counts = {"2 sqrt N": math.ceil(2 * math.sqrt(n)), "4 sqrt N": math.ceil(4 * math.sqrt(n)),
                   "N / 10": n // 10}
    print("| data | d | clusters | exact HAC's 3 largest | " + " | ".join(
        f"K = {name}: RMS weighted / RMS unweighted / centroid weighted" for name in cell_counts) + " |")
    for dim in (32, 512):
        for name, x in (("10 blobs, spread 0.5", blobs(n, dim, 10, 0.5, seed=1)),
                        ("10 blobs, spread 1.5", blobs(n, dim, 10, 1.5, seed=1)),
                        ("one Gaussian", np.random.default_rng(1).standard_normal((n, dim), np.float32))):
            tree = linkage(x.astype(np.float64), "average")
            for n_clusters in (10, 40):
                exact = fcluster(tree, n_clusters, "maxclust")
                cells_row = []
                for k in cell_counts.values():
                    cells = kmeans_cells(x, k)
                    used = np.flatnonzero(cells.sizes)
                    rms = cell_dissimilarities(cells.means[used], cells.spreads[used])
                    centroid = cell_dissimilarities(cells.means[used], np.zeros(len(used)))
                    scores = []
                    for dist, weights in ((rms, cells.sizes[used]), (rms, None), (centroid, cells.sizes[used])):
                        of_cell = np.zeros(k, np.int64)
                        of_cell[used] = cut(average_linkage(dist, weights), len(used), n_clusters)
                        scores.append(f"{adjusted_rand_score(exact, of_cell[cells.assign]):.2f}")
                    cells_row.append(" / ".join(scores))
                largest = ", ".join(str(s) for s in np.sort(np.bincount(exact))[::-1][:3])
                print(f"| {name} | {dim} | {n_clusters} | {largest} | " + " | ".join(cells_row) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cluster")
    c.add_argument("--n", type=int, default=1_000_000)
    c.add_argument("--dim", type=int, default=512)
    c.add_argument("--exact-sizes", type=int, nargs="*", default=[5000, 10000, 20000])
    s = sub.add_parser("select")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--budget", type=int, default=50_000)
    s.add_argument("--clusters", type=int, default=500)
    t = sub.add_parser("typiclust")
    t.add_argument("--n", type=int, default=1_000_000)
    t.add_argument("--dim", type=int, default=32)
    t.add_argument("--budget", type=int, default=10_000)
    t.add_argument("--labeled", type=int, default=0)
    t.add_argument("--authors-n", type=int, default=0, help="also run the authors' procedure on this many points")
    a = sub.add_parser("ari")
    a.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    print(f"before: {machine()}", flush=True)
    benches = {"cluster": bench_cluster, "select": bench_select, "typiclust": bench_typiclust, "ari": bench_ari}
    benches[args.command](args)
    print(f"after: {machine()}", flush=True)


if __name__ == "__main__":
    main()
