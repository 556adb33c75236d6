"""BADGE's k-means++ seeding against brute force on the materialised gradient embeddings.

Why rounding cannot flip a pick: our D^2 vector equals the brute force's bit for bit at every step.
Rows we skip provably keep their D^2 in the brute force too (the estimate's error bound, checked in
``test_the_error_bound_holds``); rows we recompute use the same float64 expression on the same float32
materialised rows, and numpy's row reduction does not depend on the block a row sits in
(``test_exact_rows_do_not_depend_on_the_block``). Equal D^2 vectors give equal ``np.cumsum`` running
sums, hence equal picks for the same u: no probability is involved.
"""
import numpy as np
import pytest
import torch

from vaal_dist.coreset.badge import (_Factors, badge_seeding, badge_seeding_with_d2, embedding_rows,
                                     exact_embedding_sq_dists, gradient_factors, lower_bounds)
from vaal_dist.coreset.kcenter import exact_sq_dists
from vaal_dist.errors import InputError


def brute_force_badge(a, h, budget, seed, ids):
    """k-means++ seeding on the N x (C*D) embedding matrix, by the module docstring's draw rule:
    (picks, each pick's D^2 when drawn, the total of D^2 then)."""
    order = np.argsort(ids.astype(str), kind="stable")
    g = embedding_rows(a[order].astype(np.float32), h[order].astype(np.float32))
    rng = np.random.default_rng(seed)
    d2 = np.full(len(g), np.inf)
    picks = [int(np.argmax(exact_sq_dists(g, np.zeros(g.shape[1], np.float32))))]
    picked_d2, totals = [np.inf], [np.inf]
    while len(picks) < budget:
        d2 = np.minimum(d2, exact_sq_dists(g, g[picks[-1]]))
        u, running = rng.random(), np.cumsum(d2)
        if running[-1] > 0:
            above = np.flatnonzero(running > u * running[-1])
            picks.append(int(above[0]) if len(above) else int(np.flatnonzero(d2)[-1]))
        else:
            free = [i for i in range(len(g)) if i not in picks]
            picks.append(free[min(int(u * len(free)), len(free) - 1)])
        picked_d2.append(d2[picks[-1]])
        totals.append(running[-1])
    return order[np.array(picks, dtype=np.int64)], np.array(picked_d2), np.array(totals)


def assert_same_seeding(ours, brute_force):
    """Same picks, and the same D^2 and totals to the last bit (assert_array_equal is exact)."""
    for mine, theirs in zip(ours, brute_force):
        np.testing.assert_array_equal(mine, theirs)


