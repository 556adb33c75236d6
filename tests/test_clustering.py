"""Cluster-Margin's clustering and round-robin selection, TypiClust's exact typicality and picks."""
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from vaal_dist.clustering import cluster_margin, typiclust
from vaal_dist.clustering.hac import average_linkage, cut
from vaal_dist.config import AcquisitionConfig
from vaal_dist.errors import InputError
from vaal_dist.pool import clusters as clusters_file
from vaal_dist.pool import shards, storage
from vaal_dist.scoring.ids import id_hash
from vaal_dist.strategies.typiclust import TypiClust


def same_partition(a, b) -> bool:
    """True when the two labelings group the points alike, whatever the cluster numbers."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def planted_blobs(n, d, k, seed=0, spread=0.1):
    """k blobs: centres N(0, 1) per coordinate, points N(centre, spread^2); at spread 0.1 a point lies
    about 0.1 sqrt(2d) from its blob-mates and sqrt(2d) from the others: ten times farther."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    x = rng.normal(size=(k, d))[truth] + spread * rng.normal(size=(n, d))
    return x.astype(np.float32), truth, np.array([f"p{i:05d}" for i in rng.permutation(n)])


# --- exact average-linkage HAC over weighted items ---

@pytest.mark.parametrize("seed", range(3))
def test_unit_weights_give_scipys_average_linkage(seed):
    x = np.random.default_rng(seed).normal(size=(150, 6))
    merges, scipy_tree = average_linkage(squareform(pdist(x))), linkage(pdist(x), "average")
    np.testing.assert_allclose(np.sort(merges[:, 2]), scipy_tree[:, 2], rtol=1e-12)
    for n in (1, 2, 7, 40, 150):
        assert same_partition(cut(merges, 150, n_clusters=n), fcluster(scipy_tree, n, "maxclust"))
    threshold = float(scipy_tree[74:76, 2].mean())         # between two heights: < and <= agree
    assert same_partition(cut(merges, 150, distance_threshold=threshold),
                          fcluster(scipy_tree, threshold, "distance"))


def textbook_weighted_average(dist, weights):
    """The greedy definition: merge the two clusters with the smallest weighted mean dissimilarity
    sum_{i in A, j in B} w_i w_j D_ij / (W_A W_B); returns the merge heights in order."""
    clusters, heights = [[i] for i in range(len(dist))], []
    while len(clusters) > 1:
        def link(a, b):
            return sum(weights[i] * weights[j] * dist[i, j] for i in a for j in b) / (
                sum(weights[i] for i in a) * sum(weights[j] for j in b))
        h, a, b = min((link(a, b), ia, ib) for ia, a in enumerate(clusters) for ib, b in enumerate(clusters) if ia < ib)
        heights.append(h)
        clusters = [c for i, c in enumerate(clusters) if i not in (a, b)] + [clusters[a] + clusters[b]]
    return np.array(heights)


def test_weights_make_merged_distances_means_over_all_pairs():
    rng = np.random.default_rng(4)
    dist = squareform(pdist(rng.normal(size=(25, 3))))
    weights = rng.integers(1, 50, 25).astype(float)
    merges = average_linkage(dist, weights)
    np.testing.assert_allclose(np.sort(merges[:, 2]), textbook_weighted_average(dist, weights), rtol=1e-12)
    # and the weights matter: the unweighted tree differs
    assert not np.allclose(np.sort(average_linkage(dist)[:, 2]), np.sort(merges[:, 2]))


def test_cut_takes_exactly_one_rule():
    merges = average_linkage(squareform(pdist(np.arange(5.0)[:, None])))
    with pytest.raises(InputError):
        cut(merges, 5)
    with pytest.raises(InputError):
        cut(merges, 5, n_clusters=2, distance_threshold=1.0)
    with pytest.raises(InputError):
        cut(merges, 5, n_clusters=6)
    assert list(cut(merges, 5, n_clusters=5)) == [0, 1, 2, 3, 4]      # numbered by smallest item


# --- Cluster-Margin's clustering ---

def test_planted_blobs_come_out_as_exact_hac_finds_them():
    x, truth, ids = planted_blobs(2000, 16, 6)
    clusters = cluster_margin.cluster_pool(x, ids, n_clusters=6)
    exact = fcluster(linkage(x.astype(np.float64), "average"), 6, "maxclust")
    assert same_partition(clusters.cluster, truth) and same_partition(exact, truth)
    assert clusters.cluster.dtype == np.int64 and set(clusters.cluster.tolist()) == set(range(6))


