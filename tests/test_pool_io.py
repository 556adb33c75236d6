"""Pools, manifests and image decoding: what is read, and the errors that name the bad input."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_raw_pool, png_bytes
from vaal_dist.errors import InputError
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import (PoolMeta, read_manifest, read_pool_ids, read_pool_meta, write_atomic,
                               write_manifest, write_pool)
from vaal_dist.pool.prepare import ShardSettings, decode_file


def test_raw_pool_round_trips_ids_and_meta(tmp_path):
    ids = make_raw_pool(tmp_path / "p", 50, size=16, channels=3, shards=3)
    assert sorted(read_pool_ids(str(tmp_path / "p")).to_pylist()) == sorted(ids)
    assert read_pool_meta(str(tmp_path / "p")) == PoolMeta("raw", (16, 16, 3))
    assert read_pool_meta("file://" + str(tmp_path / "p")).channels == 3


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
