"""The files a prepared pool's images came from, so that the labeler sees the original, not the training copy.

``prepare`` names the source folder in pool.json (its credentials hidden) and keeps each file's size and
modification time in the shard columns ``source_size`` and ``source_mtime_ns``; an image's id is its file's path
under that folder. An original that is gone, or whose size or modification time changed since, is refused by
name: the labeler would otherwise label another picture than the one the round chose.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from vaal_dist.errors import InputError
from vaal_dist.pool.io import SOURCE_MTIME, SOURCE_SIZE, PoolMeta, read_rows
from vaal_dist.pool.storage import join, read_all, resolve, retrying
from vaal_dist.redaction import HIDDEN, redact

log = logging.getLogger(__name__)

BUCKET_SCHEMES = ("s3", "gs")        # sources whose objects a signed URL, or Label Studio's cloud storage, serve


@dataclass(frozen=True)
class Originals:
    """A pool's source folder: ``uri`` as given (credentials included), ``fs`` and ``root`` path it resolves to."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme if "://" in self.uri else ""

    def object_uri(self, image_id: str) -> str:
        """The original's URI with the folder's credentials and options (%-escaped: pyarrow decodes the key)."""
        return join(self.uri, quote(_checked(image_id), safe="/"))

    def plain_uri(self, image_id: str) -> str:
        """``s3://bucket/key`` (or ``gs://``) of the original, no credentials, for a labeling tool's own storage
        to sign. Label Studio splits the key off as a URL's path, so a '?' in it would cut the key short."""
        if "?" in image_id:
            raise InputError(f"image {image_id!r}: a '?' in a file name cannot be written as a plain "
                             f"{self.scheme}:// URI for a labeling tool; export without --link source")
        return f"{self.scheme}://{self._path(image_id)}"

    def recorded(self, pool: str, ids: pa.Array) -> dict[str, tuple[int, int]]:
        """id -> (size, mtime_ns) prepare recorded, for the pool's rows whose id is in ``ids``."""
        found = {}
        for rows in read_rows(pool, ids, ["id", SOURCE_SIZE, SOURCE_MTIME]):
            found.update(zip(rows.column("id").to_pylist(),
                             zip(rows.column(SOURCE_SIZE).to_pylist(), rows.column(SOURCE_MTIME).to_pylist())))
        return found

    def read(self, image_id: str, recorded: tuple[int, int]) -> bytes:
        """The original's bytes, once its size and modification time are still those prepare recorded."""
        path = self._path(image_id)
        where = f"image {image_id!r}: its original {redact(join(self.uri, image_id))!r}"
        info = retrying(f"cannot read {redact(self.object_uri(image_id))!r}", lambda: self.fs.get_file_info(path))
        if info.type != pafs.FileType.File:
            raise InputError(f"{where} is gone since prepare")
        size, mtime_ns = recorded
        if (info.size, info.mtime_ns) != (size, mtime_ns):
            raise InputError(f"{where} changed since prepare (size {size:,} -> {info.size:,} bytes, modified "
                             f"{mtime_ns} -> {info.mtime_ns} ns)")
        data = retrying(f"cannot read {redact(self.object_uri(image_id))!r}", lambda: read_all(self.fs, path))
        if len(data) != size:                     # rewritten between the look and the read
            raise InputError(f"{where} changed while it was read ({len(data):,} bytes, not {size:,})")
        return data

    def _path(self, image_id: str) -> str:
        return f"{self.root.rstrip('/')}/{_checked(image_id)}"


def _checked(image_id: str) -> str:
    """``image_id`` when it is a path inside the source folder, as prepare's ids are: a pool written by hand must
    not send an export to read a file outside it."""
    parts = image_id.split("/")
    if image_id.startswith("/") or "\\" in image_id or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"image {image_id!r} is not a file path under the pool's source folder; its original "
                         f"cannot be found")
    return image_id


def pool_originals(pool: str, meta: PoolMeta, source: str | None = None) -> Originals | None:
    """The pool's source folder (``source`` gives it again, credentials included), or None when the pool records
    none: the embedded MNIST, synthetic pools, pools written by hand or by an earlier prepare."""
    if meta.source is None:
        if source is not None:
            raise InputError(f"pool {pool!r} records no source folder (no 'source' in its pool.json), so --source "
                             f"cannot stand in for one")
        return None
    uri = source or meta.source
    if HIDDEN in uri:
        raise InputError(f"the pool's pool.json hides the credentials of its source {uri!r}: give it again with "
                         f"--source")
    fs, root = resolve(uri)
    return Originals(uri, fs, root)


def say_no_originals(pool: str, meta: PoolMeta) -> None:
    """One log line: the tasks show the pool's own images, which may be smaller than the files they came from."""
    log.warning("export: pool %s records no source files; the tasks show the pool's own images%s", redact(pool),
                f" ({meta.image_shape[1]}x{meta.image_shape[0]} pixels)" if meta.image_shape else "")