def test_a_distance_threshold_between_and_within_blobs_separates_them():
    # within a blob points are ~0.1 sqrt(32) = 0.57 apart, across blobs ~sqrt(32) = 5.7: cut at 3
    x, truth, ids = planted_blobs(1500, 16, 4)
    assert same_partition(cluster_margin.cluster_pool(x, ids, distance_threshold=3.0).cluster, truth)


def test_clustering_is_deterministic_and_fingerprinted():
    x, _, ids = planted_blobs(800, 8, 3, spread=1.0)
    first, again = (cluster_margin.cluster_pool(x, ids, n_clusters=5, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first.cluster, again.cluster)
    assert first.fingerprint == again.fingerprint
    moved = x.copy()
    moved[0, 0] += 1
    others = [cluster_margin.cluster_pool(moved, ids, n_clusters=5, seed=3),
              cluster_margin.cluster_pool(x, ids[::-1], n_clusters=5, seed=3),
              cluster_margin.cluster_pool(x, ids, n_clusters=4, seed=3)]
    assert len({first.fingerprint, *(o.fingerprint for o in others)}) == 4


def test_saved_clusters_load_only_for_the_same_inputs(tmp_path):
    x, _, ids = planted_blobs(300, 4, 3)
    clusters = cluster_margin.cluster_pool(x, ids, n_clusters=3)
    uri = str(tmp_path / "round-1" / "clusters.parquet")
    assert clusters_file.load_clusters(uri, clusters.fingerprint) is None          # nothing saved yet
    clusters_file.save_clusters(uri, clusters)
    loaded = clusters_file.load_clusters(uri, clusters.fingerprint)
    np.testing.assert_array_equal(loaded.ids, clusters.ids)
    np.testing.assert_array_equal(loaded.cluster, clusters.cluster)
    assert clusters_file.load_clusters(uri, "another fingerprint") is None
    np.testing.assert_array_equal(loaded.of(ids[[5, 0, 7]]), clusters.cluster[[5, 0, 7]])
    with pytest.raises(InputError):
        loaded.of(["not-in-the-pool"])


def test_saved_clusters_are_read_again_after_a_connection_reset(tmp_path, monkeypatch):
    """The cache is read through the shard opener's retries: a reset mid-body (an error that usually passes) is tried again."""
    x, _, ids = planted_blobs(300, 4, 3)
    clusters = cluster_margin.cluster_pool(x, ids, n_clusters=3)
    uri = str(tmp_path / "clusters.parquet")
    clusters_file.save_clusters(uri, clusters)
    open_shard, reads = shards.open_shard, []

    def reset_once(fs, path):
        reads.append(path)
        if len(reads) == 1:
            raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when "
                          "receiving data from the peer; Details: Recv failure: Connection reset by peer")
        return open_shard(fs, path)
    monkeypatch.setattr(shards, "open_shard", reset_once)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    loaded = clusters_file.load_clusters(uri, clusters.fingerprint)
    assert len(reads) == 2
    np.testing.assert_array_equal(loaded.cluster, clusters.cluster)


def test_cached_clustering_is_computed_once_per_input(tmp_path, monkeypatch):
    x, _, ids = planted_blobs(300, 4, 3)
    uri = str(tmp_path / "clusters.parquet")
    first = clusters_file.cached_cluster_pool(uri, x, ids, n_clusters=3)
    direct = cluster_margin.cluster_pool(x, ids, n_clusters=3)
    computed = []
    monkeypatch.setattr(clusters_file, "cluster", lambda *a: computed.append(a) or first)
    again = clusters_file.cached_cluster_pool(uri, x, ids, n_clusters=3)
    assert computed == [] and again.fingerprint == first.fingerprint == direct.fingerprint
    np.testing.assert_array_equal(again.cluster, direct.cluster)
    clusters_file.cached_cluster_pool(uri, x, ids, n_clusters=2)            # other settings: computed
    assert len(computed) == 1


def test_a_file_that_is_not_a_clustering_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "other.parquet")
    with pytest.raises(InputError):
        clusters_file.load_clusters(str(tmp_path / "other.parquet"))


