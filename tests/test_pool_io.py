"""Pools, manifests and image decoding: what is read, and the errors that name the bad input."""
import collections
import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_raw_pool, png_bytes
from vaal_dist.errors import InputError
from vaal_dist.pool.dataset import _read_shards
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta, pool_files, read_pool_ids, read_pool_meta, read_rows, write_pool
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.storage import write_atomic
from vaal_dist.pool.prepare import ShardSettings, decode_file
from vaal_dist.train.pool_batches import pool_sides


def test_raw_pool_round_trips_ids_and_meta(tmp_path):
    ids = make_raw_pool(tmp_path / "p", 50, size=16, channels=3, shards=3)
    assert sorted(read_pool_ids(str(tmp_path / "p")).to_pylist()) == sorted(ids)
    assert read_pool_meta(str(tmp_path / "p")) == PoolMeta("raw", (16, 16, 3))
    assert read_pool_meta("file://" + str(tmp_path / "p")).channels == 3


def test_rows_read_by_id_are_the_pools_rows_with_those_ids(tmp_path):
    ids = make_raw_pool(tmp_path / "p", 60, size=4, shards=3)
    whole = pa.concat_tables(pq.read_table(shard) for shard in sorted((tmp_path / "p").glob("part-*.parquet")))
    wanted = pa.array([ids[59], ids[5], "not-in-the-pool", ids[30], ids[31]])
    read = pa.concat_tables(read_rows(str(tmp_path / "p"), wanted, ["id", "label", "image"]))
    held = whole.filter(pc.is_in(whole.column("id"), value_set=wanted)).select(["id", "label", "image"])
    assert read.sort_by("id").equals(held.sort_by("id")) and read.num_rows == 4


def test_manifest_parquet_and_text(tmp_path):
    write_manifest(str(tmp_path / "m.parquet"), ["a", "b/c.jpg", "ü d"])
    (tmp_path / "m.txt").write_text("a\nb/c.jpg\n\nü d\n")
    assert read_manifest(str(tmp_path / "m.parquet")).to_pylist() == ["a", "b/c.jpg", "ü d"]
    assert read_manifest(str(tmp_path / "m.txt")).to_pylist() == ["a", "b/c.jpg", "ü d"]


def test_duplicate_ids_are_named(tmp_path):
    write_pool(str(tmp_path / "p"), [pa.table({"id": ["x", "y"], "image": [b"1", b"2"]}),
                                     pa.table({"id": ["y"], "image": [b"3"]})], PoolMeta())
    with pytest.raises(InputError, match=r"1 ids occur more than once.*'y'"):
        read_pool_ids(str(tmp_path / "p"))
    (tmp_path / "m.txt").write_text("a\na\n")
    with pytest.raises(InputError, match="more than once"):
        read_manifest(str(tmp_path / "m.txt"))


