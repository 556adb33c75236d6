"""Training batches streamed from a pool's shards (no Ray): each worker's share of an epoch, the epoch
sample, the labeled copy, determinism, and errors handed over from the reading thread."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_raw_pool
from vaal_dist.errors import InputError
from vaal_dist.pool.io import PoolMeta, read_pool_meta, write_pool
import vaal_dist.train.pool_batches as pool_batches
from vaal_dist.train.pool_batches import MIX_IMAGES, PoolSide, endless_batches, epoch_share, pool_sides, pool_source


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """(pool uri, ids, labeled ids, pixels by id): 6,000 images in 5 shards of several row groups, every
    tenth labeled."""
    path = tmp_path_factory.mktemp("batches") / "pool"
    ids = make_raw_pool(path, 6000, size=8, shards=5)
    table = pa.concat_tables(pq.read_table(f, columns=["id", "image"]) for f in sorted(path.glob("*.parquet")))
    pixels = dict(zip(table.column("id").to_pylist(), table.column("image").to_pylist()))
    return str(path), ids, ids[::10], pixels


def source(pool, tmp_path, workers):
    uri, _, labeled, _ = pool
    return pool_source(uri, pa.array(labeled), pa.array(labeled), read_pool_meta(uri), str(tmp_path / "copy"), workers)


def one_epoch(src, rank, workers, seed, limit=None, batch=64):
    _, unlabeled = src.epoch(8, batch, rank=rank, workers=workers, seed=seed, limit=limit, pin=False)
    return list(unlabeled)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_an_epoch_deals_each_worker_as_many_unlabeled_images_each_once(pool, tmp_path, workers):
    uri, ids, labeled, pixels = pool
    src = source(pool, tmp_path, workers)
    unlabeled = set(ids) - set(labeled)
    epochs = [one_epoch(src, rank, workers, seed=3) for rank in range(workers)]
    seen = [np.concatenate([b["id"] for b in batches]) for batches in epochs]
    assert {len(s) for s in seen} == {len(unlabeled) // workers}
    assert len({len(batches) for batches in epochs}) == 1           # the same number of DDP steps
    everything = np.concatenate(seen)
    assert len(set(everything)) == len(everything) and set(everything) <= unlabeled
    batch = epochs[0][1]
    want = np.stack([np.frombuffer(pixels[i], np.uint8).reshape(8, 8, 1).transpose(2, 0, 1) for i in batch["id"]])
    np.testing.assert_array_equal(batch["pixels"].numpy(), want)    # each image travels with its id


def test_epochs_are_seeded_and_shuffled_across_row_groups(pool, tmp_path):
    src = source(pool, tmp_path, 1)
    first, again, other = (one_epoch(src, 0, 1, seed) for seed in (3, 3, 4))
    assert all(np.array_equal(a["id"], b["id"]) and np.array_equal(a["pixels"], b["pixels"])
               for a, b in zip(first, again))
    assert not np.array_equal(first[0]["id"], other[0]["id"])
    # make_raw_pool writes ids in order, 1,024 to a row group: a batch of 64 spans many of them.
    groups = {int(i.split("-")[1]) // 1024 for i in first[0]["id"]}
    assert len(groups) >= min(4, MIX_IMAGES // 1024)


def test_epoch_images_samples_a_fresh_subset_split_evenly(pool, tmp_path):
    _, ids, labeled, _ = pool
    src = source(pool, tmp_path, 2)
    epoch = {seed: [np.concatenate([b["id"] for b in one_epoch(src, r, 2, seed, limit=1001)]) for r in range(2)]
             for seed in (3, 4)}
    for seen in epoch.values():
        assert [len(s) for s in seen] == [500, 500]
        assert not set(seen[0]) & set(seen[1]) and not set(np.concatenate(seen)) & set(labeled)
    assert set(np.concatenate(epoch[3])) != set(np.concatenate(epoch[4]))


def test_epoch_share_covers_the_cut_order_exactly():
    counts = np.array([5, 0, 7, 3, 9])
    shares = [epoch_share(counts, r, 3, seed=1, limit=20) for r in range(3)]
    taken = [sum(stop - start for _, start, stop in s) for s in shares]
    assert taken == [6, 6, 6]
    members = [(g, m) for s in shares for g, start, stop in s for m in range(start, stop)]
    assert len(set(members)) == 18 and all(m < counts[g] for g, m in members)


def test_the_labeled_copy_holds_only_labeled_images_dealt_across_workers(pool, tmp_path):
    _, _, labeled, _ = pool
    src = source(pool, tmp_path, 2)
    assert src.labeled.images == len(labeled) and src.unlabeled.images == 6000 - len(labeled)
    per_worker = []
    for rank in range(2):
        endless, _ = src.epoch(8, 50, rank=rank, workers=2, seed=3, limit=None, pin=False)
        per_worker.append(np.concatenate([next(endless)["id"] for _ in range(40)]))   # 2,000 rows: several passes
        endless.close()
    assert all(set(s) <= set(labeled) for s in per_worker)
    # 600 labeled in 8 row groups of 75: each pass deals 4 groups to each worker, anew each pass.
    assert len(src.labeled.counts) == 8 and set(per_worker[0]) | set(per_worker[1]) == set(labeled)
    copied = (tmp_path / "copy" / "part-00000.parquet").stat().st_mtime_ns
    assert source(pool, tmp_path, 2).labeled.images == len(labeled)             # the same copy, reused
    assert (tmp_path / "copy" / "part-00000.parquet").stat().st_mtime_ns == copied
    uri = pool[0]
    other = pool_source(uri, pa.array(labeled[:7]), pa.array(labeled), read_pool_meta(uri), str(tmp_path / "copy"), 2)
    assert other.labeled.images == 7                                          # other ids: copied anew


def test_a_labeled_side_smaller_than_a_mixing_window_is_read_once_and_batched_as_if_read_every_pass(
        pool, tmp_path, monkeypatch):
    """600 labeled images in 8 row groups: 2,000 rows from one worker are about 14 passes over its 4 groups a pass
    (the first window alone needs 4,096 rows), but each group is read from the copy once."""
    reads = []
    read = PoolSide.read
    monkeypatch.setattr(PoolSide, "read", lambda side, g, *a: reads.append(g) or read(side, g, *a))
    src = source(pool, tmp_path, 2)
    reads.clear()

    def batches():
        endless = endless_batches(src.labeled, src.meta, 8, 50, rank=1, workers=2, seed=3)
        got = [next(endless) for _ in range(40)]
        endless.close()
        return np.concatenate([b["id"] for b in got]), np.concatenate([b["pixels"].numpy() for b in got])

    kept_ids, kept_pixels = batches()
    assert len(reads) == len(set(reads)) <= len(src.labeled.counts)
    monkeypatch.setattr(pool_batches, "KEPT_IMAGES", 0)     # read again every pass, as a large side is
    reads.clear()
    ids, pixels = batches()
    assert len(reads) > MIX_IMAGES // 300 * 4      # 300 labeled rows a pass, 4 groups each
    np.testing.assert_array_equal(kept_ids, ids)
    np.testing.assert_array_equal(kept_pixels, pixels)


def test_a_bad_image_read_in_the_background_is_raised_by_its_id(tmp_path):
    images = [bytes(64)] * 30 + [b"short"] + [bytes(64)] * 29
    write_pool(str(tmp_path / "p"), [pa.table({"id": [f"i{k:02d}" for k in range(60)], "image": images})],
               PoolMeta("raw", (8, 8, 1)))
    [side] = pool_sides(str(tmp_path / "p"), (pa.array(["i00"]), False))
    src = pool_source(str(tmp_path / "p"), pa.array(["i00"]), pa.array(["i00"]), PoolMeta("raw", (8, 8, 1)),
                      str(tmp_path / "copy"), 1)
    assert side.images == 59
    with pytest.raises(InputError, match="image 'i30' has 5 bytes"):
        one_epoch(src, 0, 1, seed=0)