def softmax_pool(seed, n, c, d, dup=0, zero_gradients=0, offset=0.0):
    """Seeded (a, h, ids): softmax gradients of random logits, ReLU features, shuffled string ids;
    ``dup`` rows copied over others, ``zero_gradients`` rows with a one-hot p (a = 0)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=rng.uniform(0.5, 4, size=(n, 1)), size=(n, c))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    p[:zero_gradients] = np.eye(c, dtype=np.float32)[rng.integers(c, size=zero_gradients)]
    a = gradient_factors(p)
    h = (np.maximum(rng.normal(size=(n, d)), 0) + offset).astype(np.float32)
    if dup:
        src, dst = rng.choice(n, dup, replace=False), rng.choice(n, dup, replace=False)
        a[dst], h[dst] = a[src], h[src]
    return a, h, np.array([f"p{v:05d}" for v in rng.permutation(n)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,c,d,budget", [(300, 10, 16, 40), (200, 3, 64, 60), (120, 2, 5, 120)])
def test_picks_equal_brute_force(seed, n, c, d, budget):
    a, h, ids = softmax_pool(seed, n, c, d, dup=n // 10, zero_gradients=n // 20)
    ours = badge_seeding_with_d2(a, h, budget, seed, ids)
    assert_same_seeding(ours, brute_force_badge(a, h, budget, seed, ids))
    assert len(set(ours[0].tolist())) == budget


@pytest.mark.parametrize("chunk", [1, 7, 10000])
def test_chunk_size_does_not_change_the_picks(chunk):
    a, h, ids = softmax_pool(11, 250, 10, 24, dup=20)
    assert_same_seeding(badge_seeding_with_d2(a, h, 50, 5, ids, chunk=chunk), brute_force_badge(a, h, 50, 5, ids))


def test_large_offsets_and_tiny_gradients_stay_exact():
    """Big feature norms make the float32 estimate coarse; near-zero gradients make it underflow."""
    a, h, ids = softmax_pool(7, 300, 10, 32, offset=300.0, dup=10)
    a[:100] *= np.float32(1e-30)
    assert_same_seeding(badge_seeding_with_d2(a, h, 60, 3, ids), brute_force_badge(a, h, 60, 3, ids))


def test_estimates_coarser_than_the_distances_stay_exact():
    """Features 1000 + N(0, 1) and gradients a0 + N(0, 1e-3): float32 rounding of (a.b)(h.h') (~1e3)
    is as large as the distances themselves, so most decisions rest on the error bound."""
    rng = np.random.default_rng(12)
    a = (np.float32([0.6, -0.3, -0.3]) + rng.normal(scale=1e-3, size=(300, 3))).astype(np.float32)
    h = (1000 + rng.normal(size=(300, 512))).astype(np.float32)
    ids = np.array([f"r{i:03d}" for i in range(300)])
    assert_same_seeding(badge_seeding_with_d2(a, h, 80, 4, ids), brute_force_badge(a, h, 80, 4, ids))


def test_row_order_does_not_change_the_picked_ids():
    a, h, ids = softmax_pool(2, 200, 5, 16, dup=20)
    perm = np.random.default_rng(0).permutation(len(a))
    shuffled = badge_seeding(a[perm], h[perm], 30, 9, ids[perm])
    assert list(ids[badge_seeding(a, h, 30, 9, ids)]) == list(ids[perm][shuffled])


def test_seed_changes_the_draws_but_not_the_first_pick():
    a, h, ids = softmax_pool(4, 200, 10, 16)
    one, other = badge_seeding(a, h, 20, 0, ids), badge_seeding(a, h, 20, 1, ids)
    assert one[0] == other[0] == brute_force_badge(a, h, 1, 0, ids)[0][0]   # the largest norm
    assert list(one) != list(other)


def test_all_duplicates_fall_back_to_uniform_draws_over_the_rest():
    """Every D^2 is 0 after the first pick: the rule takes the floor(u r)-th unpicked id."""
    a = np.tile(np.float32([[0.5, -0.5]]), (8, 1))
    h = np.ones((8, 3), np.float32)
    ids = np.array([f"z{i}" for i in range(8)])[::-1]
    ours = badge_seeding_with_d2(a, h, 8, 0, ids)
    assert ids[ours[0][0]] == "z0"                         # every norm ties: the smallest id
    assert_same_seeding(ours, brute_force_badge(a, h, 8, 0, ids))
    assert sorted(ours[0].tolist()) == list(range(8)) and (ours[2][1:] == 0).all()


def test_coinciding_zero_gradients_are_picked_once():
    """A zero gradient is at D^2 = ||g_c||^2 > 0 from the first center, so one can be drawn; all 30
    coincide, so after one is picked the others have D^2 = 0 and are never drawn: 31 picks from 30
    distinct nonzero gradients and 30 zeros hold exactly one zero."""
    a, h, ids = softmax_pool(5, 60, 4, 8, zero_gradients=30)
    ours = badge_seeding_with_d2(a, h, 31, 1, ids)
    assert_same_seeding(ours, brute_force_badge(a, h, 31, 1, ids))
    assert (np.abs(a[ours[0]]).sum(1) == 0).sum() == 1


def test_exact_rows_do_not_depend_on_the_block():
    a, h, _ = softmax_pool(3, 97, 10, 64)
    full = exact_sq_dists(embedding_rows(a, h), embedding_rows(a[5:6], h[5:6])[0])
    rows = np.random.default_rng(0).permutation(len(a))
    for chunk in (1, 3, 50, 97):
        np.testing.assert_array_equal(exact_embedding_sq_dists(a, h, rows, 5, chunk), full[rows])


@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (300.0, 1.0), (0.0, 1e-30), (1e6, 1e3)])
def test_the_error_bound_holds(offset, scale):
    """The estimate from float32 factor dot products is within kappa x^2 + tiny of the materialised
    float64 D^2 on both sides, for every row and several centers: the lower bound never exceeds the
    reference (the one fact the skipped rows' exactness rests on) and is no looser than claimed."""
    a, h, _ = softmax_pool(8, 400, 10, 128, offset=offset, dup=20)
    a = (a * np.float32(scale)).astype(np.float32)
    factors = _Factors(a, h, torch.device("cpu"))
    for center in (0, 17, 399):
        lower = lower_bounds(factors, center).numpy()
        exact = exact_embedding_sq_dists(a, h, np.arange(len(a)), center)
        slack = factors.kappa * (factors.norms + factors.norms[center]).numpy() ** 2 + factors.tiny
        assert (lower <= exact).all()
        assert (exact <= lower + 2 * slack * (1 + 1e-9)).all()


def test_factorised_distances_equal_materialised_ones():
    """||a (x) h - b (x) h'||^2 = ||a||^2 ||h||^2 + ||b||^2 ||h'||^2 - 2 (a.b)(h.h'), in float64 on float64
    factors: both sides are the same real number, so they agree to float64 rounding (1e-12 relative to
    the norms; each side has < 2e3 rounded operations of relative size 2^-53)."""
    rng = np.random.default_rng(0)
    a, h = rng.normal(size=(50, 7)), rng.normal(size=(50, 33))
    g = (a[:, :, None] * h[:, None, :]).reshape(50, -1)
    materialised = ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    na, nh = (a ** 2).sum(1), (h ** 2).sum(1)
    factorised = (na * nh)[:, None] + (na * nh)[None, :] - 2 * (a @ a.T) * (h @ h.T)
    scale = np.sqrt(na * nh)[:, None] + np.sqrt(na * nh)[None, :]
    assert np.abs(factorised - materialised).max() <= 1e-12 * (scale ** 2).max()


def test_gradient_factors_are_the_last_layers_cross_entropy_gradient():
    rng = np.random.default_rng(1)
    weight = torch.tensor(rng.normal(size=(6, 9)), requires_grad=True)
    h = torch.tensor(rng.normal(size=(9,)))
    logits = weight @ h
    predicted = int(torch.argmax(logits))
    torch.nn.functional.cross_entropy(logits[None], torch.tensor([predicted])).backward()
    a = gradient_factors(torch.softmax(logits, 0).detach().numpy()[None])
    np.testing.assert_allclose(embedding_rows(a, h.numpy()[None].astype(np.float32))[0],
                               weight.grad.numpy().ravel(), atol=1e-6)   # float32 softmax and products


def test_planted_clusters_are_spread_where_top_norm_piles_into_one():
    """5 clusters 100 apart in feature space, cluster 0 the most uncertain (largest ||a||): top-5 by
    gradient norm takes 5 points of cluster 0; BADGE's first 5 picks cover the 5 clusters.

    Why that is no luck: once a cluster holds a center, each of its points has D^2 at most its largest
    distance within the cluster, while each point of an uncovered cluster has D^2 at least the smallest
    distance between clusters. So a draw repeats a covered cluster with probability at most
    covered mass / uncovered mass <= 4 * (largest within-cluster mass) / (40 * smallest distance
    across), asserted below to be < 1e-5: the 4 draws of 5 seeds repeat with probability < 2e-4."""
    rng = np.random.default_rng(0)
    per, clusters, c, d = 40, 5, 4, 8
    labels = np.repeat(np.arange(clusters), per)
    confidence = np.where(labels == 0, 0.3, 0.8) + rng.normal(scale=1e-4, size=len(labels))
    p = np.empty((len(labels), c))
    p[:, 0] = confidence
    p[:, 1:] = ((1 - confidence) / (c - 1))[:, None]
    a = gradient_factors(p)
    h = (100 * np.eye(d)[labels] + rng.normal(scale=1e-4, size=(len(labels), d))).astype(np.float32)
    g = embedding_rows(a, h).astype(np.float64)
    sq = ((g[:, None] - g[None]) ** 2).sum(-1)
    same = labels[:, None] == labels[None]
    within = max(sq[labels == k][:, labels == k].max(1).sum() for k in range(clusters))
    assert (clusters - 1) * within / (per * sq[~same].min()) < 1e-5
    ids = np.array([f"q{i:03d}" for i in range(len(labels))])
    top_norm = np.argsort(-(g ** 2).sum(1), kind="stable")[:clusters]
    assert set(labels[top_norm]) == {0}
    for seed in range(5):
        assert sorted(labels[badge_seeding(a, h, clusters, seed, ids)]) == list(range(clusters))


@pytest.mark.parametrize("a,h,budget,ids,match", [
    (np.zeros((5, 3)), np.zeros((5, 4)), 6, None, "budget 6 must be between 0 and the 5"),
    (np.zeros((5, 3)), np.zeros((4, 4)), 1, None, "one row per point"),
    (np.zeros(5), np.zeros((5, 4)), 1, None, "one row per point"),
    (np.full((5, 3), np.nan), np.zeros((5, 4)), 1, None, "a contains NaN"),
    (np.zeros((5, 3)), np.full((5, 4), 1e20), 1, None, "h has entries above 2"),
    (np.zeros((5, 3)), np.zeros((5, 4)), 1, np.arange(4), "4 ids for 5 points"),
])
def test_bad_input_is_named(a, h, budget, ids, match):
    with pytest.raises(InputError, match=match):
        badge_seeding(a, h, budget, 0, ids)


def test_budget_zero_picks_nothing():
    a, h, ids = softmax_pool(0, 10, 3, 4)
    assert len(badge_seeding(a, h, 0, 0, ids)) == 0


def test_torch_threads_are_restored():
    threads = torch.get_num_threads()
    a, h, ids = softmax_pool(0, 50, 3, 4)
    badge_seeding(a, h, 5, 0, ids, device="cpu")
    assert torch.get_num_threads() == threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_seeding_equals_brute_force():
    a, h, ids = softmax_pool(5, 3000, 10, 64, dup=100, zero_gradients=50)
    assert_same_seeding(badge_seeding_with_d2(a, h, 300, 2, ids, device="cuda"), brute_force_badge(a, h, 300, 2, ids))
