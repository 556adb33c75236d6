"""Cluster-Margin and TypiClust at pool scale, each beside the straightforward implementation.

    .venv/bin/python benchmarks/clustering_speed.py cluster --n 1000000 --dim 512 --exact-sizes 5000 10000 20000
    .venv/bin/python benchmarks/clustering_speed.py select --n 1000000 --budget 50000
    .venv/bin/python benchmarks/clustering_speed.py typiclust --n 1000000 --dim 512 --budget 10000 --plain-sizes 20000 50000
    .venv/bin/python benchmarks/clustering_speed.py typiclust --n 1000000 --dim 512 --budget 10000 --max-clusters 500
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
import resource
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


class Timing:
    """Wall seconds, this process's CPU seconds (all its threads) and the 1-minute load average around a call."""

    def __init__(self, wall: float, cpu: float, load: tuple[float, float]):
        self.wall, self.cpu, self.load = wall, cpu, load

    def __str__(self) -> str:
        return f"{self.wall:.1f} s ({self.cpu:.1f} CPU s, load {self.load[0]:.1f}-{self.load[1]:.1f})"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args, **kwargs) -> tuple[object, Timing]:
    load, cpu, start = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, Timing(time.perf_counter() - start, cpu_seconds() - cpu, (load, os.getloadavg()[0]))