def test_more_clusters_than_cells_is_refused():
    x, _, ids = planted_blobs(100, 4, 2)
    with pytest.raises(InputError, match="n_centroids"):
        cluster_margin.cluster_pool(x, ids, n_clusters=30, n_centroids=20)


# --- Cluster-Margin's round-robin selection ---

def hash_order(ids, seed=0):
    """ids in the seeded random order round_robin_picks uses inside a cluster."""
    ids = np.asarray(ids)
    return list(ids[np.lexsort((ids, id_hash(ids, seed)))])


def test_round_robin_visits_the_smallest_clusters_first():
    # clusters 7 (3 candidates), 4 (1), 9 (2): visits 4, 9, 7, then 9, 7, then 7
    ids = np.array(["a", "b", "c", "d", "e", "f"])
    clusters = np.array([7, 4, 9, 7, 9, 7])
    picks = cluster_margin.round_robin_picks(np.zeros(6), clusters, ids, budget=6)
    c7, c9 = hash_order(["a", "d", "f"]), hash_order(["c", "e"])
    assert list(ids[picks]) == ["b", c9[0], c7[0], c9[1], c7[1], c7[2]]
    np.testing.assert_array_equal(cluster_margin.round_robin_picks(np.zeros(6), clusters, ids, budget=4), picks[:4])


def test_clusters_of_equal_size_go_by_cluster_number():
    ids = np.array(["x", "y", "z", "w"])
    picks = cluster_margin.round_robin_picks(np.zeros(4), np.array([5, 2, 8, 2]), ids, budget=4)
    assert list(ids[picks[:2]]) == ["x", "z"]            # clusters 5 and 8 hold 1 each: 5 first
    assert set(ids[picks[2:]]) == {"y", "w"}


def test_only_the_k_m_most_uncertain_are_candidates():
    ids = np.array([f"i{i}" for i in range(10)])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.5, 0.5, 0.0])
    clusters = np.arange(10)                             # every candidate alone: all visited in round 1
    picks = cluster_margin.round_robin_picks(scores, clusters, ids, budget=3, candidates=5)
    # the five highest: 0.9, 0.8, 0.7, 0.6 and, of the tie at 0.5, the smaller id i7
    assert set(ids[picks]) <= {"i0", "i2", "i4", "i6", "i7"} and len(picks) == 3
    assert list(ids[picks]) == ["i0", "i2", "i4"]        # one each, clusters visited by number


def test_default_k_m_is_ten_times_the_budget():
    ids = np.array([f"i{i:03d}" for i in range(100)])
    scores = -np.arange(100.0)                           # i000 most uncertain
    picks = cluster_margin.round_robin_picks(scores, np.zeros(100, int), ids, budget=3)
    assert set(ids[picks]) <= set(ids[:30])


def test_picks_do_not_depend_on_the_input_order():
    rng = np.random.default_rng(0)
    ids = np.array([f"u{i:04d}" for i in range(2000)])
    scores, clusters = rng.random(2000).round(2), rng.integers(0, 30, 2000)    # rounding makes ties
    picks = ids[cluster_margin.round_robin_picks(scores, clusters, ids, budget=150, seed=5)]
    perm = rng.permutation(2000)
    again = ids[perm][cluster_margin.round_robin_picks(scores[perm], clusters[perm], ids[perm], budget=150, seed=5)]
    np.testing.assert_array_equal(picks, again)
    assert len(set(picks)) == 150


def test_cluster_margin_spreads_where_top_b_piles_into_one_cluster():
    x, truth, ids = planted_blobs(3000, 16, 5, seed=2)
    clusters = cluster_margin.cluster_pool(x, ids, n_clusters=5)
    assert same_partition(clusters.cluster, truth)
    rng = np.random.default_rng(0)
    scores = rng.random(3000)                            # [0, 1): certain
    blob0 = np.flatnonzero(truth == 0)
    scores[blob0[:150]] += 2                             # 150 very uncertain points in blob 0
    for blob in range(1, 5):
        scores[np.flatnonzero(truth == blob)[:10]] += 1  # 10 fairly uncertain ones in each other blob
    top_b = np.argsort(-scores)[:20]
    assert set(truth[top_b]) == {0}
    # k_m = 190 holds exactly the planted 150 + 4 x 10; round-robin: 4 rounds of one pick per blob
    picks = cluster_margin.round_robin_picks(scores, clusters.of(ids), ids, budget=20, candidates=190)
    assert np.bincount(truth[picks], minlength=5).tolist() == [4, 4, 4, 4, 4]
    assert scores[picks].min() >= 1


