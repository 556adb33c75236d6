"""prepare_pool: folders and buckets of JPEG/PNG files -> raw pools; hostile files; resume; S3 on loopback."""
import io
import json
import os
import runpy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import flat_grey16_png, png_bytes, png_header_only, s3_uri
from vaal_dist.cli import main
from vaal_dist.config import RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.errors import InputError
from vaal_dist.folder_lock import writer_lock
from vaal_dist.pool.io import PoolMeta, read_pool_ids, read_pool_meta
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.prepare import ShardSettings, decode_file, prepare_pool, prepare_shard
from vaal_dist.round import run_round

JOB = Path(__file__).resolve().parents[1] / "jobs" / "prepare_pool.py"


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg_bytes(rng, size: int = 64) -> bytes:
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "JPEG")


def pool_table(pool: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(pool.glob("part-*.parquet"))])


def error_reports(pool: Path) -> dict[str, str]:
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(pool.glob("errors-*.pq"))]).to_pylist()
    return {r["id"]: r["reason"] for r in rows}


def pixels(table: pa.Table, file_id: str, shape) -> np.ndarray:
    row = table.column("id").to_pylist().index(file_id)
    return np.frombuffer(table.column("image")[row].as_py(), np.uint8).reshape(shape)


def test_class_folders_become_labels_ids_are_relative_paths_and_runs_are_stable(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "train"
    write_files(src, {"dog/b.png": png_bytes(rng), "cat/a.png": png_bytes(rng, 50),
                      "cat/deep/c.JPG": jpeg_bytes(rng), "dog/d.jpeg": jpeg_bytes(rng)})
    summary = prepare_pool(str(src), str(tmp_path / "pool"), image_size=8, files_per_shard=3)

    pool = tmp_path / "pool"
    assert sorted(read_pool_ids(str(pool)).to_pylist()) == ["cat/a.png", "cat/deep/c.JPG", "dog/b.png", "dog/d.jpeg"]
    assert read_pool_meta(str(pool)) == PoolMeta("raw", (8, 8, 3), str(src))
    assert json.loads((pool / "classes.json").read_text()) == {"cat": 0, "dog": 1}
    table = pool_table(pool)
    recorded = table.select(["source_size", "source_mtime_ns"]).to_pylist()
    assert recorded == [{"source_size": (src / i).stat().st_size, "source_mtime_ns": (src / i).stat().st_mtime_ns}
                        for i in table.column("id").to_pylist()]
    assert dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist())) == {
        "cat/a.png": 0, "cat/deep/c.JPG": 0, "dog/b.png": 1, "dog/d.jpeg": 1}
    with Image.open(src / "cat/a.png") as original:
        expected = np.asarray(original.convert("RGB").resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(pixels(table, "cat/a.png", (8, 8, 3)), expected)
    assert sorted(p.name for p in pool.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    assert summary["files_seen"] == summary["prepared"] == 4 and summary["skipped"] == 0
    assert summary["shards"] == summary["shards_written"] == 2 and summary["classes"] == 2
    assert json.loads((pool / "prepare.json").read_text()) == summary

    prepare_pool(str(src), str(tmp_path / "again"), image_size=8, files_per_shard=3)
    assert pool_table(tmp_path / "again").equals(table)


def test_an_image_over_the_decode_budget_is_skipped_and_reported_by_name(ray_local, tmp_path):
    """The 16-bit 9400 x 9400 PNG (under max_pixels) costs its header read, not 1.6 GB, and is reported."""
    write_files(tmp_path / "src", {"good.png": png_bytes(np.random.default_rng(1)), "deep.png": flat_grey16_png(9_400)})
    summary = prepare_pool(str(tmp_path / "src"), str(tmp_path / "pool"), image_size=4)
    reports = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "pool").glob("errors-*.pq")]).to_pylist()
    needed_mib = 9_400 * 9_400 * (2 + 4) / 2 ** 20        # 2-byte pixels and a 4-byte RGB copy of each
    assert reports == [{"id": "deep.png", "reason": "over the decode budget",
                        "detail": f"9400x9400 I;16 takes {needed_mib:.1f} MiB to decode, over 256 MiB"}]
    assert summary["skipped_by_reason"] == {"over the decode budget": 1} and summary["prepared"] == 1


