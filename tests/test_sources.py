"""labeling/sources.py: an export of a prepared pool gives the labeler the original files (bytes, a signed URL of
the source object, or its plain URI), names an original that is gone or changed, and leaves pools with no known
source as they were."""
from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import urllib.request

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import finished_round, make_raw_pool, s3_uri
from PIL import Image

from vaal_dist.cli import main
from vaal_dist.errors import InputError
from vaal_dist.labeling import export
from vaal_dist.labeling.export import export_selection
from vaal_dist.pool.io import POOL_META, SOURCE_MTIME, SOURCE_SIZE, PoolMeta, pool_state, read_pool_meta, write_pool
from vaal_dist.pool.prepare import prepare_pool


CLASSES = ["cat", "dog"]
SIDE = 96


def photo(rng) -> bytes:
    """A 96x96 RGB PNG of noise: no two photos share their pixels."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def photos(n: int = 5, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{CLASSES[i % 2]}/{i}.png": photo(rng) for i in range(n)}


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def export_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("vaal_dist.labeling")]


def prepared(tmp_path, files: dict[str, bytes], selected: list[str]) -> tuple[str, str]:
    """(round folder, source folder): the files in class folders, prepared at 32 px, a round that selected
    ``selected``."""
    source = tmp_path / "photos"
    for rel, data in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    prepare_pool(str(source), str(tmp_path / "pool"), image_size=32, files_per_shard=2)
    return finished_round(tmp_path / "round", tmp_path / "pool", tmp_path / "labeled.parquet", selected), str(source)


def test_a_folder_prepared_at_32_px_exports_its_96_px_originals(ray_local, tmp_path, caplog):
    files = photos()
    selected = ["dog/3.png", "cat/0.png", "cat/4.png"]
    out, source = prepared(tmp_path, files, selected)
    assert read_pool_meta(str(tmp_path / "pool")).source == source
    with caplog.at_level(logging.INFO, logger="vaal_dist"):
        tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"))[0]).read())
    assert export_lines(caplog) == []                            # no "records no source files" line
    for task, image_id in zip(tasks, selected, strict=True):
        head, data = task["data"]["image"].split(",", 1)
        assert head == "data:image/png;base64"
        original = base64.b64decode(data)
        assert original == files[image_id]
        assert decoded(original).shape == (SIDE, SIDE, 3)
        np.testing.assert_array_equal(decoded(original), decoded(files[image_id]))
    coco = json.loads(open(export_selection(out, "coco", str(tmp_path / "coco"))[0]).read())
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [(i, SIDE, SIDE) for i in selected]


@pytest.mark.parametrize("what", ["gone", "resized", "touched"])
def test_an_original_gone_or_changed_since_prepare_is_named_and_nothing_is_written(ray_local, tmp_path, capsys,
                                                                                   monkeypatch, what):
    """The changed original is in the last of three parts: the two written before it are removed."""
    files = photos()
    out, source = prepared(tmp_path, files, ["cat/0.png", "dog/1.png", "cat/2.png"])
    changed = os.path.join(source, "cat/2.png")
    size, mtime_ns = os.stat(changed).st_size, os.stat(changed).st_mtime_ns
    if what == "gone":
        os.remove(changed)
    elif what == "resized":
        with open(changed, "ab") as f:
            f.write(b"\0")
    else:                                   # same bytes, a later modification time: rewritten by someone
        stat = os.stat(changed)
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(export, "READ_ORIGINALS", 1)
    code = main(["export", out, "--to", "label-studio", "--dest", str(tmp_path / "ls"), "--max-tasks", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    named = f"vaal-dist: error: image 'cat/2.png': its original '{changed}'"
    if what == "gone":
        assert err[0] == f"{named} is gone since prepare"
    else:
        now = os.stat(changed)
        assert err[0] == (f"{named} changed since prepare (size {size:,} -> {now.st_size:,} bytes, modified "
                          f"{mtime_ns} -> {now.st_mtime_ns} ns)")
        assert now.st_size - size == (what == "resized")
    assert not (tmp_path / "ls").exists()


def test_pools_with_no_known_source_keep_their_own_images_and_say_so_once(tmp_path, caplog):
    """The embedded MNIST, synthetic pools and pools written by hand: pool.json has no source, as before."""
    ids = make_raw_pool(tmp_path / "pool", 6, size=8)
    doc = json.loads((tmp_path / "pool" / POOL_META).read_text())
    assert doc == {"format": "vaal_dist.pool", "version": 1, "encoding": "raw", "image_shape": [8, 8, 1]}
    state = pool_state(str(tmp_path / "pool"))
    out = finished_round(tmp_path / "round", tmp_path / "pool", tmp_path / "labeled.parquet", ids[:2])
    with caplog.at_level(logging.INFO, logger="vaal_dist"):
        tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES)[0]).read())
    assert export_lines(caplog) == [
        f"export: pool {tmp_path / 'pool'} records no source files; the tasks show the pool's own images (8x8 pixels)"]
    assert [decoded(base64.b64decode(t["data"]["image"].split(",", 1)[1])).shape for t in tasks] == [(8, 8)] * 2
    assert pool_state(str(tmp_path / "pool")) == state
    with pytest.raises(InputError, match="--link source writes each original's s3:// or gs:// URI"):
        export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES, links="source")
    with pytest.raises(InputError, match="records no source folder .* so --source cannot stand in for one"):
        export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES, source=str(tmp_path))
    assert not (tmp_path / "csv").exists()


@pytest.mark.parametrize("image_id", ["../secret.png", "/etc/x.png", "cat//0.png", "cat/./0.png", "a\\..\\b.png"])
def test_a_hand_written_pool_cannot_send_an_export_outside_its_source_folder(tmp_path, image_id):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(photo(np.random.default_rng(0)))
    write_pool(str(tmp_path / "pool"), [pq.read_table(_one_row_shard(tmp_path, image_id))],
               PoolMeta("raw", (2, 2, 1), str(tmp_path / "src")))
    out = finished_round(tmp_path / "round", tmp_path / "pool", tmp_path / "labeled.parquet", [image_id])
    with pytest.raises(InputError, match="is not a file path under the pool's source folder"):
        export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES)
    assert not (tmp_path / "csv").exists()


def _one_row_shard(tmp_path, image_id: str) -> str:
    path = str(tmp_path / "row.parquet")
    pq.write_table(pa.table({"id": [image_id], "image": [b"\0" * 4], SOURCE_SIZE: [1], SOURCE_MTIME: [1]}), path)
    return path


def test_a_source_that_is_not_a_string_is_a_bad_pool_json(tmp_path):
    make_raw_pool(tmp_path / "pool", 2, size=4)
    doc = json.loads((tmp_path / "pool" / POOL_META).read_text())
    (tmp_path / "pool" / POOL_META).write_text(json.dumps({**doc, "source": ["/"]}))
    with pytest.raises(InputError, match="not a valid pool description"):
        read_pool_meta(str(tmp_path / "pool"))


@pytest.mark.slow
def test_a_bucket_source_is_linked_by_a_signed_url_of_its_own_objects_or_its_plain_uri(ray_local, s3_endpoint,
                                                                                          tmp_path):
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    s3.create_bucket(Bucket="bucket-1")
    files = photos(4, seed=1)
    for key, data in files.items():
        s3.put_object(Bucket="bucket-1", Key=f"originals/{key}", Body=data)
    source = s3_uri(s3_endpoint, "originals")
    prepare_pool(source, str(tmp_path / "pool"), image_size=32)
    recorded = read_pool_meta(str(tmp_path / "pool")).source
    assert recorded == source.replace("testing:testing@", "***@")
    selected = ["dog/1.png", "cat/2.png"]
    out = finished_round(tmp_path / "round", tmp_path / "pool", tmp_path / "labeled.parquet", selected)
    dest = s3_uri(s3_endpoint, "export")
    with pytest.raises(InputError, match="hides the credentials of its source .*: give it again with --source"):
        export_selection(out, "label-studio", dest)

    files_written = export_selection(out, "label-studio", dest, source=source, expires_s=600)
    tasks = json.loads(s3.get_object(Bucket="bucket-1", Key="export/tasks-00001.json")["Body"].read())
    for task, image_id in zip(tasks, selected, strict=True):
        url = task["data"]["image"]
        assert f"/bucket-1/originals/{image_id}?" in url and "X-Amz-Expires=600" in url
        with urllib.request.urlopen(url) as response:          # no credentials but the URL's own
            assert response.read() == files[image_id]
    exported = {o["Key"] for o in s3.list_objects_v2(Bucket="bucket-1", Prefix="export/")["Contents"]}
    assert exported - {"export/"} == {"export/tasks-00001.json", "export/labeling-config.xml"}    # no copy
    assert len(files_written) == 2

    csv_file = export_selection(out, "csv", str(tmp_path / "csv"), source=source, links="source")[0]
    with open(csv_file, newline="") as f:
        assert [row["image"] for row in csv.DictReader(f)] == [f"s3://bucket-1/originals/{i}" for i in selected]

    s3.put_object(Bucket="bucket-1", Key="originals/cat/2.png", Body=files["cat/2.png"] + b"\0")
    with pytest.raises(InputError, match=r"image 'cat/2.png': its original '.*/originals/cat/2.png.*' changed since"):
        export_selection(out, "label-studio", s3_uri(s3_endpoint, "export-2"), source=source)
    s3.delete_object(Bucket="bucket-1", Key="originals/cat/2.png")
    with pytest.raises(InputError, match=r"image 'cat/2.png': its original .* is gone since prepare"):
        export_selection(out, "label-studio", s3_uri(s3_endpoint, "export-2"), source=source)
    assert "Contents" not in s3.list_objects_v2(Bucket="bucket-1", Prefix="export-2/")


@pytest.mark.slow
def test_a_local_source_exported_to_a_bucket_puts_the_originals_beside_the_tasks(ray_local, s3_endpoint, tmp_path):
    """Not in a bucket, the original cannot be signed where it lies: its bytes are written under DEST/images/."""
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    s3.create_bucket(Bucket="bucket-1")
    files = photos(3, seed=2)
    out, _ = prepared(tmp_path, files, ["cat/2.png", "dog/1.png"])
    export_selection(out, "label-studio", s3_uri(s3_endpoint, "local-export"), expires_s=600)
    tasks = json.loads(s3.get_object(Bucket="bucket-1", Key="local-export/tasks-00001.json")["Body"].read())
    for task, image_id in zip(tasks, ["cat/2.png", "dog/1.png"], strict=True):
        with urllib.request.urlopen(task["data"]["image"]) as response:
            assert response.read() == files[image_id]