def test_bad_selection_inputs_are_refused():
    ids = np.array(["a", "b"])
    with pytest.raises(InputError):
        cluster_margin.round_robin_picks(np.zeros(2), np.zeros(2, int), ids, budget=3)
    with pytest.raises(InputError):
        cluster_margin.round_robin_picks(np.zeros(2), np.zeros(2, int), ids, budget=2, candidates=1)
    with pytest.raises(InputError):
        cluster_margin.round_robin_picks(np.array([0, np.nan]), np.zeros(2, int), ids, budget=1)
    with pytest.raises(InputError):
        cluster_margin.round_robin_picks(np.zeros(2), np.zeros(3, int), ids, budget=1)


# --- TypiClust ---

def brute_force_knn(x, k):
    """Every pair in float64 numpy, each point's k nearest others (squared), ascending."""
    x = x.astype(np.float64)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(sq, np.inf)
    return np.sort(sq, axis=1)[:, :k]


def float64_gemm_bound(x):
    """knn's documented error: (d + 6) 2^-53 (|a| + |b|)^2 on the points centred at their mean."""
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    return (x.shape[1] + 6) * 2.0 ** -53 * (2 * np.linalg.norm(centred, axis=1).max()) ** 2


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_knn_distances_are_exact_to_float64_rounding(k, offset):
    rng = np.random.default_rng(k)
    x = (rng.normal(size=(400, 24)) + offset).astype(np.float32)    # far from the origin too
    x[rng.choice(400, 30, replace=False)] = x[rng.choice(400, 30, replace=False)]   # exact duplicates
    bound = float64_gemm_bound(x)                                    # 6.5e-13 here
    sq, nbrs = typiclust.knn(x, k)
    np.testing.assert_allclose(sq, brute_force_knn(x, k), rtol=0, atol=bound)
    # the positions name points at those distances, never the point itself
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(((x64[nbrs] - x64[:, None, :]) ** 2).sum(-1), sq, rtol=0, atol=bound)
    assert not (nbrs == np.arange(len(x))[:, None]).any()
    queries = rng.choice(400, 37, replace=False)                  # some rows only: the same answers
    np.testing.assert_allclose(typiclust.knn(x, k, queries=queries)[0], sq[queries], rtol=0, atol=bound)


def test_rows_split_into_blocks_give_the_same_neighbours():
    # a square lattice: many exact ties (4 neighbours at 1, 4 at sqrt 2, ...); 8-row blocks
    grid = np.stack(np.meshgrid(np.arange(15), np.arange(15)), -1).reshape(-1, 2).astype(np.float32)
    small_blocks = typiclust.knn(grid, 6, chunk_bytes=8 * 8 * len(grid))[0]
    np.testing.assert_allclose(small_blocks, brute_force_knn(grid, 6), rtol=0, atol=float64_gemm_bound(grid))


def test_near_ties_below_float32_resolution_are_resolved():
    # the origin and 50 float32 points on the unit circle: every squared distance from the origin is 1
    # to within 1e-7, which float32 arithmetic cannot order (a float32 search names a point at
    # 0.99999996 where the nearest is at 0.99999995); float64 can
    angles = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    x = np.concatenate([[[0, 0]], np.stack([np.cos(angles), np.sin(angles)], 1)]).astype(np.float32)
    assert typiclust.knn(x, 1)[0][0, 0] == pytest.approx(brute_force_knn(x, 1)[0, 0], rel=1e-15)


def test_a_point_whose_neighbours_are_all_its_duplicates_is_infinitely_typical_and_ties_go_to_the_smallest_id():
    x = np.zeros((8, 2), np.float32)
    ids = np.array([f"d{i}" for i in (3, 1, 4, 0, 5, 2, 7, 6)])
    result = typiclust.typiclust_picks(x, ids, np.zeros(8, bool), budget=1, n_clusters=1)
    assert result.typicality.tolist() == [np.inf] and ids[result.picks].tolist() == ["d0"]


