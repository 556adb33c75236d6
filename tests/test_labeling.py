"""The labeling loop's files: export formats and their splitting, images by id as data: or presigned URLs, imports
of Label Studio / COCO / CSV answers, per-id refusals that write nothing, labels accumulating across rounds, and
the labels a round's task models read from labels.parquet when the pool has none."""
from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (CLASSES, choice, finished_round, label_studio_task, make_raw_pool, png_bytes, s3_uri,
                      unlabeled_pool)
from PIL import Image

from vaal_dist.config import RoundConfig
from vaal_dist.errors import InputError
from vaal_dist.cli import main
from vaal_dist.folder_lock import LockLost, writer_lock
from vaal_dist.labeling import export
from vaal_dist.labeling.export import export_selection
from vaal_dist.labeling import import_labels as import_module
from vaal_dist.labeling.import_labels import import_labels
from vaal_dist.labeling.labels import add_labels, check_labels, read_labels
from vaal_dist.pool.io import PoolMeta, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import resolve, write_json
from vaal_dist.round_inputs import RoundInputs


@pytest.fixture
def round1(tmp_path):
    """(round folder, pool ids, pixels): 40 images, 5 labeled, the round selected 7 (not in rank = pool order)."""
    ids, pixels = unlabeled_pool(tmp_path / "pool")
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    selected = ids[[30, 7, 12, 25, 8, 39, 16]]
    return finished_round(tmp_path / "round-1", tmp_path / "pool", tmp_path / "labeled.parquet", selected), ids, pixels


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def write_export(path, tasks) -> str:
    path.write_text(json.dumps(tasks))
    return str(path)


# --- export ---------------------------------------------------------------------------------------------------

def test_label_studio_export_is_the_selection_in_rank_order_with_images_and_the_classes_as_choices(round1, tmp_path):
    out, ids, pixels = round1
    files = export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES, max_tasks=3)
    assert [f.rsplit("/", 1)[1] for f in files] == ["tasks-00001.json", "tasks-00002.json", "tasks-00003.json",
                                                  "labeling-config.xml"]
    tasks = [t for f in files[:3] for t in json.loads(open(f).read())]
    assert [len(json.loads(open(f).read())) for f in files[:3]] == [3, 3, 1]       # 7 tasks, at most 3 a file
    selection = pq.read_table(f"{out}/selection.parquet").to_pydict()
    assert [t["data"]["id"] for t in tasks] == selection["id"]
    assert [t["data"]["rank"] for t in tasks] == list(range(1, 8))
    assert [t["data"]["score"] for t in tasks] == selection["score"]
    assert {t["data"]["strategy"] for t in tasks} == {"entropy"}
    for t in tasks:
        head, data = t["data"]["image"].split(",", 1)
        assert head == "data:image/png;base64"
        index = list(ids).index(t["data"]["id"])
        assert np.array_equal(png_pixels(base64.b64decode(data)), pixels[index, :, :, 0])
    config = ET.parse(files[3]).getroot()
    assert [c.get("value") for c in config.iter("Choice")] == CLASSES
    assert config.find("Image").get("value") == "$image"


@pytest.mark.parametrize("to", ["label-studio", "coco", "csv"])
def test_files_are_cut_at_a_byte_budget_each_as_full_as_it_fits(round1, tmp_path, monkeypatch, to):
    """A local export's data: URLs make tasks large: a file also ends before the task that would take it past
    max_bytes. READ_ROWS = 2: the 7 images are read 2 at a time, the files built across those reads."""
    out, _, _ = round1
    monkeypatch.setattr(export, "READ_ROWS", 2)
    whole = open(export_selection(out, to, str(tmp_path / "whole"), classes=CLASSES)[0], "rb").read()
    budget = len(whole) * 2 // 5
    files = [f for f in export_selection(out, to, str(tmp_path / "cut"), classes=CLASSES, max_bytes=budget)
             if not f.endswith(".xml")]
    sizes = [os.path.getsize(f) for f in files]
    assert len(files) >= 3 and max(sizes) <= budget
    tasks = [exported_ids(to, open(f).read()) for f in files]
    assert [i for part in tasks for i in part] == exported_ids(to, whole.decode())
    one_task_more = export_selection(out, to, str(tmp_path / "more"), classes=CLASSES, max_tasks=len(tasks[0]) + 1)
    assert os.path.getsize(one_task_more[0]) > budget         # the first file holds as many tasks as fit
    alone = export_selection(out, to, str(tmp_path / "alone"), classes=CLASSES, max_bytes=10)
    assert [len(exported_ids(to, open(f).read())) for f in alone if not f.endswith(".xml")] == [1] * 7