def test_hostile_files_are_skipped_and_reported_odd_modes_are_converted(ray_local, tmp_path):
    rng = np.random.default_rng(1)
    transparent_red = Image.new("P", (6, 6), 0)
    transparent_red.putpalette([255, 0, 0] * 256)
    write_files(tmp_path / "src", {
        "good.png": png_bytes(rng),
        "UPPER.JPG": jpeg_bytes(rng),
        "png_named.jpg": png_bytes(rng),
        "cmyk.jpg": encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        "palette.png": encode(transparent_red, "PNG", transparency=0),
        "gray16.png": encode(Image.fromarray(np.full((6, 6), 51_000, np.uint16)), "PNG"),
        "rgba.png": encode(Image.new("RGBA", (6, 6), (200, 100, 50, 128)), "PNG"),
        "la.png": encode(Image.new("LA", (6, 6), (200, 0)), "PNG"),
        "truncated.jpg": (lambda data: data[: len(data) // 2])(jpeg_bytes(rng)),
        "zero.jpg": b"",
        "text.jpg": b"this is not a jpeg\n",
        "notes.txt": b"hello",
        "gif.png": encode(Image.new("RGB", (4, 4)), "GIF"),
        "bomb.png": png_header_only(30_000, 30_000),    # over twice PIL's limit: PIL refuses to open it
        "big.png": png_header_only(12_000, 12_000),     # over max_pixels only: refused before decoding
    })
    summary = prepare_pool(str(tmp_path / "src"), str(tmp_path / "pool"), image_size=4, files_per_shard=3)

    pool = tmp_path / "pool"
    expected_skips = {
        "truncated.jpg": "corrupt image", "zero.jpg": "empty file", "text.jpg": "not a JPEG or PNG image",
        "gif.png": "not a JPEG or PNG image", "notes.txt": "not an image extension",
        "bomb.png": "too many pixels", "big.png": "too many pixels"}
    assert error_reports(pool) == expected_skips
    assert sorted(read_pool_ids(str(pool)).to_pylist()) == sorted([
        "UPPER.JPG", "cmyk.jpg", "gray16.png", "good.png", "la.png", "palette.png", "png_named.jpg", "rgba.png"])
    assert summary["skipped_by_reason"] == {"corrupt image": 1, "empty file": 1, "not a JPEG or PNG image": 2,
                                            "not an image extension": 1, "too many pixels": 2}
    assert (summary["files_seen"], summary["prepared"], summary["skipped"], summary["shards"]) == (15, 8, 7, 5)
    assert "label" not in pool_table(pool).column_names and not (pool / "classes.json").exists()

    table = pool_table(pool)
    np.testing.assert_allclose(pixels(table, "cmyk.jpg", (4, 4, 3)), np.broadcast_to([255, 0, 0], (4, 4, 3)),
                               atol=3)
    for file_id, rgb in (("palette.png", [0, 0, 0]), ("la.png", [0, 0, 0]), ("gray16.png", [198, 198, 198])):
        np.testing.assert_array_equal(pixels(table, file_id, (4, 4, 3)), np.broadcast_to(rgb, (4, 4, 3)))
    np.testing.assert_allclose(pixels(table, "rgba.png", (4, 4, 3)), np.broadcast_to([100, 50, 25], (4, 4, 3)),
                               atol=1)


def test_links_are_never_followed_and_those_leading_outside_are_reported(ray_local, tmp_path, capsys, caplog):
    """Real links in the source folder: to a file and a folder outside it, loops up to the source's parent
    and to the source itself, a link inside it, a link to itself, and a FIFO. Only regular files are listed;
    the rest are reported by path with a reason, and nothing hangs."""
    rng = np.random.default_rng(6)
    outside, src = tmp_path / "outside", tmp_path / "src"
    write_files(outside, {"secret.png": png_bytes(rng), "dir/x.png": png_bytes(rng)})
    write_files(src, {"cat/a.png": png_bytes(rng), "dog/b.png": png_bytes(rng)})
    (src / "cat/leak.png").symlink_to(outside / "secret.png")
    (src / "dog/ext").symlink_to(outside / "dir")
    (src / "up").symlink_to("..")                  # a loop through the source's parent
    (src / "dog/loop").symlink_to("..")            # a loop to the source itself
    (src / "cat/again.png").symlink_to("../dog/b.png")
    (src / "cat/self.png").symlink_to("self.png")
    os.mkfifo(src / "cat/pipe.png")                # would block whoever reads it
    with caplog.at_level("WARNING", logger="vaal_dist.pool.prepare"):
        assert main(["prepare", str(src), str(tmp_path / "pool"), "--image-size", "4"]) == 0

    pool = tmp_path / "pool"
    assert sorted(read_pool_ids(str(pool)).to_pylist()) == ["cat/a.png", "dog/b.png"]
    outside_link, inside_link = "link outside the source folder", "link inside the source folder"
    assert error_reports(pool) == {"cat/leak.png": outside_link, "dog/ext": outside_link, "up": outside_link,
                                   "dog/loop": inside_link, "cat/again.png": inside_link,
                                   "cat/self.png": "broken link", "cat/pipe.png": "not a regular file"}
    listing = pq.read_table(pool / "errors-listing.pq").to_pylist()
    assert {r["id"]: r["detail"] for r in listing}["cat/leak.png"] == str((outside / "secret.png").resolve())
    summary = json.loads((pool / "prepare.json").read_text())
    assert (summary["files_seen"], summary["prepared"], summary["skipped"]) == (9, 2, 7)
    assert "skipped 7 (1 broken link, 2 link inside the source folder, 3 link outside the source folder, " \
           "1 not a regular file)" in capsys.readouterr().out
    assert "3 links under" in caplog.text and "lead outside the source folder" in caplog.text

    (tmp_path / "via").symlink_to(src)             # the source itself may be reached through a link
    prepare_pool(str(tmp_path / "via"), str(tmp_path / "pool2"), image_size=4)
    assert pool_table(tmp_path / "pool2").equals(pool_table(pool))
    with pytest.raises(InputError, match="lies inside source"):
        prepare_pool(str(src), str(tmp_path / "via" / "pool"))
    with pytest.raises(InputError, match=r"has no files \(1 links or special files left out, e.g. 'a.png': link "
                                         r"outside the source folder\)"):
        (tmp_path / "only-links").mkdir()
        (tmp_path / "only-links" / "a.png").symlink_to(outside / "secret.png")
        prepare_pool(str(tmp_path / "only-links"), str(tmp_path / "pool3"))
    assert not (tmp_path / "pool3").exists() and not (src / "pool").exists()


def test_grayscale_decode_scales_16_bit_and_composites_alpha():
    settings = ShardSettings(image_size=2, channels=1, max_pixels=10_000, classes=None)
    gray16 = decode_file(encode(Image.fromarray(np.full((5, 5), 65_535, np.uint16)), "PNG"), settings)
    rgba = decode_file(encode(Image.new("RGBA", (5, 5), (255, 255, 255, 0)), "PNG"), settings)
    assert gray16 == bytes([255] * 4) and rgba == bytes(4)


def test_resume_rewrites_only_missing_shards_and_refuses_other_settings(ray_local, tmp_path):
    rng = np.random.default_rng(2)
    src, pool = tmp_path / "src", tmp_path / "pool"
    write_files(src, {f"img-{i}.png": png_bytes(rng, 12) for i in range(5)})
    prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)
    ids = sorted(read_pool_ids(str(pool)).to_pylist())
    mtimes = {p.name: p.stat().st_mtime_ns for p in pool.glob("*-0000*")}

    (pool / "part-00001.parquet").unlink()     # an interrupted prepare: shard 1 and pool.json never written
    (pool / "pool.json").unlink()
    summary = prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)

    assert (summary["shards_written"], summary["shards_reused"], summary["prepared_this_run"]) == (1, 2, 2)
    assert read_pool_ids(str(pool)).to_pylist() == ids == sorted(f"img-{i}.png" for i in range(5))
    assert read_pool_meta(str(pool)) == PoolMeta("raw", (8, 8, 3), str(src))
    now = {p.name: p.stat().st_mtime_ns for p in pool.glob("*-0000*")}
    assert {n for n in now if now[n] != mtimes[n]} == {"part-00001.parquet", "errors-00001.pq"}
    assert not list(pool.glob("*.tmp-*"))

    assert prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)["shards_written"] == 0
    with pytest.raises(InputError, match="prepared from another file listing or with other settings"):
        prepare_pool(str(src), str(pool), image_size=16, files_per_shard=2)
    (src / "img-9.png").write_bytes(png_bytes(rng, 12))
    with pytest.raises(InputError, match="prepared from another file listing"):
        prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)


