"""Exact k-center greedy against the textbook brute force; bad input; the coverage radius."""
import numpy as np
import pytest

from vaal_dist.coreset.kcenter import coverage_radius, exact_sq_dists, k_center_greedy, nearest_sq_dists
from vaal_dist.errors import InputError


def textbook_greedy(unlabeled, labeled, budget, ids):
    """Sener & Savarese's greedy, brute force: full distance matrices, ties to the smallest id."""
    x = unlabeled.astype(np.float32)
    dist = np.full(len(x), np.inf)
    for c in labeled.astype(np.float32):
        dist = np.minimum(dist, exact_sq_dists(x, c))
    picked = []
    for _ in range(budget):
        candidates = [i for i in range(len(x)) if i not in picked]
        far = max(dist[i] for i in candidates)
        best = min((i for i in candidates if dist[i] == far), key=lambda i: ids[i])
        picked.append(best)
        dist = np.minimum(dist, exact_sq_dists(x, x[best]))
    return np.array(picked)


def gaussian(seed, n, l, d, dup=0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, d)).astype(np.float32)
    if dup:
        u[rng.choice(n, dup, replace=False)] = u[rng.choice(n, dup, replace=False)]   # exact duplicates
    return u, rng.normal(size=(l, d)).astype(np.float32), np.array([f"p{v:04d}" for v in rng.permutation(n)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_labeled", [0, 1, 30])
def test_greedy_equals_brute_force(seed, n_labeled):
    u, l, ids = gaussian(seed, 300, n_labeled, 16, dup=20)
    np.testing.assert_array_equal(k_center_greedy(u, l, 40, ids), textbook_greedy(u, l, 40, ids))


@pytest.mark.parametrize("chunk", [1, 7, 300, 10000])
def test_chunk_size_does_not_change_the_picks(chunk):
    u, l, ids = gaussian(11, 300, 40, 16, dup=10)
    np.testing.assert_array_equal(k_center_greedy(u, l, 25, ids, chunk=chunk), textbook_greedy(u, l, 25, ids))


@pytest.mark.parametrize("speculate", [1, 2, 16, 1000])
def test_speculation_changes_work_not_picks(speculate):
    from vaal_dist.coreset.kcenter import k_center_greedy_with_distances

    u, l, ids = gaussian(13, 300, 0, 16, dup=15)
    picks, _ = k_center_greedy_with_distances(u, l, 60, ids, speculate=speculate)
    np.testing.assert_array_equal(picks, textbook_greedy(u, l, 60, ids))


def test_all_duplicates_and_budget_equal_to_the_pool():
    u = np.ones((12, 4), np.float32)
    ids = np.array([f"z{i:02d}" for i in range(12)])[::-1]
    picks = k_center_greedy(u, np.zeros((0, 4)), 12, ids)
    assert list(ids[picks]) == sorted(ids)                   # every distance ties: id order
    np.testing.assert_array_equal(picks, textbook_greedy(u, np.zeros((0, 4)), 12, ids))


def test_large_offsets_do_not_break_exactness():
    """Big norms make the float32 fast path coarse; the exact re-check must still decide."""
    u, l, ids = gaussian(7, 400, 25, 32)
    u, l = u + 300.0, l + 300.0
    np.testing.assert_array_equal(k_center_greedy(u, l, 30, ids), textbook_greedy(u, l, 30, ids))


def test_nearest_sq_dists_is_exact_with_few_neighbours():
    u, l, _ = gaussian(3, 500, 200, 8)
    want = np.stack([exact_sq_dists(l, p) for p in u]).min(1)
    np.testing.assert_array_equal(nearest_sq_dists(u, l, k=1, chunk=64), want)


def test_coverage_radius_shrinks_along_the_greedy():
    u, l, ids = gaussian(5, 300, 10, 8)
    picks = k_center_greedy(u, l, 30, ids)
    radii = [coverage_radius(u, np.vstack([l, u[picks[:k]]])) for k in (0, 10, 30)]
    assert radii[0] > radii[1] > radii[2] > 0


@pytest.mark.parametrize("unlabeled,labeled,budget,match", [
    (np.zeros((5, 3)), np.zeros((2, 3)), 6, "budget 6 must be between 0 and the 5"),
    (np.full((5, 3), np.nan), np.zeros((2, 3)), 1, "unlabeled embeddings contain NaN"),
    (np.zeros((5, 3)), np.array([[np.inf, 0, 0]]), 1, "labeled embeddings contain NaN or infinite"),
    (np.zeros((5, 3)), np.zeros((2, 4)), 1, r"dimensions differ"),
    (np.zeros(5), np.zeros((2, 4)), 1, "must be 2-d"),
])
def test_bad_input_is_named(unlabeled, labeled, budget, match):
    with pytest.raises(InputError, match=match):
        k_center_greedy(unlabeled, labeled, budget)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("parts", [2, 5])
def test_distributed_radius_is_within_its_bound_of_exact(ray_local, seed, parts):
    from benchmarks.two_round_kcenter import distributed_k_center

    u, l, ids = gaussian(seed, 600, 20, 8)
    exact = k_center_greedy(u, l, 30, ids)
    split = np.array_split(np.random.default_rng(seed).permutation(len(u)), parts)
    picked_ids = distributed_k_center([(u[s], ids[s]) for s in split], l, 30)
    position = {v: k for k, v in enumerate(ids)}
    dist_radius = coverage_radius(u, np.vstack([l, u[[position[v] for v in picked_ids]]]))
    exact_radius = coverage_radius(u, np.vstack([l, u[exact]]))
    assert len(set(picked_ids)) == 30
    assert exact_radius <= dist_radius * 2 + 1e-6       # exact greedy is a 2-approximation too
    assert dist_radius <= 4 * exact_radius + 1e-6       # Malkomes et al. 2015: 4 * OPT <= 4 * exact


def test_one_partition_is_exact_greedy(ray_local):
    from benchmarks.two_round_kcenter import distributed_k_center

    u, l, ids = gaussian(9, 200, 5, 8)
    np.testing.assert_array_equal(distributed_k_center([(u, ids)], l, 20), ids[k_center_greedy(u, l, 20, ids)])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_greedy_equals_cpu_greedy():
    from vaal_dist.coreset.kcenter import k_center_greedy_with_distances

    u, l, ids = gaussian(5, 2000, 50, 64, dup=30)
    cpu = k_center_greedy_with_distances(u, l, 200, ids, device="cpu")
    gpu = k_center_greedy_with_distances(u, l, 200, ids, device="cuda")
    np.testing.assert_array_equal(gpu[0], cpu[0])
    # The float64 distance sums run in another order on the GPU: radii agree to rounding, not bits.
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-12)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("k", [1, 8])
def test_torch_gpu_search_equals_faiss_cpu_search(k):
    u, l, _ = gaussian(6, 3000, 400, 32, dup=50)
    np.testing.assert_array_equal(nearest_sq_dists(u, l, k=k, chunk=512, device="cuda"),
                                  nearest_sq_dists(u, l, k=k, chunk=512, device="cpu"))