def exported_ids(to: str, text: str) -> list[str]:
    if to == "label-studio":
        return [t["data"]["id"] for t in json.loads(text)]
    if to == "coco":
        return [i["file_name"] for i in json.loads(text)["images"]]
    return [row.split(",")[0] for row in text.splitlines()[1:]]


def test_coco_and_csv_exports_name_each_image_by_its_pool_id(round1, tmp_path):
    out, ids, _ = round1
    coco = json.loads(open(export_selection(out, "coco", str(tmp_path / "coco"), classes=CLASSES)[0]).read())
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    assert [i["file_name"] for i in coco["images"]] == selection
    assert [(i["id"], i["width"], i["height"]) for i in coco["images"]] == [(r, 8, 8) for r in range(1, 8)]
    assert coco["categories"] == [{"id": 0, "name": "zero"}, {"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    rows = open(export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES)[0]).read().splitlines()
    assert rows[0] == "id,rank,score,strategy,image,predicted,confidence"
    assert [r.split(",")[:2] for r in rows[1:]] == [[i, str(k)] for k, i in enumerate(selection, 1)]


def test_an_encoded_pool_exports_its_own_image_bytes(tmp_path):
    rng = np.random.default_rng(3)
    images = [png_bytes(rng, size=12 + i) for i in range(4)]
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ["a", "b", "c", "d"], "image": images})], PoolMeta())
    write_manifest(str(tmp_path / "labeled.parquet"), ["a"])
    write_json(str(tmp_path / "pool" / "classes.json"), {"cat": 1, "dog": 0})     # prepare's folder -> label
    out = finished_round(tmp_path / "r", tmp_path / "pool", tmp_path / "labeled.parquet", ["d", "b"])
    files = export_selection(out, "label-studio", str(tmp_path / "ls"))
    tasks = json.loads(open(files[0]).read())
    assert [base64.b64decode(t["data"]["image"].split(",", 1)[1]) for t in tasks] == [images[3], images[1]]
    assert [c.get("value") for c in ET.parse(files[1]).getroot().iter("Choice")] == ["dog", "cat"]


def test_an_s3_export_links_each_image_by_a_presigned_url_that_serves_it(round1, s3_endpoint):
    out, ids, pixels = round1
    boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").create_bucket(Bucket="bucket-1")
    files = export_selection(out, "label-studio", s3_uri(s3_endpoint, "export"), classes=CLASSES, expires_s=600)
    tasks = json.loads(boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").get_object(
        Bucket="bucket-1", Key="export/tasks-00001.json")["Body"].read())
    assert len(files) == 2 and len(tasks) == 7
    for t in tasks:
        url = t["data"]["image"]
        assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
        with urllib.request.urlopen(url) as response:          # no credentials but the URL's own
            served = response.read()
        assert np.array_equal(png_pixels(served), pixels[list(ids).index(t["data"]["id"]), :, :, 0])


