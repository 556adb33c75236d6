"""The exact top-b merge against a full sort: ties, block splits, b >= n, bad input."""
import numpy as np
import pytest

from vaal_dist.scoring.topk import RunningTopK, top_k


def full_sort(ids, scores, k):
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]
    return np.array([ids[i] for i in order], dtype=str), np.array([scores[i] for i in order])


def tied_scores(rng, n):
    return rng.integers(0, 7, n).astype(np.float64) / 4  # few distinct values: ties everywhere


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [0, 1, 5, 64, 199, 200, 500])
def test_top_k_equals_full_sort(seed, k):
    rng = np.random.default_rng(seed)
    ids = np.array([f"id{v}" for v in rng.permutation(200)])
    scores = tied_scores(rng, 200)
    got_ids, got_scores = top_k(ids, scores, k)
    want_ids, want_scores = full_sort(list(ids), list(scores), k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 7, 100, 1000, 2000])
def test_running_top_k_over_any_block_split_equals_full_sort(seed, k):
    rng = np.random.default_rng(seed)
    n = 1500
    ids = np.array([f"{v:06d}" for v in rng.permutation(n)])
    scores = np.where(rng.random(n) < 0.5, tied_scores(rng, n), rng.normal(size=n))
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 60), replace=False))
    acc = RunningTopK(k, fold_at=int(rng.integers(1, 300)))
    for block_ids, block_scores in zip(np.split(ids, cuts), np.split(scores, cuts)):
        acc.add(*top_k(block_ids, block_scores, k))    # what each scoring actor emits per batch
    got_ids, got_scores = acc.result()
    want_ids, want_scores = full_sort(list(ids), list(scores), k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert len(got_ids) == min(k, n)


def test_ties_are_broken_by_smallest_id():
    ids, _ = top_k(["b", "c", "a", "d"], [1.0, 2.0, 1.0, 1.0], 3)
    assert list(ids) == ["c", "a", "b"]


def test_running_top_k_holds_bounded_rows():
    acc = RunningTopK(10, fold_at=100)
    rng = np.random.default_rng(0)
    for i in range(50):
        acc.add([f"{i}-{j}" for j in range(64)], rng.random(64))
        assert len(acc._ids) + acc._pending_rows <= 10 + 100 + 64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(ValueError, match="finite"):
        top_k(["a", "b"], [0.0, bad], 1)
    with pytest.raises(ValueError, match="finite"):
        RunningTopK(1).add(["a", "b"], [0.0, bad])


def test_mismatched_lengths_and_negative_k_are_rejected():
    with pytest.raises(ValueError, match="one length"):
        top_k(["a"], [0.0, 1.0], 1)
    with pytest.raises(ValueError, match="k must be"):
        top_k(["a"], [0.0], -1)


@pytest.mark.parametrize("seed", range(3))
def test_a_block_delivered_again_counts_once(seed):
    """A restarted scoring actor may hand the driver a block twice: the top-b must not hold an id twice."""
    rng = np.random.default_rng(seed)
    n, k = 600, 50
    ids = np.array([f"{v:05d}" for v in rng.permutation(n)])
    scores = np.where(rng.random(n) < 0.5, tied_scores(rng, n), rng.normal(size=n))
    blocks = list(zip(np.split(ids, 12), np.split(scores, 12)))
    acc = RunningTopK(k, fold_at=int(rng.integers(1, 120)))
    for i in rng.choice(12, 30):                    # random blocks delivered early, some several times
        acc.add(*top_k(*blocks[i], k))
    for block in blocks:
        acc.add(*top_k(*block, k))
    got_ids, got_scores = acc.result()
    want_ids, want_scores = full_sort(list(ids), list(scores), k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores)


def test_an_id_seen_with_two_scores_keeps_the_higher():
    acc = RunningTopK(2, fold_at=1)
    acc.add(["a", "b"], [1.0, 3.0])
    acc.add(["a", "c"], [5.0, 0.0])
    assert [list(x) for x in acc.result()] == [["a", "b"], [5.0, 3.0]]