def test_a_dest_started_before_sources_were_recorded_is_finished_without_them(ray_local, tmp_path):
    """Its shards all read as one pool (the same columns) and its pool.json names no source, as before."""
    rng = np.random.default_rng(4)
    src, pool = tmp_path / "src", tmp_path / "pool"
    write_files(src, {f"img-{i}.png": png_bytes(rng, 12) for i in range(4)})
    prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)
    inputs = json.loads((pool / "prepare-inputs.json").read_text())
    del inputs["records_sources"]                           # as the earlier prepare wrote it
    (pool / "prepare-inputs.json").write_text(json.dumps(inputs))
    kept = pq.read_table(pool / "part-00000.parquet")
    pq.write_table(kept.drop_columns(["source_size", "source_mtime_ns"]), pool / "part-00000.parquet")
    (pool / "part-00001.parquet").unlink()
    (pool / "pool.json").unlink()

    assert prepare_pool(str(src), str(pool), image_size=8, files_per_shard=2)["shards_written"] == 1
    assert pool_table(pool).column_names == ["id", "image"]
    assert len(read_pool_ids(str(pool))) == 4
    assert read_pool_meta(str(pool)) == PoolMeta("raw", (8, 8, 3))


def test_bad_arguments_name_the_input(tmp_path):
    (tmp_path / "empty").mkdir()
    write_files(tmp_path / "texts", {"a.txt": b"x"})
    write_files(tmp_path / "mixed", {"stray.png": b"x", "cat/a.png": b"x"})
    dest = str(tmp_path / "dest")
    for source, kw, match in [
        (tmp_path / "missing", {}, "source '.*missing' does not exist"),
        (tmp_path / "empty", {}, "source '.*empty' has no files"),
        (tmp_path / "texts" / "a.txt", {}, "is not a folder"),
        (tmp_path / "texts", {}, r"has no .jpg/.jpeg/.png files \(e.g. 'a.txt'\)"),
        (tmp_path / "mixed", {}, "image 'stray.png' is not inside a class folder while 'cat/a.png' is"),
        (tmp_path / "mixed", {"channels": 4}, "channels must be 1 .* or 3"),
        (tmp_path / "mixed", {"files_per_shard": 0}, "files_per_shard must be at least 1"),
    ]:
        with pytest.raises(InputError, match=match):
            prepare_pool(str(source), dest, **kw)
    with pytest.raises(InputError, match="lies inside source"):
        prepare_pool(str(tmp_path / "texts"), str(tmp_path / "texts" / "pool"))
    assert not (tmp_path / "dest").exists()


