"""Pools and manifests on any filesystem pyarrow or fsspec can open, and atomic writes.

A pool is a folder of Parquet shards with columns ``id`` (unique string), ``image`` (binary) and an
optional ``label``; beside them ``pool.json`` says how ``image`` is stored: ``raw`` uint8 pixels of a
fixed ``image_shape`` [H, W, C], or ``encoded`` JPEG/PNG bytes (also assumed when there is no pool.json).
A pool made by ``prepare`` also names its ``source`` folder there (ids are file paths under it) and has the
columns ``source_size`` and ``source_mtime_ns`` of each file; pools without them have no known originals.
A manifest is a list of ids: Parquet with an ``id`` column, or a text file with one id per line.

Every read and write here retries errors that usually pass (``retrying``), and a write goes through a
temporary file named after its writer, which ``remove_stale_temporaries`` deletes once that writer is gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vaal_dist.errors import InputError, StorageError
from vaal_dist.redaction import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

POOL_META = "pool.json"
# A prepared pool's record of each image's file, taken before it was read: a changed original is noticed.
SOURCE_SIZE, SOURCE_MTIME = "source_size", "source_mtime_ns"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI (s3://, gs://, file://, any fsspec protocol)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), posixpath.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass                            # pyarrow cannot parse the URI or does not know the scheme: try fsspec
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:      # not chained: pyarrow's error quotes the URI unredacted
        raise InputError(f"cannot open {uri!r}: {e}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI, keeping any ?query of the URI at the end."""
    base, sep, query = uri.partition("?")
    joined = posixpath.join(base, *parts)
    return f"{joined}?{query}" if sep else joined


def folder_of(uri: str) -> str:
    """The folder holding ``uri`` (a local path or URI; a ?query stays at the end); "." for a bare file name."""
    base, sep, query = uri.partition("?")
    return f"{posixpath.dirname(base) or '.'}{sep}{query}"


def beside(uri: str, name: str) -> str:
    """The file ``name`` in the folder of ``uri`` (a local path or URI; a ?query stays at the end)."""
    base, sep, query = uri.partition("?")
    return f"{posixpath.join(posixpath.dirname(base), name)}{sep}{query}"


def lies_within(inner: str, outer: str) -> bool:
    """Whether ``inner`` is ``outer`` or a path below it, on the same kind of storage (local paths compared as
    real paths: either may be reached through a link)."""
    inner_fs, inner_path = resolve(inner)
    outer_fs, outer_path = resolve(outer)
    if inner_fs.type_name != outer_fs.type_name:
        return False
    if isinstance(outer_fs, pafs.LocalFileSystem):
        inner_path, outer_path = os.path.realpath(inner_path), os.path.realpath(outer_path)
    return (inner_path.rstrip("/") + "/").startswith(outer_path.rstrip("/") + "/")


# --- errors that usually pass: retried a bounded number of times ------------------------------------------------
#
# pyarrow's S3 client retries a request itself when the AWS SDK calls its error retryable (throttling, 5xx,
# connection errors, a reset in the middle of an object's body too), but not the same way everywhere: the
# filesystem a URI makes on the driver for up to 6 s, 200 ms apart; its copy pickled to a Ray worker 3 times with
# exponential backoff (pyarrow pickles a filesystem as its options, and the retry strategy is not among them). It
# gives up on a 429 whose body names a code the SDK does not know (TooManyRequests), and a CompleteMultipartUpload
# that failed once and then succeeded it sends again as if it had failed, up to 5 times. Past all that, and on
# filesystems with fewer retries of their own, an operation here is tried again whole, up to STORAGE_ATTEMPTS
# times, backing off from BACKOFF_S seconds, doubling up to BACKOFF_CAP_S, each wait drawn between half and all of
# that (readers throttled together do not all come back together).

STORAGE_ATTEMPTS = 5
BACKOFF_S = 1.0
BACKOFF_CAP_S = 16.0
# Such errors by their codes, read where pyarrow writes them, never from other words of the message (a key's own
# path may hold any word): pyarrow's S3 error code after "AWS Error" (the last one: the key comes before it) and
# the HTTP status it gives beside UNKNOWN or at the message's end (a HEAD has no body to name its error, a 429 may
# name a code the SDK does not know); a GCS status code where google-cloud-cpp writes it ("CODE: message"). Ray
# Data's Parquet reader retries the same S3 codes but THROTTLING and REQUEST_TIMEOUT.
TRANSIENT_S3_CODES = frozenset({"SLOW_DOWN", "THROTTLING", "INTERNAL_FAILURE", "NETWORK_CONNECTION",
                                "SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT"})