def test_presigned_urls_are_signed_for_the_region_pyarrow_writes_to(round1, s3_endpoint, monkeypatch):
    """Without ?region=, pyarrow takes AWS_REGION (or the bucket's own region, on AWS), which boto3's default
    ignores: a URL signed for another region than the bucket's is refused by S3 (moto does not check it)."""
    out, ids, pixels = round1
    boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").create_bucket(Bucket="bucket-1")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    dest = s3_uri(s3_endpoint, "export").replace("&region=us-east-1", "")
    assert resolve(dest)[0].region == "ap-south-1"
    files = export_selection(out, "csv", dest, classes=CLASSES, expires_s=600)
    rows = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").get_object(
        Bucket="bucket-1", Key=files[0].split("bucket-1/", 1)[1].split("?")[0])["Body"].read().decode().splitlines()
    image_id, url = rows[1].split(",")[0], rows[1].split(",")[rows[0].split(",").index("image")]
    assert "%2Fap-south-1%2Fs3%2Faws4_request" in url           # X-Amz-Credential=KEY/DATE/REGION/s3/aws4_request
    with urllib.request.urlopen(url) as response:
        assert np.array_equal(png_pixels(response.read()), pixels[list(ids).index(image_id), :, :, 0])


def test_export_refusals_name_what_is_missing(round1, tmp_path):
    out, _, _ = round1
    with pytest.raises(InputError, match="has no classes.json: name the classes"):
        export_selection(out, "label-studio", str(tmp_path / "ls"))
    with pytest.raises(InputError, match="holds no finished round"):
        export_selection(str(tmp_path), "csv", str(tmp_path / "x"), classes=CLASSES)
    with pytest.raises(InputError, match="not ftp://"):
        export_selection(out, "csv", "ftp://host/x", classes=CLASSES)
    assert not (tmp_path / "ls").exists()


def test_export_needs_no_labeled_manifest_so_a_hidden_one_does_not_stop_it(round1, tmp_path):
    """run.json hides a URI's credentials as ***; export reads the pool, never the labeled manifest."""
    out, _, _ = round1
    finished_round(out, tmp_path / "pool", "s3://KEY:***@bucket/labeled.parquet",
                   pq.read_table(f"{out}/selection.parquet").column("id").to_pylist())
    tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES)[0]).read())
    assert len(tasks) == 7
    with pytest.raises(InputError, match="give it again with --labeled"):
        import_labels(write_export(tmp_path / "e.json", [label_studio_task(tasks[0]["data"]["id"], choice("one"))]),
                      out, classes=CLASSES)


def test_an_export_of_images_the_pool_lost_is_refused_before_any_file_is_written(round1, tmp_path, monkeypatch):
    """Images are read READ_ROWS at a time as the files are written: the lost one, in the last read, is found by
    a scan of the pool's ids first."""
    out, ids, _ = round1
    monkeypatch.setattr(export, "READ_ROWS", 2)
    selected = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    finished_round(out, tmp_path / "pool", tmp_path / "labeled.parquet", [*selected, "im/gone"])
    with pytest.raises(InputError, match=r"no longer holds 1 selected images, e.g. \['im/gone'\]"):
        export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES, max_tasks=3)   # in part 3
    assert not (tmp_path / "ls").exists()


@pytest.mark.parametrize("dest_there", [False, True])
def test_an_image_refused_in_a_later_part_leaves_no_part_written(tmp_path, monkeypatch, dest_there):
    """Parts are written as the images are read: one that cannot be shown (a raw image of the wrong size, here
    in the third part) is named, and the parts already written are removed, the folder too if the export made it."""
    ids, _ = unlabeled_pool(tmp_path / "pool")
    shard = sorted((tmp_path / "pool").glob("part-*.parquet"))[2]
    table = pq.read_table(shard)
    short = table.column("image").to_pylist()
    short[3] = short[3][:-1]
    write_parquet(str(shard), table.set_column(1, "image", pa.array(short, pa.binary())))
    bad = table.column("id")[3].as_py()
    out = finished_round(tmp_path / "r", tmp_path / "pool", tmp_path / "labeled.parquet", [*ids[10:14], bad])
    monkeypatch.setattr(export, "READ_ROWS", 2)
    if dest_there:
        (tmp_path / "ls").mkdir()
        (tmp_path / "ls" / "notes.txt").write_text("theirs")
    with pytest.raises(InputError, match=f"image '{bad}': 63 bytes, not the 8x8x1 of pool.json"):
        export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES, max_tasks=2)
    left = sorted(p.name for p in (tmp_path / "ls").iterdir()) if (tmp_path / "ls").exists() else None
    assert left == (["notes.txt"] if dest_there else None)


