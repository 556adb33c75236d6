"""The pool's embeddings as a file: a user's (``--embeddings``), or a fixed backbone's, computed once (the cache).

An embeddings file is Parquet, one file or a folder of ``.parquet`` files, with columns ``id`` (string) and
``embedding`` (a fixed-size list of float32 or float16, or a list of them all of one width). It is checked
structurally before a round writes anything: every id the round embeds is there, no id twice, one width, finite
values. Only the rows of the ids asked for are kept (read a record batch at a time and filtered), as float32.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from vaal_dist.errors import InputError, StorageError
from vaal_dist.pool.shards import open_shard, read_parquet, write_parquet
from vaal_dist.pool.storage import join, resolve, retrying

FLAG = "--embeddings"
EXAMPLES = 5            # ids an error names, of those at fault
BATCH_ROWS = 65_536     # rows of a file read at once (pyarrow's default)


@dataclass(frozen=True)
class Vectors:
    """The embeddings of ``ids`` (N,) str, in the order asked: ``x`` (N, d) float32; ``key`` names where they
    came from (the file's listing, or the cache's key), for what is computed from them once (the clusters)."""

    ids: np.ndarray
    x: np.ndarray
    key: str


@dataclass(frozen=True)
class EmbeddingsFiles:
    """The ``--embeddings`` Parquet files as one listing saw them: what a round fingerprints is what it reads."""

    uri: str
    fs: pafs.FileSystem
    files: tuple[pafs.FileInfo, ...]

    @property
    def state(self) -> str:
        """Each file's path, size and modification time (no byte is read): the round's fingerprint."""
        return json.dumps({"embeddings": [(f.path, f.size, f.mtime_ns) for f in self.files]})


def embeddings_files(uri: str) -> EmbeddingsFiles:
    """The Parquet file ``uri``, or the ``.parquet`` files under the folder ``uri``, sorted, as listed."""
    fs, path = resolve(uri)
    info = retrying(f"cannot list {uri!r}", lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.File:
        return EmbeddingsFiles(uri, fs, (info,))
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{FLAG} {uri!r} does not exist")
    listing = retrying(f"cannot list {uri!r}", lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)))
    files = sorted((f for f in listing if f.type == pafs.FileType.File and f.path.endswith(".parquet")),
                   key=lambda f: f.path)
    if not files:
        raise InputError(f"{FLAG} {uri!r} is a folder with no .parquet files")
    return EmbeddingsFiles(uri, fs, tuple(files))


def read_vectors(given: EmbeddingsFiles, wanted: pa.Array, key: str | None = None) -> Vectors:
    """The embeddings of every id of ``wanted``, in its order, from the ``given`` files, checked; InputError
    naming the fault. The files are read a record batch at a time into one (N, d) array: the driver never holds
    them whole, nor the rows of ids not asked for."""
    _check_schemas(given)
    file_ids = _read(given.uri, lambda: pa.chunked_array(
        [read_parquet(given.fs, f.path, ["id"]).column("id") for f in given.files])).cast(pa.string())
    _check_ids(given.uri, file_ids, wanted)
    x = _read(given.uri, lambda: _gather(given, wanted))
    return Vectors(wanted.to_numpy(zero_copy_only=False).astype(str), x,
                   key or hashlib.sha256(given.state.encode()).hexdigest())


def _gather(given: EmbeddingsFiles, wanted: pa.Array) -> np.ndarray:
    """(len(wanted), d) float32: each file row asked for at its place in ``wanted``, one record batch at a time."""
    x = np.zeros((len(wanted), 0), np.float32)
    for f in given.files:
        with open_shard(given.fs, f.path) as shard:
            for batch in shard.iter_batches(BATCH_ROWS, ["id", "embedding"]):
                where = pc.index_in(batch.column("id"), value_set=wanted).to_numpy(zero_copy_only=False)
                kept = ~np.isnan(where)                 # float: NaN where not asked
                if kept.any():
                    values = _matrix(given.uri, batch.filter(pa.array(kept)), x.shape[1] or None)
                    if not x.shape[1]:
                        x = np.empty((len(wanted), values.shape[1]), np.float32)
                    x[where[kept].astype(np.int64)] = values
    return x


def _read(uri: str, read):
    try:
        return retrying(f"cannot read {FLAG} {uri!r}", read)
    except StorageError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read {FLAG} {uri!r}: {' '.join(str(e).split())[:600]}") from None


def _check_schemas(given: EmbeddingsFiles) -> None:
    """Each file is Parquet with a string ``id`` and a float ``embedding``, all of one type."""
    def schema(path: str) -> pa.Schema:
        with open_shard(given.fs, path) as shard:
            return shard.schema
    schemas = [_read(given.uri, lambda f=f: schema(f.path)) for f in given.files]
    for one in schemas:
        _check_types(given.uri, one)
    kinds = {one.field("embedding").type for one in schemas}
    if len(kinds) > 1:
        raise InputError(f"{FLAG} {given.uri!r} has mixed widths or types across its files: {sorted(map(str, kinds))}")
    _read(given.uri, lambda: pa.unify_schemas(schemas))       # ids of two string types do not merge: named


def _check_types(uri: str, schema: pa.Schema) -> None:
    missing = [c for c in ("id", "embedding") if c not in schema.names]
    if missing:
        raise InputError(f"{FLAG} {uri!r} has no {missing} column (columns: {schema.names})")
    id_type, kind = schema.field("id").type, schema.field("embedding").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise InputError(f"{FLAG} {uri!r}: column 'id' must be strings, got {id_type}")
    is_list = pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not is_list or kind.value_type not in (pa.float32(), pa.float16()):
        raise InputError(f"{FLAG} {uri!r}: column 'embedding' must be a list of float32 or float16, got {kind}")


def _check_ids(uri: str, file_ids: pa.ChunkedArray, wanted: pa.Array) -> None:
    if file_ids.null_count:
        raise InputError(f"{FLAG} {uri!r}: {file_ids.null_count} rows have a null id")
    counts = pc.value_counts(file_ids)
    twice = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values")
    if len(twice):
        raise InputError(f"{FLAG} {uri!r}: {len(twice)} ids occur more than once, e.g. {twice[:EXAMPLES].to_pylist()}")
    missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=file_ids)))
    missing = missing.take(pc.sort_indices(missing))
    if len(missing):
        raise InputError(f"{FLAG} {uri!r} has no embedding for {len(missing)} of the round's {len(wanted)} labeled "
                         f"and unlabeled ids, e.g. {missing[:EXAMPLES].to_pylist()}")


def _matrix(uri: str, batch: pa.RecordBatch, width: int | None) -> np.ndarray:
    """(n, d) float32 from a batch's ``embedding`` column, once it holds no null and is of one ``width``."""
    column, ids = batch.column("embedding"), batch.column("id")
    if column.null_count:
        raise InputError(f"{FLAG} {uri!r}: {column.null_count} ids have a null embedding, e.g. "
                         f"{ids.filter(column.is_null())[:EXAMPLES].to_pylist()}")
    widths = pc.list_value_length(column).to_numpy()
    width = width if width is not None else (int(widths[0]) if len(widths) else 0)
    if width == 0:
        raise InputError(f"{FLAG} {uri!r}: embeddings of width 0, e.g. ids {ids[:EXAMPLES].to_pylist()}")
    odd = np.flatnonzero(widths != width)
    if len(odd):
        raise InputError(f"{FLAG} {uri!r} has mixed widths, {width} and {int(widths[odd[0]])}, e.g. ids "
                         f"{ids.take(pa.array(odd[:EXAMPLES])).to_pylist()}")
    values = pc.list_flatten(column)
    if values.null_count:
        raise InputError(f"{FLAG} {uri!r}: {values.null_count} embedding values are null")
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(batch), width)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = ids.take(pa.array(np.flatnonzero(~finite)[:EXAMPLES])).to_pylist()
        raise InputError(f"{FLAG} {uri!r}: {int((~finite).sum())} embeddings hold NaN or infinity, e.g. ids {bad}")
    return x


def write_vectors(uri: str, ids: np.ndarray, x: np.ndarray) -> None:
    """An embeddings file (id, embedding: fixed-size list of float32) that ``--embeddings`` reads."""
    d = x.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).ravel()), d)
    write_parquet(uri, pa.table({"id": pa.array(ids, pa.string()), "embedding": embedding}))


def cache_uri(cache: str, key: str) -> str:
    return join(cache, f"embeddings-{key}.parquet")
