"""Storage that fails for a while, and writers killed mid-write.

Transient errors (throttling, 5xx, connection resets) are retried a bounded number of times, reads of a shard
resume without yielding a row twice, and errors past the budget end with one line naming the object: unit tests
on local files, then real failing requests from a proxy in front of moto (conftest.FailingS3Proxy). Temporary
files of writers killed by SIGKILL are removed by the next run, never a live writer's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from io import FileIO
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import vaal_dist.pool.shards as shards
import vaal_dist.pool.storage as storage
from conftest import Faults, calm_config, make_raw_pool, round_config, s3_uri
from vaal_dist.errors import StorageError
from vaal_dist.pool.dataset import _read_shard, read_pool
from vaal_dist.pool.io import read_rows
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import STORAGE_ATTEMPTS, TEMPORARY, is_transient, join, remove_stale_temporaries, \
    retrying, write_atomic
from vaal_dist.processes import THIS_MACHINE, process_start

# pyarrow 26's words for the proxy's faults, as the tests below met them for real
RESET_MID_BODY = ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when receiving "
                  "data from the peer; Details: Recv failure: Connection reset by peer")
TRANSIENT_WORDS = [
    "When getting information for key 'd/obj' in bucket 'bucket-1': AWS Error UNKNOWN (HTTP status 503) during "
    "HeadObject operation: No response body.",
    "When listing objects under key 'd/' in bucket 'bucket-1': AWS Error SLOW_DOWN during ListObjectsV2 operation: "
    "Please reduce your request rate. (Request ID: proxy)",
    "When listing objects under key 'd/' in bucket 'bucket-1': AWS Error UNKNOWN (HTTP status 429) during "
    "ListObjectsV2 operation: Unable to parse ExceptionName: TooManyRequests Message: Please reduce your request rate.",
    "When completing multiple part upload for key 'd/new' in bucket 'bucket-1': AWS Error INTERNAL_FAILURE during "
    "CompleteMultipartUpload operation: We encountered an internal error. Please try again.",
    "When getting information for key 'd/obj' in bucket 'bucket-1': AWS Error UNKNOWN (HTTP status 500) during "
    "HeadObject operation: No response body.",
    RESET_MID_BODY,
    "UNAVAILABLE: Connection reset by peer",                   # GCS status codes, as google-cloud-cpp writes them
    "When reading 'b/o': RESOURCE_EXHAUSTED: rate limit exceeded",
]


@pytest.mark.parametrize("error", [OSError(words) for words in TRANSIENT_WORDS]
                         + [ConnectionResetError(104, "Connection reset by peer"), TimeoutError("timed out")])
def test_throttling_5xx_and_resets_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    FileNotFoundError("When getting information for key 'x' in bucket 'b': AWS Error NO_SUCH_KEY"),
    OSError("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject "
            "operation: No response body. (HTTP status 403)"),
    OSError("Unexpected end of stream: Page was smaller (10) than expected (17)"),
    OSError("CRC checksum verification failed"),
    pa.ArrowInvalid("Parquet magic bytes not found in footer. Either the file is corrupted or this is not a "
                    "parquet file."),
    ValueError("AWS Error SLOW_DOWN"),                        # not an I/O error, whatever its words
    # Classified by the error's code where pyarrow writes it, not by words a key's path may hold
    FileNotFoundError("When getting information for key 'UNAVAILABLE/x' in bucket 'b': AWS Error NO_SUCH_KEY during "
                      "HeadObject operation: No response body."),
    FileNotFoundError("When getting information for key 'AWS Error SLOW_DOWN (HTTP status 503)/x' in bucket 'b': AWS "
                      "Error NO_SUCH_KEY during HeadObject operation: No response body."),
    OSError("NOT_FOUND: object 'DEADLINE_EXCEEDED/UNAVAILABLE' not found"),
    StorageError(f"cannot read 'x': the storage kept failing; the last error: {RESET_MID_BODY}"),   # spent
])
def test_damage_denial_and_spent_retries_are_not(error):
    assert not is_transient(error)


def flaky(failures: int, error: Exception = OSError(RESET_MID_BODY)):
    """An operation that raises ``error`` on its first ``failures`` calls, then returns "done"; .calls counts."""
    def operation():
        operation.calls += 1
        if operation.calls <= failures:
            raise error
        return "done"
    operation.calls = 0
    return operation


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backoffs slept, recorded instead of slept."""
    slept = []
    monkeypatch.setattr(storage.time, "sleep", slept.append)
    return slept