# --- import ---------------------------------------------------------------------------------------------------

def test_a_label_studio_export_gives_exactly_its_annotated_ids_and_labels(round1, tmp_path):
    out, ids, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    export = write_export(tmp_path / "export.json", [
        label_studio_task(selection[0], choice("two", annotator=3)),
        label_studio_task(selection[1], choice("zero"), choice("zero", annotator=2)),   # two annotators agree
        label_studio_task(selection[2]),                                                # not annotated yet
        label_studio_task(selection[3], choice("one", at="2026-11-28T11:00:00")),
    ])
    done = import_labels(export, out, classes=CLASSES)
    assert (done.new, done.labeled, done.unannotated) == (3, 8, 1)
    manifest = pq.read_table(f"{out}/labeled.parquet").column("id").to_pylist()
    assert manifest == list(ids[:5]) + [selection[0], selection[1], selection[3]]
    labels, classes = read_labels(f"{out}/labels.parquet")
    assert classes == CLASSES
    rows = {r["id"]: r for r in labels.to_pylist()}
    assert {i: r["label"] for i, r in rows.items()} == {selection[0]: 2, selection[1]: 0, selection[3]: 1}
    assert rows[selection[0]]["annotator"] == "3"
    assert rows[selection[3]]["time"].isoformat() == "2026-11-28T11:00:00+00:00"
    assert rows[selection[0]]["time"].isoformat() == "2026-11-28T10:00:00.500000+00:00"


def test_a_conflicting_label_is_refused_naming_the_id_and_nothing_is_written(round1, tmp_path):
    out, _, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    export = write_export(tmp_path / "export.json", [
        label_studio_task(selection[0], choice("one")),
        label_studio_task(selection[1], choice("one", annotator=1), choice("two", annotator=2))])
    with pytest.raises(InputError) as refused:
        import_labels(export, out, classes=CLASSES)
    assert f"'{selection[1]}': conflicting labels: 'one' by 1, 'two' by 2" in str(refused.value)
    assert "1 ids have problems" in str(refused.value) and "nothing written" in str(refused.value)
    assert not (tmp_path / "round-1" / "labeled.parquet").exists()
    assert not (tmp_path / "round-1" / "labels.parquet").exists()


def test_every_bad_answer_is_reported_by_its_id_in_one_refusal(round1, tmp_path):
    out, ids, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    export = write_export(tmp_path / "export.json", [
        label_studio_task(selection[0], choice("one")),                       # the one good answer
        label_studio_task("no-such-image", choice("one")),
        label_studio_task(ids[1], choice("one")),                             # in the pool, not selected
        label_studio_task(selection[1], choice("one", cancelled=True)),
        label_studio_task(selection[2], choice(None)),
        label_studio_task(selection[3], choice("seven")),
    ])
    with pytest.raises(InputError) as refused:
        import_labels(export, out, classes=CLASSES)
    message = str(refused.value)
    assert "5 ids have problems" in message
    for expected in ("'no-such-image': not in the pool", f"'{ids[1]}': not in this round's selection",
                     f"'{selection[1]}': annotation 7 was skipped", f"'{selection[2]}': annotation 7 is empty",
                     f"'{selection[3]}': unknown class name 'seven'"):
        assert expected in message
    assert f"'{selection[0]}'" not in message
    assert not (tmp_path / "round-1" / "labeled.parquet").exists()


