"""Files on any filesystem pyarrow or fsspec can open: paths and URIs, retries, atomic writes.

Every read and write here retries errors that usually pass (``retrying``), and a write goes through a
temporary file named after its writer, which ``remove_stale_temporaries`` deletes once that writer is gone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from vaal_dist.errors import InputError, StorageError
from vaal_dist.processes import THIS_MACHINE, process_start
from vaal_dist.redaction import redact

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def _temporary_name(path: str) -> str:
    pid = os.getpid()
    writer = f"{THIS_MACHINE}-{pid}-{process_start(pid)}" if THIS_MACHINE else f"{'0' * 12}-0-0"
    return f"{path}{TEMPORARY}{writer}-{uuid.uuid4().hex[:8]}"


def _abandoned(info: pafs.FileInfo, now: float) -> bool:
    """``info`` is a temporary file of ours whose writer is gone: it ran on this machine and its process has
    ended (or its pid is now another process's), or the file is older than STALE_TEMPORARY_S."""
    ours = _OURS.search(info.base_name)
    if ours is None or info.type != pafs.FileType.File:
        return False
    if THIS_MACHINE and ours["machine"] == THIS_MACHINE:
        return str(process_start(int(ours["pid"]))) != ours["start"]
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