def test_retries_back_off_doubling_with_jitter_until_the_operation_succeeds(waits):
    operation = flaky(STORAGE_ATTEMPTS - 1)
    assert retrying("cannot read 'x'", operation) == "done"
    assert operation.calls == STORAGE_ATTEMPTS
    nominal = [min(storage.BACKOFF_CAP_S, storage.BACKOFF_S * 2 ** k) for k in range(STORAGE_ATTEMPTS - 1)]
    assert all(n / 2 <= w <= n for w, n in zip(waits, nominal, strict=True)), (waits, nominal)


def test_spent_retries_end_with_one_line_naming_the_object(waits):
    operation = flaky(10 ** 6, OSError(RESET_MID_BODY.replace("; ", ";\n")))      # a library's two-line error
    with pytest.raises(StorageError) as raised:
        retrying("cannot read 's3://key:SECRET@bucket/pool/pool.json'", operation)
    assert operation.calls == STORAGE_ATTEMPTS and len(waits) == STORAGE_ATTEMPTS - 1
    message = str(raised.value)
    assert message.startswith("cannot read 's3://***@bucket/pool/pool.json': the storage kept failing, "
                              f"{STORAGE_ATTEMPTS} attempts") and "\n" not in message and "SECRET" not in message
    assert "NETWORK_CONNECTION" in message and isinstance(raised.value.__cause__, OSError)


def test_other_errors_are_not_retried(waits):
    operation = flaky(1, OSError("CRC checksum verification failed"))
    with pytest.raises(OSError, match="CRC"):
        retrying("cannot read 'x'", operation)
    assert operation.calls == 1 and waits == []


# --- a shard read resumes after the rows it yielded -------------------------------------------------------------

class FlakyFiles:
    """Local files whose read calls fail with the words of a reset GetObject body: the calls numbered in
    ``failing`` (counted over every file opened; None: every call from ``from_call`` on)."""

    def __init__(self, failing: set[int] = frozenset(), from_call: int | None = None):
        self.failing, self.from_call, self.calls = failing, from_call, 0

    def open_input_file(self, path: str):
        return _FlakyFile(self, path)


class _FlakyFile(FileIO):
    def __init__(self, files: FlakyFiles, path: str):
        super().__init__(path, "rb")
        self.files = files

    def read(self, size: int = -1) -> bytes:
        files = self.files
        files.calls += 1
        if files.calls in files.failing or (files.from_call is not None and files.calls >= files.from_call):
            raise OSError(RESET_MID_BODY)
        return super().read(size)


ROWS = 72


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[str, int]:
    """(path, target bytes): a shard of 72 incompressible 512 KiB images in row groups of 8, read 5 rows at a
    time (parts straddle row groups). pyarrow reads a shard's column chunks in ranges of at most 32 MiB, each when
    the rows reach it: of 36 MiB, 7 row groups and then 2, so a failure can fall after rows were yielded."""
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("shard") / "part-00000.parquet")
    write_parquet(path, pa.table({"id": [f"img-{i:03d}" for i in range(ROWS)],
                                  "image": pa.array([rng.bytes(512 * 1024) for _ in range(ROWS)], pa.binary())}),
                  row_group_rows=8)
    meta = pq.ParquetFile(path).metadata
    row_bytes = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)) // meta.num_rows
    return path, 5 * row_bytes


def read_shard(files, path: str, target: int) -> pa.Table:
    return pa.concat_tables(_read_shard(files, path, ["id", "image"], target))


def test_a_shard_read_that_fails_anywhere_resumes_after_the_rows_it_yielded(shard, waits):
    path, target = shard
    calm_files = FlakyFiles()
    calm = read_shard(calm_files, path, target)
    assert calm.num_rows == ROWS and calm_files.calls == 3          # the footer, then two ranges
    for first in range(1, calm_files.calls + 1):
        # STORAGE_ATTEMPTS - 1 failures in a row (as many as one read may meet) from call ``first`` on
        failing = FlakyFiles(set(range(first, first + STORAGE_ATTEMPTS - 1)))
        assert read_shard(failing, path, target).equals(calm), f"failing from read call {first}"
    assert len(waits) == calm_files.calls * (STORAGE_ATTEMPTS - 1)