def test_the_exports_of_one_round_import_together_and_a_second_import_is_refused(round1, tmp_path):
    """export splits a selection into several files; importing them one by one would keep only the last one's
    labels (each import builds on the round's manifest), so they go in one call and a second call is refused."""
    out, ids, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    part1 = write_export(tmp_path / "p1.json", [label_studio_task(selection[0], choice("one"))])
    part2 = write_export(tmp_path / "p2.json", [label_studio_task(selection[4], choice("two"))])
    clash = write_export(tmp_path / "p3.json", [label_studio_task(selection[0], choice("zero", annotator=5))])
    with pytest.raises(InputError, match=f"'{selection[0]}': conflicting labels: 'one' by 1, 'zero' by 5"):
        import_labels([part1, clash], out, classes=CLASSES)
    done = import_labels([part1, part2], out, classes=CLASSES)
    assert (done.new, done.labeled) == (2, 7)
    assert pq.read_table(f"{out}/labeled.parquet").column("id").to_pylist() == [*ids[:5], selection[0], selection[4]]
    labels = read_labels(f"{out}/labels.parquet")[0]
    assert dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist())) == {
        selection[0]: 1, selection[4]: 2}
    written = [tmp_path / "round-1" / name for name in ("labeled.parquet", "labels.parquet")]
    before = [f.read_bytes() for f in written]
    with pytest.raises(InputError, match="exists from an earlier import: pass every export of the round to one"):
        import_labels(part2, out, classes=CLASSES)
    assert [f.read_bytes() for f in written] == before


def test_an_import_stopped_before_its_last_write_runs_again(round1, tmp_path, monkeypatch):
    """The manifest is written last: it is what makes a second import refused, so it must not exist beside
    missing or stale labels (a manifest written first would, with labels.parquet's write failing)."""
    out, ids, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    export = write_export(tmp_path / "e.json", [label_studio_task(selection[0], choice("two"))])
    written = []

    def stopped(uri, *_):
        written.append(uri)
        raise OSError("the machine went away")
    monkeypatch.setattr(import_module, "write_labels", stopped)
    with pytest.raises(OSError, match="went away"):
        import_labels(export, out, classes=CLASSES)
    assert written == [f"{out}/labels.parquet"] and not (tmp_path / "round-1" / "labeled.parquet").exists()
    monkeypatch.undo()
    assert import_labels(export, out, classes=CLASSES).labeled == 6
    assert read_labels(f"{out}/labels.parquet")[0].column("id").to_pylist() == [selection[0]]


def test_coco_and_csv_answers_import_as_label_studio_ones_do(round1, tmp_path):
    out, _, _ = round1
    coco = json.loads(open(export_selection(out, "coco", str(tmp_path / "coco"), classes=CLASSES)[0]).read())
    coco["categories"] = [{"id": 11, "name": "two"}, {"id": 12, "name": "zero"}]    # a tool's own numbering
    coco["annotations"] = [{"id": 1, "image_id": 1, "category_id": 11}, {"id": 2, "image_id": 3, "category_id": 12}]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    selection = [i["file_name"] for i in coco["images"]]
    done = import_labels(str(tmp_path / "coco.json"), out, classes=CLASSES, dest=str(tmp_path / "a" / "m.parquet"))
    assert done.unannotated == 5
    assert dict(zip(*read_labels(str(tmp_path / "a" / "labels.parquet"))[0].select(["id", "label"]).to_pydict()
                    .values())) == {selection[0]: 2, selection[2]: 0}
    (tmp_path / "labels.csv").write_text(f"id,label,annotator\n{selection[4]},one,ann\n{selection[5]},two,\n")
    import_labels(str(tmp_path / "labels.csv"), out, classes=CLASSES, dest=str(tmp_path / "b" / "m.parquet"))
    rows = read_labels(str(tmp_path / "b" / "labels.parquet"))[0].to_pylist()
    assert [(r["id"], r["label"], r["annotator"]) for r in rows] == [(selection[4], 1, "ann"), (selection[5], 2, "")]