def planted_centre(seed=0, annulus=200):
    """A point at the origin with 24 points on a circle of radius 0.1 around it, 200 points in an annulus
    of radius 1 to 2, 10 outliers at radius 30. The origin's 20 nearest are all at 0.1; a circle point's
    are the origin and 19 circle points at chords 0.2 sin(pi j / 24), j = 1..9 twice and j = 10, a mean of
    0.119: the origin alone is the most typical."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = 0.1 * np.stack([np.cos(angles), np.sin(angles)], 1)
    r, a = rng.uniform(1, 2, annulus), rng.uniform(0, 2 * np.pi, annulus)
    annulus = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    outliers = 30 * np.stack([np.cos(angles[:10]), np.sin(angles[:10])], 1)
    x = np.concatenate([np.zeros((1, 2)), circle, annulus, outliers]).astype(np.float32)
    perm = rng.permutation(len(x))
    return x[perm], int(np.argmax(perm == 0)), np.array([f"t{i:03d}" for i in range(len(x))])


def test_picks_the_planted_centre_not_an_outlier():
    x, centre, ids = planted_centre()
    result = typiclust.typiclust_picks(x, ids, np.zeros(len(x), bool), budget=1, n_clusters=1)
    assert result.picks.tolist() == [centre]
    brute = 1 / np.sqrt(brute_force_knn(x, 20)).mean(1)
    assert result.typicality[0] == pytest.approx(brute.max(), rel=1e-12)


def test_a_labeled_centre_is_not_picked_again():
    x, centre, ids = planted_centre()
    labeled = np.zeros(len(x), bool)
    labeled[centre] = True
    result = typiclust.typiclust_picks(x, ids, labeled, budget=2, n_clusters=1)
    assert centre not in result.picks.tolist()
    # with the centre labeled, the circle is the densest: both picks on it (|p| = 0.1)
    np.testing.assert_allclose(np.linalg.norm(x[result.picks], axis=1), 0.1, rtol=1e-6)


def test_each_cluster_gives_its_centre_largest_uncovered_first():
    groups = [planted_centre(seed=s, annulus=a) for s, a in ((0, 100), (1, 200), (2, 150))]
    x = np.concatenate([g[0] + 100 * i for i, g in enumerate(groups)])      # 100 apart: separate
    sizes = [len(g[0]) for g in groups]
    starts = np.cumsum([0] + sizes)
    centres = [start + g[1] for start, g in zip(starts, groups)]
    ids = np.array([f"q{i:04d}" for i in range(len(x))])
    assign = np.repeat([0, 1, 2], sizes)
    labeled = np.zeros(len(x), bool)
    labeled[starts[1] + np.argmax(np.linalg.norm(groups[1][0], axis=1))] = True   # an outlier of group 1
    result = typiclust.typiclust_picks_in_clusters(x, ids, labeled, assign, budget=3)
    # uncovered first, largest first: group 2 (185 points), group 0 (135); then group 1 (235, covered)
    assert result.picks.tolist() == [centres[2], centres[0], centres[1]]
    assert result.cluster.tolist() == [2, 0, 1]


def textbook_typiclust(x, ids, labeled, assign, budget, neighbours=20, min_size=5):
    """The authors' loop with the paper's distance, brute force: visit the clusters of more than 5
    points by (labeled count, -size, number), round and round; each visit measures the cluster's
    remaining unlabeled points from scratch and takes the most typical, ties to the smallest id."""
    k_clusters = assign.max() + 1
    sizes, covered = np.bincount(assign, minlength=k_clusters), np.bincount(assign[labeled], minlength=k_clusters)
    order = [c for c in sorted(range(k_clusters), key=lambda c: (covered[c], -sizes[c], c)) if sizes[c] > min_size]
    free, picks = ~labeled.copy(), []
    while len(picks) < budget:
        for c in order:
            rows = np.flatnonzero((assign == c) & free)
            if not len(rows) or len(picks) == budget:
                continue
            k = min(neighbours, len(rows) // 2)
            t = 1 / np.sqrt(brute_force_knn(x[rows], k)).mean(1) if k else np.zeros(1)
            best = rows[t == t.max()]
            pick = best[np.argmin(ids[best])]
            picks.append(pick)
            free[pick] = False
    return np.array(picks)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_spare", [0, 3, typiclust.MAX_SPARE])
def test_revisited_clusters_give_the_textbook_picks(seed, max_spare, monkeypatch):
    # 4 clusters of 60, 45, 30 and 7 points, 3 labeled, budget 120: about 35 visits per cluster, each
    # after a removal that the incremental k-NN lists must follow (k falls from 20 once < 40 are left):
    # with no spare neighbours a row that held the pick is measured again, with 3 after every third such
    # pick, with the default (29 here) almost never
    monkeypatch.setattr(typiclust, "MAX_SPARE", max_spare)
    rng = np.random.default_rng(seed)
    assign = rng.permutation(np.repeat([0, 1, 2, 3], [60, 45, 30, 7]))
    x = (rng.normal(size=(142, 5)) + 4 * assign[:, None]).astype(np.float32)
    x[rng.choice(142, 10, replace=False)] = x[rng.choice(142, 10, replace=False)]     # duplicates: ties
    ids = np.array([f"r{i:03d}" for i in rng.permutation(142)])
    labeled = np.zeros(142, bool)
    labeled[rng.choice(142, 3, replace=False)] = True
    result = typiclust.typiclust_picks_in_clusters(x, ids, labeled, assign, budget=120)
    np.testing.assert_array_equal(result.picks, textbook_typiclust(x, ids, labeled, assign, 120))


def test_clusters_visited_largest_uncovered_first_small_ones_never():
    # sizes: c0 = 8 (1 labeled), c1 = 10, c2 = 5 (too small), c3 = 7, c4 = 9 (2 labeled)
    assign = np.repeat([0, 1, 2, 3, 4], [8, 10, 5, 7, 9])
    labeled = np.zeros(len(assign), bool)
    labeled[[0, 31, 32]] = True
    assert typiclust._visit_order(assign, labeled, 5, min_cluster_size=5).tolist() == [1, 3, 0, 4]


def test_typiclust_is_deterministic_under_a_seed():
    x, _, ids = planted_blobs(1500, 8, 6, seed=1, spread=0.5)
    labeled = np.zeros(1500, bool)
    labeled[:40] = True
    first, again = (typiclust.typiclust_picks(x, ids, labeled, budget=30, seed=7) for _ in range(2))
    np.testing.assert_array_equal(first.picks, again.picks)
    np.testing.assert_array_equal(first.typicality, again.typicality)
    assert not labeled[first.picks].any() and len(set(first.picks.tolist())) == 30
    assert len(set(first.cluster.tolist())) == 30        # 70 clusters, >= 30 uncovered: one pick each


@pytest.mark.parametrize("max_clusters, clusters", [(None, 30), (5, 5), (100, 30)])
def test_the_strategy_makes_labeled_plus_budget_clusters_at_most_max_clusters(max_clusters, clusters):
    """10 labeled, b = 20: |L| + b = 30 clusters, or --max-clusters when fewer; the picks are the algorithm's
    for that many clusters (with 5, each cluster visited four times)."""
    x, _, ids = planted_blobs(600, 4, 6, seed=2, spread=0.3)
    config = SimpleNamespace(budget=20, seed=0, acquisition=AcquisitionConfig(max_clusters=max_clusters))
    inputs = SimpleNamespace(config=config, features=lambda _, side: (ids[:10], x[:10]) if side == "labeled"
                             else (ids[10:], x[10:]))
    chosen = TypiClust().select(inputs, SimpleNamespace(scorer=None))
    labeled = np.arange(600) < 10
    expected = typiclust.typiclust_picks(x, ids, labeled, 20, n_clusters=clusters, seed=0)
    assert chosen.ids.tolist() == ids[expected.picks].tolist() and not set(chosen.ids) & set(ids[:10])
    assert len(set(expected.cluster.tolist())) <= clusters


def test_typiclust_refuses_what_it_cannot_do():
    x, _, ids = planted_blobs(50, 4, 2)
    with pytest.raises(InputError):
        typiclust.typiclust_picks(x, ids, np.zeros(50, bool), budget=51)
    with pytest.raises(InputError):
        typiclust.typiclust_picks(x, ids, np.zeros(49, bool), budget=1)
    with pytest.raises(InputError, match="clusters of more than"):     # 50 clusters of one point each
        typiclust.typiclust_picks(x, ids, np.zeros(50, bool), budget=1, n_clusters=50)