def test_a_shard_that_keeps_failing_ends_naming_it_after_yielding_each_row_at_most_once(shard, waits):
    path, target = shard
    failing = FlakyFiles(from_call=3)       # the second range, whose first row the 12th part of 5 rows needs
    parts = []
    with pytest.raises(StorageError) as raised:
        for part in _read_shard(failing, path, ["id", "image"], target):
            parts.append(part)
    assert str(raised.value).startswith(f"cannot read shard {path}: the storage kept failing, {STORAGE_ATTEMPTS} "
                                        f"attempts") and "\n" not in str(raised.value)
    yielded = pa.concat_tables(parts).column("id").to_pylist()
    assert yielded == [f"img-{i:03d}" for i in range(11 * 5)]


def failing_scans(monkeypatch, failures: int) -> None:
    """The first ``failures`` shards opened fail as a reset GetObject body."""
    real, left = shards.open_shard, [failures]

    def open_shard(*args, **kwargs):
        if left[0]:
            left[0] -= 1
            raise OSError(RESET_MID_BODY)
        return real(*args, **kwargs)
    monkeypatch.setattr(shards, "open_shard", open_shard)


def test_rows_read_by_id_retry_a_shard_that_fails_for_a_while_and_name_one_that_keeps_failing(
        tmp_path, monkeypatch, waits):
    ids = make_raw_pool(tmp_path / "p", 30, size=4, shards=3)
    wanted = pa.array(ids[::7])
    calm = pa.concat_tables(read_rows(str(tmp_path / "p"), wanted, ["id", "image"]))
    failing_scans(monkeypatch, STORAGE_ATTEMPTS - 1)
    assert pa.concat_tables(read_rows(str(tmp_path / "p"), wanted, ["id", "image"])).equals(calm)
    assert len(waits) == STORAGE_ATTEMPTS - 1
    failing_scans(monkeypatch, 10 ** 6)
    with pytest.raises(StorageError, match=f"cannot read shard {tmp_path}/p/part-0000.*: the storage kept failing"):
        list(read_rows(str(tmp_path / "p"), wanted, ["id", "image"]))


# --- atomic writes: retried whole; temporary files named after their writer -----------------------------------

class FlakyMoves:
    """A local filesystem whose first ``failures`` renames fail as an S3 copy throttled past pyarrow's retries."""

    def __init__(self, failures: int):
        self.fs, self.failures = pafs.LocalFileSystem(), failures

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def move(self, src: str, dest: str) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("When copying key 'a' in bucket 'b' to key 'c' in bucket 'b': AWS Error SLOW_DOWN during "
                          "CopyObject operation: Please reduce your request rate.")
        self.fs.move(src, dest)


def test_an_atomic_write_is_retried_whole_and_leaves_only_its_file(tmp_path, monkeypatch, waits):
    flaky_fs = FlakyMoves(failures=STORAGE_ATTEMPTS - 1)
    monkeypatch.setattr(storage, "resolve", lambda uri: (flaky_fs, uri))
    write_atomic(str(tmp_path / "out" / "run.json"), b"{}")
    assert os.listdir(tmp_path / "out") == ["run.json"] and (tmp_path / "out" / "run.json").read_bytes() == b"{}"
    assert len(waits) == STORAGE_ATTEMPTS - 1


def stale_name(path, machine: str, pid: int, start: int) -> str:
    return f"{path}{TEMPORARY}{machine}-{pid}-{start}-0123abcd"