def test_labels_accumulate_across_rounds_under_one_list_of_classes(round1, tmp_path):
    out, ids, _ = round1
    sel1 = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    import_labels(write_export(tmp_path / "e1.json", [label_studio_task(sel1[0], choice("one"))]), out,
                  classes=CLASSES)
    sel2 = [ids[20], ids[21]]
    out2 = finished_round(tmp_path / "round-2", tmp_path / "pool", f"{out}/labeled.parquet", sel2)
    e2 = write_export(tmp_path / "e2.json", [label_studio_task(sel2[1], choice("two"))])
    with pytest.raises(InputError, match="must use one list of classes"):
        import_labels(e2, out2, classes=["a", "b", "c"])
    done = import_labels(e2, out2, classes=CLASSES)
    assert done.labeled == 7
    assert pq.read_table(f"{out2}/labeled.parquet").column("id").to_pylist() == [*ids[:5], sel1[0], sel2[1]]
    labels = read_labels(f"{out2}/labels.parquet")[0]
    assert dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist())) == {sel1[0]: 1, sel2[1]: 2}


# --- a round's labels from labels.parquet ----------------------------------------------------------------------

def test_a_pool_without_labels_takes_them_from_labels_parquet_beside_the_manifest(round1, tmp_path):
    out, ids, _ = round1
    sel = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    import_labels(write_export(tmp_path / "e.json", [label_studio_task(sel[0], choice("zero"))]), out,
                  classes=CLASSES)
    cfg = RoundConfig(pool=str(tmp_path / "pool"), labeled=f"{out}/labeled.parquet", out=str(tmp_path / "r2"),
                      budget=2, strategy="entropy")
    inputs = RoundInputs(cfg, PoolMeta("raw", (8, 8, 1)), pa.array([sel[0]]), str(tmp_path / "r2" / "train"))
    assert inputs.imported_labels.to_pydict() == {"id": [sel[0]], "label": [0]}
    # three classes, though only class 0 has a label yet: the task model predicts every class named
    assert check_labels(cfg.pool, pa.array([sel[0]]), inputs.imported_labels) == 3
    with pytest.raises(InputError, match=r"has no label for 1 labeled images, e.g. \['im/000'\]"):
        check_labels(cfg.pool, pa.array([sel[0], ids[0]]), inputs.imported_labels)
    with pytest.raises(InputError, match="no 'label' column and there is no labels.parquet"):
        check_labels(cfg.pool, pa.array([sel[0]]))
    batch = add_labels(pa.table({"id": [ids[0], sel[0]]}), inputs.imported_labels)
    assert batch.column("label").to_pylist() == [None, 0]


def test_a_pool_with_a_label_column_keeps_reading_it(tmp_path):
    ids = make_raw_pool(tmp_path / "pool", 20, size=8, shards=2)
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:4])
    write_parquet(str(tmp_path / "labels.parquet"), pa.table({"id": list(ids[:4]), "label": [9, 9, 9, 9]}))
    cfg = RoundConfig(pool=str(tmp_path / "pool"), labeled=str(tmp_path / "labeled.parquet"), out=str(tmp_path / "o"),
                      budget=2, strategy="entropy")
    assert RoundInputs(cfg, PoolMeta("raw", (8, 8, 1)), pa.array(ids[:4]), "train").imported_labels is None


# --- the commands ---------------------------------------------------------------------------------------------

