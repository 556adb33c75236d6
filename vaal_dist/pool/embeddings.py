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
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from vaal_dist.errors import InputError, StorageError
from vaal_dist.pool.io import VERIFIED_PARQUET, join, resolve, retrying, write_parquet

FLAG = "--embeddings"
EXAMPLES = 5            # ids an error names, of those at fault


@dataclass(frozen=True)
class Vectors:
    """The embeddings of ``ids`` (N,) str, in the order asked: ``x`` (N, d) float32; ``key`` names where they
    came from (the file's listing, or the cache's key), for what is computed from them once (the clusters)."""

    ids: np.ndarray
    x: np.ndarray
    key: str


def embeddings_files(uri: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The Parquet file ``uri``, or the ``.parquet`` files under the folder ``uri``, sorted, as listed."""
    fs, path = resolve(uri)
    info = retrying(f"cannot list {uri!r}", lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.File:
        return fs, [info]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{FLAG} {uri!r} does not exist")
    listing = retrying(f"cannot list {uri!r}", lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)))
    files = sorted((f for f in listing if f.type == pafs.FileType.File and f.path.endswith(".parquet")),
                   key=lambda f: f.path)
    if not files:
        raise InputError(f"{FLAG} {uri!r} is a folder with no .parquet files")
    return fs, files


def listing_state(uri: str) -> str:
    """Each file's path, size and modification time, from a listing (no byte is read): the round's fingerprint."""
    return _listed(embeddings_files(uri)[1])


def _listed(files: list[pafs.FileInfo]) -> str:
    return json.dumps({"embeddings": [(f.path, f.size, f.mtime_ns) for f in files]})


def read_vectors(uri: str, wanted: pa.Array, key: str | None = None) -> Vectors:
    """The embeddings of every id of ``wanted``, in its order, from the file(s) at ``uri``, checked; InputError
    naming the fault. The file is read a record batch at a time into one (N, d) array: the driver never holds
    the file whole, nor the rows of ids not asked for."""
    fs, files = embeddings_files(uri)
    dataset = _dataset(uri, fs, files)
    file_ids = _read(uri, lambda: dataset.to_table(columns=["id"])).column("id").cast(pa.string())
    _check_ids(uri, file_ids, wanted)
    x = _read(uri, lambda: _gather(uri, dataset, file_ids, wanted))
    return Vectors(wanted.to_numpy(zero_copy_only=False).astype(str), x,
                   key or hashlib.sha256(_listed(files).encode()).hexdigest())


def _gather(uri: str, dataset: pads.Dataset, file_ids: pa.ChunkedArray, wanted: pa.Array) -> np.ndarray:
    """(len(wanted), d) float32: each file row asked for at its place in ``wanted``, one record batch at a time,
    in the file's order (that of ``file_ids``)."""
    places = pc.index_in(file_ids, value_set=wanted).to_numpy(zero_copy_only=False)   # float: NaN where not asked
    x, start = np.zeros((len(wanted), 0), np.float32), 0
    for batch in dataset.to_batches(columns=["id", "embedding"]):
        if not batch.column("id").cast(pa.string()).equals(file_ids.slice(start, len(batch)).combine_chunks()):
            raise RuntimeError("pyarrow read the embeddings file's rows in another order than their ids")
        where, start = places[start:start + len(batch)], start + len(batch)
        kept = ~np.isnan(where)
        if kept.any():
            values = _matrix(uri, batch.filter(pa.array(kept)), x.shape[1] or None)
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


def _dataset(uri: str, fs: pafs.FileSystem, files: list[pafs.FileInfo]) -> pads.Dataset:
    """The files as one dataset, once each is Parquet with a string ``id`` and a float ``embedding`` of one type."""
    parts = [_read(uri, lambda f=f: pads.dataset(f.path, filesystem=fs, format=VERIFIED_PARQUET)) for f in files]
    schemas = [p.schema for p in parts]
    for schema in schemas:
        _check_types(uri, schema)
    kinds = {schema.field("embedding").type for schema in schemas}
    if len(kinds) > 1:
        raise InputError(f"{FLAG} {uri!r} has mixed widths or types across its files: {sorted(map(str, kinds))}")
    return _read(uri, lambda: pads.dataset(parts))       # ids of two string types do not merge: named


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