@pytest.mark.skipif(THIS_MACHINE is None, reason="needs /proc to tell this machine's processes")
def test_temporary_files_of_ended_or_old_writers_are_removed_never_a_live_ones(tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ended_pid, own_start = int(ended.stdout), process_start(os.getpid())
    other_machine = "0" * 12
    files = {   # name: (removed?, last written seconds ago)
        stale_name(out / "selection.parquet", THIS_MACHINE, ended_pid, 1): (True, 0),        # its writer ended
        stale_name(out / "run.json", THIS_MACHINE, os.getpid(), own_start + 1): (True, 0),   # pid now another's
        stale_name(out / "train" / "a.json", THIS_MACHINE, os.getpid(), own_start): (False, 7200),  # writing now
        stale_name(out / "b.json", other_machine, 1, 1): (False, 0),                         # recent
        stale_name(out / "c.json", other_machine, 1, 1): (True, storage.STALE_TEMPORARY_S + 60),     # old
        f"{out / 'd.json'}{TEMPORARY}{'e' * 32}": (False, 0),                # a name without its writer, recent
        f"{out / 'train' / 'e.json'}{TEMPORARY}{'f' * 32}": (True, storage.STALE_TEMPORARY_S + 60),  # old
        str(out / "f.tmp-json"): (False, 7200),                              # not a temporary file of ours
        str(out / "train" / "ok.json"): (False, 7200),
    }
    for name, (_, age) in files.items():
        Path(name).write_bytes(b"x")
        os.utime(name, (time.time() - age, time.time() - age))
    removed = remove_stale_temporaries(str(out))
    assert sorted(removed) == sorted(name for name, (gone, _) in files.items() if gone)
    assert all(Path(name).exists() != gone for name, (gone, _) in files.items())
    assert remove_stale_temporaries(str(tmp_path / "nowhere")) == []


# A child that writes a large Parquet file through pool/storage.py on storage that takes the second half of every write
# slowly: it prints the temporary file's name once half of it is on disk, and is killed (SIGKILL) in the middle.
HALF_WRITTEN_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np, pyarrow as pa
    import vaal_dist.pool.shards as shards
    import vaal_dist.pool.storage as storage

    class HalfThenStall:
        def __init__(self, fs):
            self.fs = fs
        def __getattr__(self, name):
            return getattr(self.fs, name)
        def open_output_stream(self, path):
            stream = self.fs.open_output_stream(path)
            class Half:
                def __enter__(self):
                    return self
                def __exit__(self, *exc):
                    stream.close()
                def write(self, data):
                    stream.write(data[: len(data) // 2])
                    stream.flush()
                    print(path, flush=True)
                    time.sleep(600)
            return Half()

    real_resolve = storage.resolve
    storage.resolve = lambda uri: (HalfThenStall(real_resolve(uri)[0]), real_resolve(uri)[1])
    rng = np.random.default_rng(0)
    images = pa.array([rng.bytes(4096) for _ in range(4096)], pa.binary())
    shards.write_parquet(sys.argv[1], pa.table({"id": [str(i) for i in range(4096)], "image": images}))
""")


def half_written(target) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN_CHILD, str(target)], stdout=subprocess.PIPE,
                             text=True)
    return child, child.stdout.readline().strip()


@pytest.mark.skipif(THIS_MACHINE is None, reason="needs /proc to tell this machine's processes")
def test_a_writer_killed_mid_write_leaves_a_temporary_file_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    killed, killed_tmp = half_written(out / "selection.parquet")
    live, live_tmp = half_written(out / "curves.parquet")
    try:
        assert os.path.getsize(killed_tmp) > 4096 * 4096 // 4          # half of ~16 MiB is on disk
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL
        assert sorted(os.listdir(out)) == sorted([os.path.basename(killed_tmp), os.path.basename(live_tmp)])
        assert remove_stale_temporaries(str(out)) == [killed_tmp]      # the live writer's file stays
        assert os.listdir(out) == [os.path.basename(live_tmp)]
    finally:
        live.kill()
        live.wait(30)
    write_manifest(str(out / "selection.parquet"), ["a"])              # what the rerun writes
    assert remove_stale_temporaries(str(out)) == [live_tmp]
    assert os.listdir(out) == ["selection.parquet"]


# --- real failing requests: a proxy in front of moto ------------------------------------------------------------

@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bucket-1")
    return "bucket-1"


def via(proxy, uri: str) -> str:
    """The same object through the proxy."""
    return uri.replace(f"endpoint_override={proxy.upstream}", f"endpoint_override={proxy.endpoint}")


def direct(proxy, uri: str) -> str:
    """The same object, not through the proxy."""
    return uri.replace(f"endpoint_override={proxy.endpoint}", f"endpoint_override={proxy.upstream}")


def objects(s3_endpoint, prefix: str) -> list[str]:
    fs, path = storage.resolve(s3_uri(s3_endpoint, prefix))
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, recursive=True,
                                                                          allow_not_found=True)))


@pytest.fixture
def s3_pool(s3_endpoint, bucket, failing_s3, tmp_path) -> str:
    """A raw pool of 256 images of 32x32 in 4 shards on moto; the proxy fails nothing yet."""
    failing_s3.set_faults(Faults())
    make_raw_pool(tmp_path / "pool", 256)
    uri = s3_uri(s3_endpoint, f"pool-{tmp_path.name}")
    for name in sorted(os.listdir(tmp_path / "pool")):
        write_atomic(join(uri, name), (tmp_path / "pool" / name).read_bytes())
    return uri


def sorted_rows(dataset) -> pa.Table:
    table = pa.concat_tables(dataset.iter_batches(batch_format="pyarrow", batch_size=None))
    return table.sort_by("id")


@pytest.mark.slow
def test_a_shard_read_on_a_worker_resumes_where_pyarrow_gave_up(ray_local, s3_endpoint, bucket, failing_s3, shard,
                                                                 tmp_path):
    """Three resets in a row of the GET of the second range of a 36 MiB shard, after 55 of its rows were yielded:
    pyarrow's client on a Ray worker tries a request 3 times (its pickled copy keeps no other retry strategy),
    gives up, and the read opens the shard again and resumes after those rows. The proxy fails no other request
    (count=3), so one retry suffices."""
    import ray.data

    pool = s3_uri(s3_endpoint, f"pool-{tmp_path.name}")
    write_parquet(join(pool, "part-00000.parquet"), pa.table({"id": ["a", "b"], "image": [b"1", b"2"]}))
    with open(shard[0], "rb") as f:
        write_atomic(join(pool, "part-00001.parquet"), f.read())
    calm = sorted_rows(read_pool(pool))
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, shard[1]
    try:
        failing_s3.set_faults(Faults(fraction=1.0, streak=3, count=3, kinds=("cut",), after=2,
                                     only=r"^GET .*/part-00001\.parquet"))
        flaky = sorted_rows(read_pool(via(failing_s3, pool)))
    finally:
        context.target_max_block_size = block_size
    byte_range = failing_s3.injected[0][2]                   # one GET, failed 3 times: the second range's
    assert [(r, kind) for *_, r, kind in failing_s3.injected] == [(byte_range, "cut")] * 3
    assert int(byte_range.split("=")[1].split("-")[0]) > pq.ParquetFile(shard[0]).metadata.row_group(6).column(1).\
        data_page_offset
    heads = [r for r in failing_s3.requests if r[0] == "HEAD" and r[1].endswith("/part-00001.parquet")]
    assert len(heads) == 2                                   # opened again by the retry, not by pyarrow
    assert flaky.equals(calm) and flaky.num_rows == 2 + ROWS


@pytest.mark.slow
def test_a_shard_failing_every_request_ends_the_read_naming_it(ray_local, s3_pool, failing_s3):
    failing_s3.set_faults(Faults(fraction=1.0, streak=10 ** 9, kinds=("slowdown", "drop", "cut"),
                                 only=r"/part-00002\.parquet"))
    with pytest.raises(Exception) as raised:
        sorted_rows(read_pool(via(failing_s3, s3_pool)))
    lines = [line for line in str(raised.value).splitlines() if "cannot read shard" in line]
    assert lines and "part-00002.parquet: the storage kept failing" in lines[0]
    assert f"{STORAGE_ATTEMPTS} attempts" in lines[0]


@pytest.mark.slow
def test_a_round_through_failing_storage_selects_what_a_calm_round_selects(ray_local, s3_endpoint, s3_pool,
                                                                             failing_s3, tmp_path):
    """A quarter of all requests fail, each at most twice in a row: pyarrow's S3 clients try a request 3 times or
    more, so every one gets through; pool/storage.py's retries take over where they give up. pyarrow re-sends a
    CompleteMultipartUpload that failed once and then succeeded as if it had failed, up to 5 times: that write
    fails when all 5 fail (0.25^5 ~ 1e-3) and is then retried whole, up to 5 times (~1e-15 for one write).

    pyarrow never retries a 429 whose body names TooManyRequests: every storage call of the round (pool/,
    the pool's state in round.py, the lock's listing in folder_lock.py) goes through pool/storage.py's retries."""
    from vaal_dist.round import run_round

    labeled = s3_uri(s3_endpoint, f"labeled-{tmp_path.name}.parquet")
    write_manifest(labeled, [f"img-{i:05d}" for i in range(0, 256, 8)])
    calm = run_round(round_config(s3_pool, labeled, s3_uri(s3_endpoint, f"calm-{tmp_path.name}"),
                                  strategy="random"))
    failing_s3.set_faults(Faults(fraction=0.25, streak=2, seed=3))
    flaky = run_round(round_config(via(failing_s3, s3_pool), via(failing_s3, labeled),
                                   via(failing_s3, s3_uri(s3_endpoint, f"flaky-{tmp_path.name}")), strategy="random"))
    assert {kind for *_, kind in failing_s3.injected} == {"slowdown", "throttle", "error", "drop", "cut"}
    assert pq.read_table(direct(failing_s3, flaky.selection)).equals(pq.read_table(calm.selection))
    assert not [name for name in objects(s3_endpoint, f"flaky-{tmp_path.name}") if TEMPORARY in name]


@pytest.mark.slow
def test_a_round_on_a_shard_failing_every_request_ends_with_one_line_naming_it(ray_local, s3_endpoint, s3_pool,
                                                                               failing_s3, tmp_path):
    from vaal_dist.round import run_round

    labeled = s3_uri(s3_endpoint, f"labeled-{tmp_path.name}.parquet")
    write_manifest(labeled, ["img-00000"])
    failing_s3.set_faults(Faults(fraction=1.0, streak=10 ** 9, kinds=("slowdown", "drop", "cut"),
                                 only=r"/part-00002\.parquet"))
    with pytest.raises(StorageError) as raised:
        run_round(round_config(via(failing_s3, s3_pool), labeled, str(tmp_path / "out"), strategy="random"))
    message = str(raised.value)
    assert message.startswith("cannot read shard bucket-1/") and "/part-00002.parquet: the storage kept failing" \
        in message and "\n" not in message and "testing:testing" not in message


@pytest.mark.slow
@pytest.mark.skipif(THIS_MACHINE is None, reason="needs /proc to tell this machine's processes")
def test_a_writer_killed_between_upload_and_rename_on_s3_leaves_a_temporary_object_the_next_run_removes(
        s3_endpoint, bucket, failing_s3, tmp_path):
    """The rename of an atomic write on S3 is a copy then a delete: the copy is stalled, the writer killed."""
    folder = s3_uri(s3_endpoint, f"killed-{tmp_path.name}")
    failing_s3.set_faults(Faults(fraction=1.0, count=1, kinds=("stall",),
                                 only=rf"^PUT /bucket-1/killed-{tmp_path.name}/selection\.parquet$"))
    writes = "import sys; from vaal_dist.pool.manifests import write_manifest; write_manifest(sys.argv[1], ['a', 'b'])"
    child = subprocess.Popen([sys.executable, "-c", writes, via(failing_s3, join(folder, "selection.parquet"))])
    try:
        deadline = time.monotonic() + 60
        while not failing_s3.injected and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert failing_s3.injected, "the writer never reached the rename"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        failing_s3.release()
        child.kill()
    left = objects(s3_endpoint, f"killed-{tmp_path.name}")
    assert len(left) == 1 and left[0].startswith(f"selection.parquet{TEMPORARY}{THIS_MACHINE}-{child.pid}-")
    assert [os.path.basename(p) for p in remove_stale_temporaries(folder)] == left
    assert objects(s3_endpoint, f"killed-{tmp_path.name}") == []


@pytest.mark.slow
def test_a_vaal_round_reading_through_failing_storage_selects_what_a_calm_round_selects(calm_round, s3_endpoint,
                                                                                        s3_pool, failing_s3, tmp_path):
    """VAAL's training and scoring read the pool through the same faults as above (no 429s, for the same reason;
    --out is local: Ray Train's checkpoint uploads do not pass through pool/storage.py). The calm round is
    conftest's, on the same seeded images from local disk."""
    from vaal_dist.round import run_round

    calm = calm_round(1)
    labeled = s3_uri(s3_endpoint, f"labeled-{tmp_path.name}.parquet")
    write_manifest(labeled, calm.labeled_ids)
    failing_s3.set_faults(Faults(fraction=0.25, streak=2, seed=4, kinds=("slowdown", "error", "drop", "cut")))
    flaky = run_round(calm_config(via(failing_s3, s3_pool), via(failing_s3, labeled), tmp_path / "flaky", 1))
    assert {kind for *_, kind in failing_s3.injected} == {"slowdown", "error", "drop", "cut"}
    assert pq.read_table(flaky.selection).equals(pq.read_table(calm.result.selection))