_S3_CODE = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d{3})\))?")
_TRAILING_HTTP_STATUS = re.compile(r"\(HTTP status (\d{3})\)\s*$")
_GCS_TRANSIENT = re.compile(r"(?:^|: )(?:UNAVAILABLE|RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED): ", re.MULTILINE)


def is_transient(e: BaseException) -> bool:
    """An error that usually passes if the operation is tried again. A StorageError is not: its retries are spent."""
    if isinstance(e, StorageError):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):       # raised by fsspec filesystems
        return True
    return isinstance(e, (OSError, pa.ArrowException)) and _transient_code(str(e))


def _transient_code(message: str) -> bool:
    s3_codes = _S3_CODE.findall(message)
    if not s3_codes:
        return _GCS_TRANSIENT.search(message) is not None
    code, status = s3_codes[-1]
    trailing = _TRAILING_HTTP_STATUS.search(message)
    status = status or (trailing.group(1) if trailing else "")
    return code in TRANSIENT_S3_CODES or status == "429" or status.startswith("5")


STORAGE_KEPT_FAILING = "the storage kept failing"   # in every StorageError; round.py finds it in a worker's


class StorageRetries:
    """The retries left to one operation; ``what`` (e.g. "cannot read 's3://...'") names it in the error."""

    def __init__(self, what: str):
        self.what, self.failures, self.started = what, 0, time.monotonic()

    def wait_after(self, e: BaseException) -> bool:
        """True, after a backoff, when ``e`` is worth another attempt; False when it is not transient. Raises
        StorageError naming the object when the attempts are spent."""
        if not is_transient(e):
            return False
        self.failures += 1
        last = " ".join(str(e).split())                    # one line, whatever the library wrote
        if self.failures >= STORAGE_ATTEMPTS:
            raise StorageError(f"{self.what}: {STORAGE_KEPT_FAILING}, {self.failures} attempts over "
                               f"{time.monotonic() - self.started:.0f} s; the last error: {last}") from e
        wait = backoff_s(self.failures)
        log.warning("%s (attempt %d of %d): %s; trying again in %.1f s", redact(self.what), self.failures,
                    STORAGE_ATTEMPTS, redact(last), wait)
        time.sleep(wait)
        return True

    def progressed(self) -> None:
        """The operation got further than before: what failed before it does not count against what follows."""
        self.failures = 0


def backoff_s(failures: int) -> float:
    """Seconds to wait after the ``failures``-th transient error in a row (see the policy above)."""
    return min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


