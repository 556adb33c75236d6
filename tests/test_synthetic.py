"""The synthetic pool: deterministic, resumable, readable as a pool."""
import pyarrow.parquet as pq

from vaal_dist.pool.io import PoolMeta, read_pool_ids, read_pool_meta
from benchmarks.synthetic import write_synthetic_pool


def test_synthetic_pool_is_deterministic_and_resumable(tmp_path):
    write_synthetic_pool(str(tmp_path / "a"), 250, image_size=8, shard_rows=100)
    ids = read_pool_ids(str(tmp_path / "a")).to_pylist()
    assert len(ids) == len(set(ids)) == 250 and read_pool_meta(str(tmp_path / "a")) == PoolMeta("raw", (8, 8, 3))
    (tmp_path / "a" / "part-00001.parquet").unlink()                  # an interrupted run
    before = (tmp_path / "a" / "part-00000.parquet").stat().st_mtime_ns
    write_synthetic_pool(str(tmp_path / "a"), 250, image_size=8, shard_rows=100)
    write_synthetic_pool(str(tmp_path / "b"), 250, image_size=8, shard_rows=100)
    assert (tmp_path / "a" / "part-00000.parquet").stat().st_mtime_ns == before   # not rewritten
    for k in range(3):
        name = f"part-{k:05d}.parquet"
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))


def test_synthetic_files_are_deterministic_jpegs_in_class_folders(tmp_path):
    from PIL import Image

    from benchmarks.synthetic import write_synthetic_files

    write_synthetic_files(str(tmp_path / "a"), 25, image_size=16, classes=3, files_per_folder=10)
    write_synthetic_files(str(tmp_path / "b"), 25, image_size=16, classes=3, files_per_folder=10)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 25 and {f.parts[0] for f in files} == {"class-0", "class-1", "class-2"}
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    with Image.open(tmp_path / "a" / files[0]) as im:
        assert im.format == "JPEG" and im.size == (16, 16)
