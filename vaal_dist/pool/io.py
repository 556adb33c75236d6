"""A pool: its description, its shards, its ids, and its rows read by id.

A pool is a folder of Parquet shards with columns ``id`` (unique string), ``image`` (binary) and an
optional ``label``; beside them ``pool.json`` says how ``image`` is stored: ``raw`` uint8 pixels of a
fixed ``image_shape`` [H, W, C], or ``encoded`` JPEG/PNG bytes (also assumed when there is no pool.json).
A pool made by ``prepare`` also names its ``source`` folder there (ids are file paths under it) and has the
columns ``source_size`` and ``source_mtime_ns`` of each file; pools without them have no known originals.
Every shard is read through ``shards.read_shard`` (checked, retried); an error names the pool and the shard.
"""
from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vaal_dist.errors import InputError
from vaal_dist.pool.shards import Shard, ShardError, read_shard, write_parquet
from vaal_dist.pool.storage import exists, join, read_json, resolve, retrying, write_json

T = TypeVar("T")

POOL_META = "pool.json"
# A prepared pool's record of each image's file, taken before it was read: a changed original is noticed.
SOURCE_SIZE, SOURCE_MTIME = "source_size", "source_mtime_ns"


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


READ_THREADS = 16      # shards read at once: hides an object store's latency


def pool_schema(pool: str) -> pa.Schema:
    """The columns of the pool's first shard (``read_pool_ids`` checks that every shard has them)."""
    return _first_schema(pool, *pool_files(pool))


def _first_schema(pool: str, fs: pafs.FileSystem, files: list[str]) -> pa.Schema:
    return _read_pool_shard(pool, fs, files[0], lambda shard: shard.schema)


def read_pool_ids(pool: str) -> pa.ChunkedArray:
    """Every id in the pool (only the id column is read), shard by shard, so that every error names its shard
    (a dataset's may not say which it met). Errors name what is wrong with the pool."""
    fs, files = pool_files(pool)
    schema = _first_schema(pool, fs, files)
    ids = pa.chunked_array(list(_each_shard(pool, fs, files, _ids_of(schema, pool))))
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
    raise_on_bad_ids(ids, f"pool {pool!r}")
    return ids


def read_columns(pool: str, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` of every row of the pool, one table per shard, errors named as ``read_pool_ids``'s."""
    fs, files = pool_files(pool)
    return _each_shard(pool, fs, files, lambda shard: shard.read(columns))


def read_rows(pool: str, ids: pa.Array, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` of the pool's rows whose id is in ``ids``: one table per shard holding only those rows, a row
    group whose id statistics exclude them all not read, so memory follows ``ids``, not the pool. Errors are
    named as ``read_pool_ids``'s."""
    fs, files = pool_files(pool)
    wanted = sorted(pc.drop_null(pc.unique(ids)).to_pylist())
    return _each_shard(pool, fs, files, lambda shard: _rows_of(shard, ids, wanted, columns))


def _rows_of(shard: Shard, ids: pa.Array, wanted: list[str], columns: list[str]) -> pa.Table:
    """``columns`` of the shard's rows whose id is in ``ids`` (``wanted``: the same, sorted), a row group at a time."""
    meta = shard.metadata
    read = list(dict.fromkeys(["id", *columns]))
    parts = [shard.read_row_group(g, read) for g in range(meta.num_row_groups)
             if _may_hold(meta.row_group(g), wanted)]
    return pa.concat_tables([p.filter(pc.is_in(p.column("id"), value_set=ids)).select(columns) for p in parts]
                            or [pa.schema([shard.schema.field(c) for c in columns]).empty_table()])


def _may_hold(group: pq.RowGroupMetaData, wanted: list[str]) -> bool:
    """Whether the row group's id range, from its footer's statistics, holds one of ``wanted`` (sorted)."""
    column = next(group.column(c) for c in range(group.num_columns) if group.column(c).path_in_schema == "id")
    stats = column.statistics
    if stats is None or not stats.has_min_max:
        return True
    first = bisect.bisect_left(wanted, stats.min)      # Parquet orders strings by UTF-8 bytes, as Python does
    return first < len(wanted) and wanted[first] <= stats.max


def _each_shard(pool: str, fs: pafs.FileSystem, files: list[str], read: Callable[[Shard], T]) -> Iterator[T]:
    """``read(shard)`` of each of ``files``, in order, READ_THREADS shards at a time."""
    with ThreadPoolExecutor(min(READ_THREADS, len(files))) as threads:
        yield from threads.map(lambda path: _read_pool_shard(pool, fs, path, read), files)


def _read_pool_shard(pool: str, fs: pafs.FileSystem, path: str, read: Callable[[Shard], T]) -> T:
    """``read(the shard at path)``, retried; an error that is not the storage's names the pool and the shard."""
    try:
        return read_shard(fs, path, read)
    except ShardError as e:
        raise InputError(f"cannot read pool {pool!r}: shard {e.shard}: {e.reason}") from e


def _ids_of(first: pa.Schema, pool: str) -> Callable[[Shard], pa.Array]:
    """A reader of a shard's ids, checked (valid strings), refusing a shard whose columns differ from the first
    shard's."""
    def read(shard: Shard) -> pa.Array:
        schema = shard.schema                           # a damaged column name fails to decode here
        if not schema.equals(first):
            raise InputError(f"pool {pool!r}: shard {shard.path!r} has columns {_columns(schema)} but the first "
                             f"has {_columns(first)}")
        ids = shard.read(["id"]).column("id").combine_chunks()
        ids.validate(full=True)                         # e.g. ids that are not valid UTF-8
        return ids
    return read


def _columns(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def raise_on_bad_ids(ids, where: str) -> None:
    with_nul = pc.filter(ids, pc.match_substring(ids, "\x00"))
    if len(with_nul):   # numpy's str arrays drop trailing NULs: two such ids could merge into one
        raise InputError(f"{where}: {len(with_nul)} ids contain a NUL character, e.g. {with_nul[0].as_py()!r}")
    counts = pc.value_counts(ids)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        examples = [v.as_py() for v in dup.field("values")[:5]]
        raise InputError(f"{where}: {len(dup)} ids occur more than once, e.g. {examples}")