def retrying(what: str, operation: Callable[[], T]) -> T:
    """``operation()``, tried again after a transient error; StorageError naming ``what`` when the tries are spent."""
    retries = StorageRetries(what)
    while True:
        try:
            return operation()
        except Exception as e:
            if not retries.wait_after(e):
                raise


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retrying(f"cannot look up {uri!r}", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


# --- atomic writes, and the temporary files of writers that were killed ----------------------------------------

TEMPORARY = ".tmp-"                 # FILE.tmp-MACHINE-PID-START-RANDOM: written, then renamed to FILE
STALE_TEMPORARY_S = 3600.0          # a temporary file this old is abandoned, whoever wrote it
# ours: the writer's machine, pid and process start, or 32 hex digits only (the name of earlier versions)
_OURS = re.compile(re.escape(TEMPORARY) + r"(?:(?P<machine>[0-9a-f]{12})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}"
                                          r"|[0-9a-f]{32})$")


def _this_machine() -> str | None:
    """A tag of this host, boot and pid namespace: two files with the same one were written where one pid names
    one process. None where that cannot be told (no /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{socket.gethostname()}\0{boot}\0{pid_namespace}".encode()).hexdigest()[:12]


THIS_MACHINE = _this_machine()


def _process_start(pid: int) -> int | None:
    """When the process ``pid`` of this machine started (clock ticks since boot), or None if there is none (a
    zombie counts as none: it writes nothing more)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else int(fields[19])


def _temporary_name(path: str) -> str:
    pid = os.getpid()
    writer = f"{THIS_MACHINE}-{pid}-{_process_start(pid)}" if THIS_MACHINE else f"{'0' * 12}-0-0"
    return f"{path}{TEMPORARY}{writer}-{uuid.uuid4().hex[:8]}"


def _abandoned(info: pafs.FileInfo, now: float) -> bool:
    """``info`` is a temporary file of ours whose writer is gone: it ran on this machine and its process has
    ended (or its pid is now another process's), or the file is older than STALE_TEMPORARY_S."""
    ours = _OURS.search(info.base_name)
    if ours is None or info.type != pafs.FileType.File:
        return False
    if THIS_MACHINE and ours["machine"] == THIS_MACHINE:
        return str(_process_start(int(ours["pid"]))) != ours["start"]
    return info.mtime is not None and now - info.mtime.timestamp() > STALE_TEMPORARY_S


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files that killed writers left in ``folder`` and below; never a live writer's.
    Returns their paths. A run calls it on its output folder when it starts."""
    fs, root = resolve(folder)
    infos = retrying(f"cannot list {folder!r}", lambda: fs.get_file_info(
        pafs.FileSelector(root, recursive=True, allow_not_found=True)))
    now = time.time()
    stale = [i.path for i in infos if _abandoned(i, now)]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):            # another run removed it first
            retrying(f"cannot delete {path!r}", lambda: fs.delete_file(path))
    if stale:
        log.info("removed %d temporary files that killed writers left in %s", len(stale), redact(folder))
    return stale


def write_atomic(uri: str, data: bytes) -> None:
    """Write the whole file under a temporary name, then rename: readers see all of it or nothing."""
    fs, path = resolve(uri)
    retrying(f"cannot write {uri!r}", lambda: _write_then_rename(fs, path, data))


def _write_then_rename(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = _temporary_name(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):      # storage failing here too: remove_stale_temporaries deletes it later
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
        raise


def write_json(uri: str, obj) -> None:
    write_atomic(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    return retrying(f"cannot read {uri!r}", lambda: read_all(fs, path))


def read_all(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def missing_folders(uri: str) -> list[str]:
    """The paths of ``uri`` and of the folders above it that do not exist yet, deepest first: writing into
    ``uri`` creates them (pyarrow writes zero-byte markers for them on S3). A bucket is never among them."""
    fs, path = resolve(uri)
    missing = []
    while "/" in path.strip("/") and retrying(f"cannot look up {path!r}", lambda: fs.get_file_info(
            path)).type == pafs.FileType.NotFound:
        missing.append(path)
        path = posixpath.dirname(path)
    return missing


def remove_empty_folders(uri: str, folders: list[str]) -> None:
    """Remove each of ``folders`` (paths on ``uri``'s storage, deepest first, as ``missing_folders`` gives them)
    while it is empty: the first that holds anything, and those above it, stay."""
    fs, _ = resolve(uri)
    for folder in folders:
        if not _removed_if_empty(fs, folder):
            return


def _removed_if_empty(fs: pafs.FileSystem, folder: str) -> bool:
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            os.rmdir(folder)                # refuses a folder that holds anything, in one step
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    # an object store has no such step: a file written between this listing and the delete would go too
    if retrying(f"cannot list {folder!r}", lambda: fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))):
        return False
    with contextlib.suppress(FileNotFoundError):
        retrying(f"cannot delete {folder!r}", lambda: fs.delete_dir(folder))
    return True


# Every page carries a CRC (written below, checked on every read), so damaged storage is refused, not read.
PAGE_CRC_FAILURE = "CRC checksum verification failed"        # pyarrow's words when a page fails it
SHARD_READ_FAILED = "cannot read shard "                      # shard_named's words, found again by round.py
VERIFIED_PARQUET = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))


@contextlib.contextmanager
def shard_named(shard: str):
    """An error met reading ``shard`` (a damaged page's, say) is an OSError naming it: round.py finds the
    line that does. pyarrow reports some damage (a page header's sizes) as ArrowInvalid."""
    try:
        yield
    except StorageError:
        raise                                   # it names the shard already
    except (OSError, pa.ArrowException) as e:
        raise OSError(f"{SHARD_READ_FAILED}{shard}: {e}") from e


def check_row_count(rows: int, expected: int) -> None:
    """Refuse a read shorter than the footer's row count: a damaged page header (its page type, say) can
    end a column early without an error."""
    if rows != expected:
        raise OSError(f"read {rows} of its {expected} rows: a page header is damaged")


ROW_GROUP_ROWS = 1024      # training reads a pool a row group at a time (train/pool_batches.py)


def write_parquet(uri: str, table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, write_page_checksum=True)
    write_atomic(uri, sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class PoolMeta:
    """How a pool stores its images."""

    encoding: str = "encoded"                    # "raw" or "encoded"
    image_shape: tuple[int, int, int] | None = None  # (H, W, C) when raw
    source: str | None = None     # the folder prepare read (credentials redacted); ids are paths under it

    @property
    def channels(self) -> int:
        return self.image_shape[2] if self.image_shape else 3  # encoded images decode to RGB


def read_pool_meta(pool: str) -> PoolMeta:
    """The pool's pool.json, or the encoded-image default when it has none."""
    if not exists(pool):
        raise InputError(f"pool {pool!r} does not exist")
    meta_uri = join(pool, POOL_META)
    if not exists(meta_uri):
        return PoolMeta()
    try:
        meta = read_json(meta_uri)
        encoding, source = meta["encoding"], meta.get("source")
        if source is not None and not isinstance(source, str):
            raise TypeError(f"source must be a string, got {source!r}")
        if encoding == "encoded":
            return PoolMeta(source=source)
        shape = tuple(meta["image_shape"]) if encoding == "raw" else None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{meta_uri}: not a valid pool description ({e!r})") from e
    if shape is None:
        raise InputError(f"{meta_uri}: encoding must be 'raw' or 'encoded', got {encoding!r}")
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"{meta_uri}: image_shape must be [height, width, channels], got {list(shape)}")
    return PoolMeta("raw", shape, source)


def shard_name(k: int) -> str:
    """File name of a pool's shard k."""
    return f"part-{k:05d}.parquet"


def write_pool(pool: str, shards: list[pa.Table], meta: PoolMeta) -> None:
    """Write a pool: one Parquet file per table, then pool.json last (a pool without it is incomplete)."""
    for i, table in enumerate(shards):
        write_parquet(join(pool, shard_name(i)), table)
    doc = {"format": "vaal_dist.pool", "version": 1, "encoding": meta.encoding}
    if meta.image_shape:
        doc["image_shape"] = list(meta.image_shape)
    if meta.source:
        doc["source"] = meta.source
    write_json(join(pool, POOL_META), doc)


def pool_files(pool: str) -> tuple[pafs.FileSystem, list[str]]:
    """The pool's Parquet shards, sorted (pool.json and other files are not shards)."""
    fs, path = resolve(pool)
    info, listing = retrying(f"cannot list pool {pool!r}", lambda: _list(fs, path))
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"pool {pool!r} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [path]
    files = sorted(f.path for f in listing if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise InputError(f"pool {pool!r} has no .parquet shards")
    return fs, files


def pool_state(pool: str) -> str:
    """pool.json (where the pool has one) and each shard's path, size and modification time, from a listing (no
    pixel is read): a pool prepared again in place, with the same ids and other pixels, no longer matches a round
    started on it."""
    fs, files = pool_files(pool)
    infos = retrying(f"cannot list pool {pool!r}", lambda: fs.get_file_info(files))
    shards = [(f.path, f.size, f.mtime_ns) for f in infos]
    meta_uri = join(pool, POOL_META)
    meta = read_json(meta_uri) if exists(meta_uri) else None      # none: encoded images (read_pool_meta)
    return json.dumps({"pool.json": meta, "shards": shards}, sort_keys=True)


def _list(fs: pafs.FileSystem, path: str) -> tuple[pafs.FileInfo, list[pafs.FileInfo]]:
    """``path``'s info and, when it is a folder, every file below it."""
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return info, []
    return info, fs.get_file_info(pafs.FileSelector(path, recursive=True))


READ_THREADS = 16      # shards whose ids are read at once: hides an object store's latency


def read_pool_ids(pool: str) -> pa.ChunkedArray:
    """Every id in the pool (only the id column is read), shard by shard, so that every error names its shard
    (a dataset's may not say which it met). Errors name what is wrong with the pool."""
    fs, files = pool_files(pool)
    schema = _shard_part(fs, files[0], pool, lambda parquet: parquet.schema_arrow)
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as threads:
        ids = pa.chunked_array(list(threads.map(
            lambda path: _shard_part(fs, path, pool, _ids_of(schema, pool, path)), files)))
    if "image" not in schema.names:
        raise InputError(f"pool {pool!r} has no 'image' column (columns: {schema.names})")
    image_type = schema.field("image").type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
        raise InputError(f"pool {pool!r}: column 'image' must be bytes (binary), got {image_type}")
    if len(ids) == 0:
        raise InputError(f"pool {pool!r} has no images")
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        raise InputError(f"pool {pool!r}: column 'id' must be strings, got {ids.type}")
    if ids.null_count:
        raise InputError(f"pool {pool!r}: {ids.null_count} rows have a null id")
    _raise_on_bad_ids(ids, f"pool {pool!r}")
    return ids


def read_rows(pool: str, ids: pa.Array, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` of the pool's rows whose id is in ``ids``: one table per shard holding only those rows, a row
    group whose id statistics exclude them all not read, so memory follows ``ids``, not the pool. Shards are
    read READ_THREADS at a time, each retried and its errors named as ``read_pool_ids``'s."""
    fs, files = pool_files(pool)
    wanted = pc.field("id").isin(ids)

    def shard_rows(path: str) -> pa.Table:
        shard = pads.dataset(path, filesystem=fs, format=VERIFIED_PARQUET)
        return shard.to_table(columns=columns, filter=wanted)
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as threads:
        yield from threads.map(lambda path: _named_shard_error(pool, path, lambda: shard_rows(path)), files)


def _shard_part(fs: pafs.FileSystem, path: str, pool: str, read: Callable[[pq.ParquetFile], T]) -> T:
    """``read(the shard at path)``, retried; an error names the pool and the shard."""
    def attempt() -> T:
        with fs.open_input_file(path) as f:
            return read(pq.ParquetFile(f, page_checksum_verification=True))
    return _named_shard_error(pool, path, attempt)


def _named_shard_error(pool: str, path: str, attempt: Callable[[], T]) -> T:
    """``attempt()``, retried after transient errors; any other error an InputError naming the pool and shard."""
    try:
        return retrying(f"{SHARD_READ_FAILED}{path}", attempt)
    except (InputError, StorageError):
        raise
    except (pa.ArrowException, OSError, KeyError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read pool {pool!r}: shard {path}: {e}") from e


def _ids_of(first: pa.Schema, pool: str, path: str) -> Callable[[pq.ParquetFile], pa.Array]:
    """A reader of a shard's ids, checked (valid strings, as many as its footer counts), refusing a shard whose
    columns differ from the first shard's."""
    def read(parquet: pq.ParquetFile) -> pa.Array:
        schema = parquet.schema_arrow                   # a damaged column name fails to decode here
        if not schema.equals(first):
            raise InputError(f"pool {pool!r}: shard {path!r} has columns {_columns(schema)} but the first has "
                             f"{_columns(first)}")
        ids = parquet.read(columns=["id"]).column("id").combine_chunks()
        ids.validate(full=True)                         # e.g. ids that are not valid UTF-8
        check_row_count(len(ids), parquet.metadata.num_rows)
        return ids
    return read


def _columns(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def check_labels(pool: str, ids: pa.Array, imported: pa.Table | None = None) -> int:
    """The number of classes (1 + the pool's largest label), once every one of ``ids`` has a label.

    The labels are the pool's ``label`` column: the oracle's answers for labeled images (or, for
    prepared folders, the class sub-folder). Task models need one for every labeled image. A pool without
    that column takes ``imported`` (id, label): labels.parquet beside the labeled manifest.
    """
    fs, files = pool_files(pool)
    what = f"cannot read pool {pool!r}"
    dataset = retrying(what, lambda: pads.dataset(files, filesystem=fs, format=VERIFIED_PARQUET))
    if "label" not in dataset.schema.names:
        if imported is None:
            raise InputError(f"pool {pool!r} has no 'label' column and there is no labels.parquet beside the "
                             f"labeled manifest; this strategy trains a classifier on the labeled images and "
                             f"needs their labels")
        return _check_imported_labels(imported, ids)
    if not pa.types.is_integer(dataset.schema.field("label").type):
        raise InputError(f"pool {pool!r}: column 'label' must be integers, got {dataset.schema.field('label').type}")
    all_labels = retrying(what, lambda: dataset.to_table(columns=["label"]).column("label"))
    missing = retrying(what, lambda: dataset.to_table(
        columns=["id"], filter=pc.field("id").isin(ids) & pc.field("label").is_null()).column("id"))
    if len(missing):
        raise InputError(f"pool {pool!r}: {len(missing)} labeled images have no label, e.g. "
                         f"{missing[:5].to_pylist()}")
    low = pc.min(all_labels).as_py()
    if low is not None and low < 0:
        raise InputError(f"pool {pool!r}: labels must be class indices >= 0, found {low}")
    return int(pc.max(all_labels).as_py() or 0) + 1


IMPORTED_CLASSES = b"vaal_dist.classes"     # labels.parquet's metadata: its class names, in label order


def _check_imported_labels(imported: pa.Table, ids: pa.Array) -> int:
    """The number of class names labels.parquet holds (else 1 + its largest label), once each of ``ids`` has a
    label there: a class nobody has labeled yet is still one the task model predicts."""
    missing = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=imported.column("id"))))
    if len(missing):
        raise InputError(f"labels.parquet beside the labeled manifest has no label for {len(missing)} labeled "
                         f"images, e.g. {missing[:5].to_pylist()}")
    named = (imported.schema.metadata or {}).get(IMPORTED_CLASSES)
    return len(json.loads(named)) if named else int(pc.max(imported.column("label")).as_py() or 0) + 1


def read_manifest(uri: str) -> pa.Array:
    """The ids of a manifest: Parquet with an ``id`` column, or text with one id per line."""
    if not exists(uri):
        raise InputError(f"manifest {uri!r} does not exist")
    fs, path = resolve(uri)
    what = f"cannot read manifest {uri!r}"
    try:
        if path.endswith(".parquet"):
            ids = retrying(what, lambda: pq.read_table(path, filesystem=fs, columns=["id"],
                                                       page_checksum_verification=True)).column("id").combine_chunks()
            ids.validate(full=True)
        else:
            # utf-8-sig: an editor's byte-order mark is no part of the first id
            text = retrying(what, lambda: read_all(fs, path)).decode("utf-8-sig")
            # Ids are kept as written (no Unicode normalisation); only \n ends a line (splitlines() would also
            # cut an id at U+2028, U+0085, \x1c...), and spaces around an id (a \r of \r\n too) are dropped.
            ids = pa.array([line.strip() for line in text.split("\n") if line.strip()], pa.string())
    except StorageError:
        raise
    except (pa.ArrowInvalid, OSError, KeyError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: {e}") from e
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise InputError(f"manifest {uri!r}: column 'id' must be strings, got {ids.type}")
    if ids.null_count:
        raise InputError(f"manifest {uri!r}: {ids.null_count} null ids")
    _raise_on_bad_ids(ids, f"manifest {uri!r}")
    return ids.cast(pa.string())


def write_manifest(uri: str, ids) -> None:
    write_parquet(uri, pa.table({"id": pa.array(ids, pa.string())}))


def write_seeded_sample(pool: str, manifest: str, seed: int, *, count: int | None = None,
                        fraction: float | None = None) -> None:
    """A manifest of ``count`` (or int(``fraction`` x the pool's size)) of the pool's ids, a seeded draw from
    them sorted (whatever the shards' order), unless ``manifest`` is there already."""
    if exists(manifest):
        return
    ids = np.sort(read_pool_ids(pool).to_numpy().astype(str))
    chosen = np.random.default_rng(seed).choice(len(ids), size=int(len(ids) * fraction) if count is None else count,
                                                replace=False)
    write_manifest(manifest, ids[np.sort(chosen)])


def _raise_on_bad_ids(ids, where: str) -> None:
    with_nul = pc.filter(ids, pc.match_substring(ids, "\x00"))
    if len(with_nul):   # numpy's str arrays drop trailing NULs: two such ids could merge into one
        raise InputError(f"{where}: {len(with_nul)} ids contain a NUL character, e.g. {with_nul[0].as_py()!r}")
    counts = pc.value_counts(ids)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        examples = [v.as_py() for v in dup.field("values")[:5]]
        raise InputError(f"{where}: {len(dup)} ids occur more than once, e.g. {examples}")