def test_the_commands_export_and_import_and_print_what_they_wrote(round1, tmp_path, capsys):
    """Through vaal-dist's own entry point: what a user types."""
    out, _, _ = round1
    assert main(["export", out, "--to", "label-studio", "--dest", str(tmp_path / "ls"), "--classes", *CLASSES]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path}/ls/tasks-00001.json",
                                                    f"wrote {tmp_path}/ls/labeling-config.xml"]
    tasks = json.loads((tmp_path / "ls" / "tasks-00001.json").read_text())
    export = write_export(tmp_path / "e.json", [{**tasks[0], "annotations": [choice("zero")]}])
    other = write_export(tmp_path / "f.json", [{**tasks[1], "annotations": [choice("one")]}])
    assert main(["import-labels", export, other, "--round", out, "--classes", *CLASSES]) == 0
    assert capsys.readouterr().out.splitlines() == [f"labeled manifest: {out}/labeled.parquet (7 images, 2 new)",
                                                    f"labels: {out}/labels.parquet"]
    assert main(["export", out, "--to", "csv", "--dest", str(tmp_path / "csv"), "--classes", *CLASSES,
                 "--max-bytes", "600"]) == 0
    parts = sorted((tmp_path / "csv").iterdir())
    assert len(parts) > 1 and all(p.stat().st_size <= 600 for p in parts)
    assert len(capsys.readouterr().out.splitlines()) == len(parts)
    with pytest.raises(SystemExit):
        main(["export", out, "--to", "label-studio", "--dest", "x", "--expires", "604801"])
    capsys.readouterr()
    assert main(["import-labels", str(tmp_path / "missing.json"), "--round", out, "--classes", *CLASSES,
                 "--out", str(tmp_path / "next" / "labeled.parquet")]) == 2
    assert capsys.readouterr().err == f"vaal-dist: error: export '{tmp_path}/missing.json' does not exist\n"


def test_export_reads_only_the_shards_that_hold_selected_ids(round1, tmp_path):
    """The pool is scanned by id: a shard none of whose ids is selected is skipped on its footer's id range, so
    its pages, here garbage, are never read (read, they would fail their checksums)."""
    out, ids, _ = round1
    shards = sorted((tmp_path / "pool").glob("part-*.parquet"))
    finished_round(out, tmp_path / "pool", tmp_path / "labeled.parquet", [ids[30], ids[39], ids[27]])
    data = bytearray(shards[0].read_bytes())           # the first shard holds ids 0..12: none selected
    data[4:len(data) // 2] = bytes(len(data) // 2 - 4)
    shards[0].write_bytes(bytes(data))
    tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES)[0]).read())
    assert [t["data"]["id"] for t in tasks] == [ids[30], ids[39], ids[27]]
    finished_round(out, tmp_path / "pool", tmp_path / "labeled.parquet", [ids[3]])
    with pytest.raises(InputError, match=f"cannot read pool .*: shard .*{shards[0].name}"):
        export_selection(out, "label-studio", str(tmp_path / "ls2"), classes=CLASSES)


def test_an_export_without_annotations_or_in_no_known_format_is_refused(round1, tmp_path):
    out, _, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    with pytest.raises(InputError, match="holds no annotation"):
        import_labels(write_export(tmp_path / "e.json", [label_studio_task(selection[0])]), out, classes=CLASSES)
    with pytest.raises(InputError, match="neither Label Studio's JSON export"):
        import_labels(write_export(tmp_path / "f.json", {"tasks": []}), out, classes=CLASSES)
    (tmp_path / "g.csv").write_text("image,class\nx,one\n")
    with pytest.raises(InputError, match="needs the columns id and label"):
        import_labels(str(tmp_path / "g.csv"), out, classes=CLASSES)
    assert not (tmp_path / "round-1" / "labeled.parquet").exists()


# --- one writer per folder ---------------------------------------------------------------------------------------

def busy(folder) -> str:
    """The start of the refusal of a writer of ``folder`` while this process holds its lock."""
    return f"'{folder}' is in use by another run: host .*, pid {os.getpid()}, started 20"