def test_missing_empty_and_unreadable_pools(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_pool_ids(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet shards"):
        read_pool_ids(str(tmp_path / "empty"))
    write_pool(str(tmp_path / "zero"), [pa.table({"id": pa.array([], pa.string()),
                                                  "image": pa.array([], pa.binary())})], PoolMeta())
    with pytest.raises(InputError, match="no images"):
        read_pool_ids(str(tmp_path / "zero"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-0.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read pool"):
        read_pool_ids(str(tmp_path / "bad"))
    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "noid.parquet")
    with pytest.raises(InputError, match="cannot read pool"):
        read_pool_ids(str(tmp_path / "noid.parquet"))
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(str(tmp_path / "none.parquet"))


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "f.bin"
    write_atomic(str(target), b"old")
    with pytest.raises(TypeError):          # fails mid-write, after the temporary file was opened
        write_atomic(str(target), object())
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_raw_and_encoded(channels):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (2, 8, 8, channels), dtype=np.uint8)
    out = decode_images(np.array(["a", "b"]), [r.tobytes() for r in raw], PoolMeta("raw", (8, 8, channels)), 8)
    np.testing.assert_array_equal(out, raw.transpose(0, 3, 1, 2))
    assert out.flags.writeable          # torch.from_numpy warns on read-only arrays in every scoring actor
    enc = decode_images(np.array(["a", "b"]), [png_bytes(rng), png_bytes(rng, 17)], PoolMeta(), 32)
    assert enc.shape == (2, 3, 32, 32) and enc.dtype == np.uint8


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _odd_mode_pngs() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    palette = Image.fromarray(rng.integers(0, 4, (6, 6), dtype=np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250])
    palette.info["transparency"] = 3                                  # a tRNS entry: index 3 is see-through
    return {
        "rgba": _png(Image.fromarray(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA")),
        "la": _png(Image.fromarray(rng.integers(0, 256, (6, 6, 2), dtype=np.uint8), "LA")),
        "palette-trns": _png(palette),
        "gray16": _png(Image.fromarray(rng.integers(0, 65_536, (6, 6)).astype(np.uint16))),
    }


def test_encoded_pools_decode_odd_modes_as_prepare_does():
    """An encoded pool and a prepared one hold the same pixels for the same PNG (alpha, 16-bit, palette)."""
    pngs = _odd_mode_pngs()
    settings = ShardSettings(image_size=4, channels=3, max_pixels=10_000, classes=None)
    decoded = decode_images(np.array(list(pngs)), list(pngs.values()), PoolMeta(), 4)        # (B, 3, 4, 4)
    for got, (name, data) in zip(decoded, pngs.items()):
        prepared = np.frombuffer(decode_file(data, settings), np.uint8).reshape(4, 4, 3).transpose(2, 0, 1)
        np.testing.assert_array_equal(got, prepared, err_msg=name)


def test_decode_errors_name_the_image():
    with pytest.raises(InputError, match="'b' has 5 bytes"):
        decode_images(np.array(["a", "b"]), [bytes(64), bytes(5)], PoolMeta("raw", (8, 8, 1)), 8)
    with pytest.raises(InputError, match="pool images are 8x8 but the model expects 32x32"):
        decode_images(np.array(["a"]), [bytes(64)], PoolMeta("raw", (8, 8, 1)), 32)
    with pytest.raises(InputError, match="image 'broken.jpg' cannot be decoded"):
        decode_images(np.array(["broken.jpg"]), [b"\xff\xd8\xff garbage"], PoolMeta(), 32)


@pytest.mark.parametrize("doc,match", [
    ("{not json", "not a valid pool description"),
    ('{"encoding": "raw"}', "not a valid pool description"),
    ('["raw"]', "not a valid pool description"),
    ('{"encoding": "webp"}', "encoding must be 'raw' or 'encoded'"),
    ('{"encoding": "raw", "image_shape": [32, 32]}', r"image_shape must be \[height, width, channels\]"),
    ('{"encoding": "raw", "image_shape": [32, -1, 3]}', "image_shape must be"),
])
def test_bad_pool_descriptions_are_named(tmp_path, doc, match):
    make_raw_pool(tmp_path / "p", 4)
    (tmp_path / "p" / "pool.json").write_text(doc)
    with pytest.raises(InputError, match=match):
        read_pool_meta(str(tmp_path / "p"))


def test_ids_with_nul_and_pools_without_images_are_refused(tmp_path):
    write_pool(str(tmp_path / "nul"), [pa.table({"id": ["a", "a\x00"], "image": [b"", b""]})], PoolMeta())
    with pytest.raises(InputError, match="NUL character"):
        read_pool_ids(str(tmp_path / "nul"))
    write_pool(str(tmp_path / "noimg"), [pa.table({"id": ["a"], "pixels": [b""]})], PoolMeta())
    with pytest.raises(InputError, match="no 'image' column"):
        read_pool_ids(str(tmp_path / "noimg"))
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(InputError, match="must be strings"):
        read_manifest(str(tmp_path / "ints.parquet"))


def read_like_a_round(pool: str) -> tuple[list[str], pa.Table, pa.Table]:
    """What a round reads, in its order: the ids (read_pool_ids), then every id and image through the
    training reader (train/pool_batches.py) and through the scoring reader (pool/dataset.py's read task)."""
    ids = read_pool_ids(pool).to_pylist()
    side, = pool_sides(pool, (pa.array([], pa.string()), False))
    training = pa.concat_tables([side.read(g) for g in range(len(side.counts))])
    fs, files = pool_files(pool)
    scoring = pa.concat_tables(_read_shards(pa.table({"shard": files}), fs, ["id", "image"]))
    return ids, training, scoring


def read_whole_or_refused(pool, shard, written: pa.Table) -> str:
    """'identical' when the round would read exactly ``written``; 'refused' when it stops naming ``shard``."""
    try:
        ids, training, scoring = read_like_a_round(str(pool))
    except (InputError, OSError) as e:        # a reader's OSError names the shard; round.py refuses on it
        assert str(shard) in str(e), e
        return "refused"
    assert ids == written.column("id").to_pylist()
    assert training.equals(written) and scoring.equals(written)
    return "identical"


def damaged_pool(tmp_path, damage, shards: int = 1) -> tuple[Path, pa.Table]:
    """A raw pool of 64 random images whose first shard's bytes went through ``damage``; (that shard,
    the id and image columns as written)."""
    make_raw_pool(tmp_path / "pool", 64, shards=shards)
    shard = tmp_path / "pool" / "part-00000.parquet"
    written = pa.concat_tables([pq.read_table(tmp_path / "pool" / f"part-{k:05d}.parquet", columns=["id", "image"])
                                for k in range(shards)])
    shard.write_bytes(bytes(damage(bytearray(shard.read_bytes()))))
    return shard, written


@pytest.mark.parametrize("seed", range(40))
def test_a_damaged_shard_reads_as_written_or_is_refused_naming_it(tmp_path, seed):
    """Truncations and flipped bytes anywhere in a shard, read as a round reads it, images included (an
    id-only read passed the 18 in 20 flips that land in image pages)."""
    rng = np.random.default_rng(seed)

    def damage(data: bytearray) -> bytearray:
        if seed % 2:
            return data[: int(rng.integers(0, len(data)))]                  # truncated
        for at in rng.integers(0, len(data), int(rng.integers(1, 16))):     # bytes flipped
            data[at] ^= int(rng.integers(1, 256))
        return data

    shard, written = damaged_pool(tmp_path, damage)
    read_whole_or_refused(tmp_path / "pool", shard, written)


def test_damaged_page_headers_are_refused_never_read_short(tmp_path):
    """Page headers carry no CRC. One bit flipped in turn in the first 24 bytes of every page header of the
    id and image columns of the first of two shards: each read is refused naming the shard, or is exactly
    what was written. Some flips (a page's type) used to end a column early without an error: the pool's
    ids, the training sides or the scoring read silently lacked the shard's rows."""
    make_raw_pool(tmp_path / "clean", 64, shards=2)
    columns = pq.ParquetFile(tmp_path / "clean" / "part-00000.parquet").metadata.row_group(0)
    pages = [offset for c in range(2) for offset in (columns.column(c).dictionary_page_offset,
                                                      columns.column(c).data_page_offset)]
    outcomes = collections.Counter()
    for case, (page, at, bit) in enumerate(itertools.product(pages, range(24), (0x01, 0x02, 0x10))):

        def damage(data: bytearray) -> bytearray:
            data[page + at] ^= bit
            return data

        shard, written = damaged_pool(tmp_path / str(case), damage, shards=2)
        outcomes[read_whole_or_refused(tmp_path / str(case) / "pool", shard, written)] += 1
    assert sum(outcomes.values()) == 4 * 24 * 3 and outcomes["refused"] > outcomes["identical"] > 0