def test_an_unreadable_file_leaves_its_shard_unwritten(tmp_path):
    write_files(tmp_path / "src", {"a.png": png_bytes(np.random.default_rng(3))})
    settings = ShardSettings(image_size=4, channels=3, max_pixels=10_000, classes=None)
    row = prepare_shard({"shard": 0, "ids": ["a.png", "gone.png"]}, str(tmp_path / "src"), str(tmp_path / "pool"),
                        settings, read_threads=2)
    assert "gone.png" in row["read_error"] and not (tmp_path / "pool").exists()


def test_cli_and_job_print_the_pool_and_counts(ray_local, tmp_path, capsys):
    write_files(tmp_path / "src", {"a.png": png_bytes(np.random.default_rng(4)), "b.jpg": b""})
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "pool"), "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert f"pool: {tmp_path / 'pool'}" in out and "prepared 1 of 2 files in 1 shards" in out
    assert "skipped 1 (1 empty file)" in out
    job_main = runpy.run_path(str(JOB))["main"]
    assert job_main([str(tmp_path / "nowhere"), str(tmp_path / "pool2")]) == 2
    assert "vaal-dist: error: source" in capsys.readouterr().err
    write_files(tmp_path / "all-bad", {"a.png": b""})
    assert job_main([str(tmp_path / "all-bad"), str(tmp_path / "pool3")]) == 2
    assert "no file under" in capsys.readouterr().err
    assert (tmp_path / "pool3" / "prepare.json").exists() and not (tmp_path / "pool3" / "pool.json").exists()