def test_an_export_into_a_dest_another_writer_holds_is_refused_naming_it_and_writes_nothing(round1, tmp_path):
    out, _, _ = round1
    dest = str(tmp_path / "ls")
    with writer_lock(dest) as holder:
        with pytest.raises(InputError, match=busy(dest)) as refused:
            export_selection(out, "label-studio", dest, classes=CLASSES)
        assert "\n" not in str(refused.value)
        assert os.listdir(dest) == [holder.filename]
    assert not os.path.exists(dest)         # the holder made it and wrote nothing into it
    assert len(export_selection(out, "label-studio", dest, classes=CLASSES)) == 2     # tasks, labeling config


def test_an_import_into_a_folder_another_writer_holds_is_refused_naming_it_and_writes_nothing(round1, tmp_path):
    out, _, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    answers = write_export(tmp_path / "export.json", [label_studio_task(selection[0], choice("one"))])
    before = sorted(os.listdir(out))
    with writer_lock(out) as holder:
        with pytest.raises(InputError, match=busy(out)):
            import_labels(answers, out, classes=CLASSES)
        assert sorted(os.listdir(out)) == sorted([*before, holder.filename])
    assert import_labels(answers, out, classes=CLASSES).new == 1


def taken_over(folder) -> None:
    """What another run that took the folder's lock over does to this one's claim: deletes it."""
    for claim in (tmp for tmp in os.listdir(folder) if tmp.startswith(".lock-writer-")):
        os.remove(os.path.join(folder, claim))


def test_an_export_whose_lock_is_taken_over_writes_no_further_part_and_removes_its_own(round1, tmp_path,
                                                                                         monkeypatch):
    out, _, _ = round1
    dest = tmp_path / "ls"
    real_write = export.write_atomic

    def write_then_lose_the_lock(uri, data):
        real_write(uri, data)
        taken_over(dest)
    monkeypatch.setattr(export, "write_atomic", write_then_lose_the_lock)
    with pytest.raises(LockLost, match="taken over by another run"):
        export_selection(out, "label-studio", str(dest), classes=CLASSES, max_tasks=1)
    assert not dest.exists() or not [f for f in os.listdir(dest) if not f.startswith(".lock-")]


def test_an_import_whose_lock_is_taken_over_writes_no_manifest(round1, tmp_path, monkeypatch):
    out, _, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    answers = write_export(tmp_path / "export.json", [label_studio_task(selection[0], choice("one"))])
    real_write_labels = import_module.write_labels

    def write_then_lose_the_lock(*args):
        real_write_labels(*args)
        taken_over(out)
    monkeypatch.setattr(import_module, "write_labels", write_then_lose_the_lock)
    with pytest.raises(LockLost, match="taken over by another run"):
        import_labels(answers, out, classes=CLASSES)
    assert not os.path.exists(f"{out}/labeled.parquet")


def test_an_import_that_finished_while_another_read_its_answers_is_not_overwritten(round1, tmp_path, monkeypatch):
    """Both imports found no manifest at first; the one that takes the lock second looks again and is refused,
    leaving the first one's manifest and labels as they were."""
    out, ids, _ = round1
    selection = pq.read_table(f"{out}/selection.parquet").column("id").to_pylist()
    first = write_export(tmp_path / "first.json", [label_studio_task(selection[0], choice("one"))])
    second = write_export(tmp_path / "second.json", [label_studio_task(selection[0], choice("two"))])
    real_read_answers = import_module.read_answers
    monkeypatch.setattr(import_module, "read_answers", lambda f: (
        monkeypatch.setattr(import_module, "read_answers", real_read_answers),
        import_labels(first, out, classes=CLASSES), real_read_answers(f))[-1])
    with pytest.raises(InputError, match="labeled.parquet' exists from an earlier import"):
        import_labels(second, out, classes=CLASSES)
    labels, _ = read_labels(f"{out}/labels.parquet")
    assert labels.select(["id", "label"]).to_pylist() == [{"id": selection[0], "label": 1}]