def bench_cluster(args) -> None:
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    from vaal_dist.clustering.cluster_margin import cluster_pool, default_centroids

    x, ids = blobs(args.n, args.dim), pool_ids(args.n)
    k = default_centroids(args.n)
    print(f"| vaal_dist cluster_pool, {args.n:,} x {args.dim}, K = {k} cells -> {k // 4} clusters | ", end="",
          flush=True)
    _, ours = timed(cluster_pool, x, ids)
    print(f"{ours} | k-means {kmeans_tflop(args.n, k, args.dim):.1f} TFLOP |", flush=True)
    for m in args.exact_sizes:
        sub = x[:m]
        n_clusters = default_centroids(m) // 4
        exact, exact_t = timed(AgglomerativeClustering(n_clusters=n_clusters, linkage="average").fit_predict, sub)
        small, small_t = timed(cluster_pool, sub, ids[:m])
        scale = (args.n / m) ** 2
        print(f"| sklearn AgglomerativeClustering(average), {m:,} x {args.dim}, {n_clusters} clusters | "
              f"{exact_t} (distance matrix {m * (m - 1) / 2 * 8 / 2**30:.1f} GiB); x (N/m)^2 = {scale:,.0f} at "
              f"N = {args.n:,}: extrapolated {exact_t.wall * scale / 3600:,.0f} h wall, "
              f"{exact_t.cpu * scale / 3600:,.0f} CPU h, {args.n * (args.n - 1) / 2 * 8 / 2**40:.1f} TiB | "
              f"ours on the same points {small_t}, ARI {adjusted_rand_score(exact, small.cluster):.3f} |",
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
    from vaal_dist.clustering.cluster_margin import round_robin_picks

    rng = np.random.default_rng(0)
    ids = pool_ids(args.n)
    scores = rng.random(args.n).round(4)                    # rounded: ties at the k_m edge
    clusters = rng.integers(0, args.clusters, args.n)
    picks, ours = timed(round_robin_picks, scores, clusters, ids, args.budget)
    print(f"| vaal_dist select, {args.n:,} points, {args.clusters} clusters, b = {args.budget:,}, k_m = 10 b | "
          f"{ours} | reference |", flush=True)
    plain, plain_t = timed(plain_round_robin, scores, clusters, ids, args.budget)
    same = "same picks, same order" if np.array_equal(plain, picks) else "DIFFERENT picks"
    print(f"| plain Python round-robin (full sort, dict of lists) | {plain_t} | {same} |", flush=True)


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


def plain_typiclust(x, budget, neighbours=20, min_size=5, seed=0):
    """The straightforward TypiClust with nothing labeled: sklearn KMeans (one Lloyd run to convergence) into
    b clusters, then per cluster, largest first, sklearn NearestNeighbors and the point of least mean
    Euclidean distance to its K = min(20, n // 2) nearest. Returns (assign, picks, kmeans Timing, k-NN Timing)."""
    from sklearn.cluster import KMeans

    assign, kmeans_t = timed(KMeans(n_clusters=budget, n_init=1, random_state=seed).fit_predict, x)
    picks, knn_t = timed(plain_typical_picks, x, assign, budget, neighbours, min_size)
    return assign, picks, kmeans_t, knn_t


def plain_typical_picks(x, assign, budget, neighbours, min_size):
    from sklearn.neighbors import NearestNeighbors

    sizes = np.bincount(assign, minlength=budget)
    picks = []
    for c in np.lexsort((np.arange(budget), -sizes)):
        rows = np.flatnonzero(assign == c)
        if len(rows) <= min_size:
            continue
        k = min(neighbours, len(rows) // 2)
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x[rows]).kneighbors(x[rows])
        picks.append(rows[np.argmin(dist[:, 1:].mean(1))])
    return np.array(picks)


def bench_typiclust(args) -> None:
    """typiclust.typiclust_picks's three steps timed one by one (the same calls it makes), so a run cut short
    still reports the finished ones; then the straightforward implementation at smaller sizes."""
    from vaal_dist.clustering import typiclust
    from vaal_dist.clustering.kmeans import nearest_centroids, train_centroids

    x, ids = blobs(args.n, args.dim), pool_ids(args.n)
    labeled = np.zeros(args.n, bool)
    labeled[np.random.default_rng(1).choice(args.n, args.labeled, replace=False)] = True
    k = min(args.labeled + args.budget, args.max_clusters or args.n)
    if not args.skip_ours:
        print(f"| vaal_dist typiclust, {args.n:,} x {args.dim}, |L| = {args.labeled:,}, b = {args.budget:,} "
              f"({k:,} clusters; k-means {kmeans_tflop(args.n, k, args.dim):.1f} TFLOP) | ", end="", flush=True)
        centroids, train_t = timed(train_centroids, x, k)
        print(f"train {train_t}, ", end="", flush=True)
        assign, assign_t = timed(nearest_centroids, x, centroids)
        print(f"assign {assign_t}, ", end="", flush=True)
        result, pick_t = timed(typiclust.typiclust_picks_in_clusters, x, ids, labeled, assign, args.budget)
        print(f"typicality and picks {pick_t}: **{train_t.wall + assign_t.wall + pick_t.wall:.1f} s, "
              f"{train_t.cpu + assign_t.cpu + pick_t.cpu:.0f} CPU s** | "
              f"{len(set(result.cluster.tolist())):,} clusters picked from |", flush=True)
    for m in args.plain_sizes:
        b = max(1, round(args.budget * m / args.n))        # the same ~N / b points a cluster
        sub, none = x[:m], np.zeros(m, bool)
        assign, plain, kmeans_t, knn_t = plain_typiclust(sub, b)
        ours = typiclust.typiclust_picks_in_clusters(sub, ids[:m], none, assign, len(plain)).picks
        same = "same picks, same order" if np.array_equal(ours, plain) else (
            f"{len(set(ours.tolist()) & set(plain.tolist()))} of {len(plain)} picks equal")
        print(f"| sklearn KMeans + NearestNeighbors, {m:,} x {args.dim}, b = {b:,} | KMeans {kmeans_t} -> "
              f"x (N/m)(b/b_m) = {args.n / m * args.budget / b:,.0f}: extrapolated {kmeans_t.wall * args.n / m * args.budget / b:,.0f} s; "
              f"k-NN and picks {knn_t} -> x N/m: {knn_t.wall * args.n / m:,.0f} s | given sklearn's clusters, "
              f"vaal_dist's picks: {same} |", flush=True)
    if args.authors_n:
        m = args.authors_n
        _, authors_t = timed(authors_typiclust, x[:m], labeled[:m], args.budget)
        print(f"| authors' procedure (MiniBatchKMeans + per-cluster FAISS), {m:,} x {args.dim} | "
              f"{authors_t} | |", flush=True)


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
    t.add_argument("--max-clusters", type=int, default=0, help="cap |L| + b clusters (the authors' code: 500)")
    t.add_argument("--authors-n", type=int, default=0, help="also run the authors' procedure on this many points")
    t.add_argument("--plain-sizes", type=int, nargs="*", default=[],
                   help="run sklearn KMeans + NearestNeighbors on the first m points, b scaled by m / N")
    t.add_argument("--skip-ours", action="store_true")
    a = sub.add_parser("ari")
    a.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    print(f"before: {machine()}", flush=True)
    benches = {"cluster": bench_cluster, "select": bench_select, "typiclust": bench_typiclust, "ari": bench_ari}
    benches[args.command](args)
    print(f"after: {machine()}", flush=True)


if __name__ == "__main__":
    main()