@pytest.mark.slow
def test_prepare_from_and_to_s3_then_a_random_round(ray_local, s3_endpoint, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="bucket-1")
    rng = np.random.default_rng(5)
    uploads = {"cat/1.png": png_bytes(rng), "cat/2.png": png_bytes(rng), "dog/3.png": png_bytes(rng),
               "dog/4.png": png_bytes(rng), "dog/broken.jpg": b"not a jpeg"}
    for key, data in uploads.items():
        s3.put_object(Bucket="bucket-1", Key=f"photos/{key}", Body=data)

    source = s3_uri(s3_endpoint, "photos")
    local = prepare_pool(source, str(tmp_path / "local"), files_per_shard=2)
    remote_pool = s3_uri(s3_endpoint, "pool")
    remote = prepare_pool(source, remote_pool, files_per_shard=2)

    ids = ["cat/1.png", "cat/2.png", "dog/3.png", "dog/4.png"]
    assert sorted(read_pool_ids(str(tmp_path / "local")).to_pylist()) == ids
    assert sorted(read_pool_ids(remote_pool).to_pylist()) == ids
    assert read_pool_meta(remote_pool) == PoolMeta("raw", (32, 32, 3), source.replace("testing:testing@", "***@"))
    assert local["skipped_by_reason"] == remote["skipped_by_reason"] == {"not a JPEG or PNG image": 1}
    assert "testing:testing@" not in json.dumps(remote)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="bucket-1", Prefix="pool/")["Contents"]}
    keys.discard("pool/")    # the directory marker pyarrow's create_dir puts on S3
    assert keys == {f"pool/{n}" for n in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
                                          "errors-00000.pq", "errors-00001.pq", "errors-00002.pq", "classes.json",
                                          "errors-listing.pq", "prepare-inputs.json", "prepare.json", "pool.json")}
    assert remote["files_seen"] == 5       # S3 has no links: every key is an object, listed as a file

    write_manifest(str(tmp_path / "labeled.parquet"), ["cat/1.png"])
    result = run_round(RoundConfig(pool=remote_pool, labeled=str(tmp_path / "labeled.parquet"),
                                   out=str(tmp_path / "round"), budget=2, strategy="random",
                                   setup=Setup(preset("cpu"), scoring=ScoringConfig(batch_size=8, num_actors=1))))
    selected = pq.read_table(result.selection).column("id").to_pylist()
    assert len(set(selected)) == 2 and set(selected) <= set(ids) - {"cat/1.png"}


def test_a_prepare_into_a_dest_another_writer_holds_is_refused_naming_it_and_writes_nothing(tmp_path):
    """Refused before its first write (prepare-inputs.json), so before Ray is needed."""
    write_files(tmp_path / "src", {"a.png": png_bytes(np.random.default_rng(0))})
    dest = str(tmp_path / "pool")
    with writer_lock(dest) as holder:
        with pytest.raises(InputError, match=f"'{dest}' is in use by another run: host .*, pid {os.getpid()}, "
                                             f"started 20") as refused:
            prepare_pool(str(tmp_path / "src"), dest)
        assert "\n" not in str(refused.value)
        assert os.listdir(dest) == [holder.filename]
    assert not os.path.exists(dest)
