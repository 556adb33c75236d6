"""Pools and manifests on any filesystem pyarrow or fsspec can open, and atomic writes.

A pool is a folder of Parquet shards with columns ``id`` (unique string), ``image`` (binary) and an
optional ``label``; beside them ``pool.json`` says how ``image`` is stored: ``raw`` uint8 pixels of a
fixed ``image_shape`` [H, W, C], or ``encoded`` JPEG/PNG bytes (also assumed when there is no pool.json).
A manifest is a list of ids: Parquet with an ``id`` column, or a text file with one id per line.
"""
from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vaal_dist.errors import InputError

POOL_META = "pool.json"


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


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_atomic(uri: str, data: bytes) -> None:
    """Write the whole file under a temporary name, then rename: readers see all of it or nothing."""
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def write_json(uri: str, obj) -> None:
    write_atomic(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str):
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


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

    @property
    def channels(self) -> int:
        return self.image_shape[2] if self.image_shape else 3  # encoded images decode to RGB


def read_pool_meta(pool: str) -> PoolMeta:
    """The pool's pool.json, or the encoded-image default when it has none."""
    fs, path = resolve(pool)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"pool {pool!r} does not exist")
    meta_uri = join(pool, POOL_META)
    if not exists(meta_uri):
        return PoolMeta()
    try:
        meta = read_json(meta_uri)
        encoding = meta["encoding"]
        if encoding == "encoded":
            return PoolMeta()
        shape = tuple(meta["image_shape"]) if encoding == "raw" else None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{meta_uri}: not a valid pool description ({e!r})") from e
    if shape is None:
        raise InputError(f"{meta_uri}: encoding must be 'raw' or 'encoded', got {encoding!r}")
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"{meta_uri}: image_shape must be [height, width, channels], got {list(shape)}")
    return PoolMeta("raw", shape)


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
    write_json(join(pool, POOL_META), doc)


def pool_files(pool: str) -> tuple[pafs.FileSystem, list[str]]:
    """The pool's Parquet shards, sorted (pool.json and other files are not shards)."""
    fs, path = resolve(pool)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"pool {pool!r} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [path]
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise InputError(f"pool {pool!r} has no .parquet shards")
    return fs, files


def read_pool_ids(pool: str) -> pa.ChunkedArray:
    """Every id in the pool (only the id column is read). Errors name what is wrong with the pool."""
    fs, files = pool_files(pool)
    try:
        dataset = pads.dataset(files, filesystem=fs, format=VERIFIED_PARQUET)
        names = dataset.schema.names
        _check_same_schema(dataset, pool)
        ids = dataset.to_table(columns=["id"]).column("id")
        ids.validate(full=True)                               # e.g. ids that are not valid UTF-8
        check_row_count(len(ids), dataset.count_rows())       # counted from the footers
    except (pa.ArrowInvalid, OSError, KeyError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read pool {pool!r}: {_shard_error(fs, files) or e}") from e
    if "image" not in names:
        raise InputError(f"pool {pool!r} has no 'image' column (columns: {names})")
    image_type = dataset.schema.field("image").type
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


def _shard_error(fs: pafs.FileSystem, files: list[str]) -> str | None:
    """'shard PATH: error' for the first shard whose schema or ids cannot be read on their own: a dataset's
    error may not say which shard it met."""
    for path in files:
        try:
            with fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f, page_checksum_verification=True)
                _ = parquet.schema_arrow.names                    # a damaged column name fails to decode
                ids = parquet.read(columns=["id"]).column("id")
                ids.validate(full=True)
                check_row_count(len(ids), parquet.metadata.num_rows)
        except (pa.ArrowException, OSError, KeyError, UnicodeDecodeError) as e:
            return f"shard {path}: {e}"
    return None


def _check_same_schema(dataset: pads.FileSystemDataset, pool: str) -> None:
    """Every shard must have the first one's columns and types (a dataset would cast the others to it)."""
    for fragment in dataset.get_fragments():
        if not fragment.physical_schema.equals(dataset.schema):
            raise InputError(f"pool {pool!r}: shard {fragment.path!r} has columns "
                             f"{_columns(fragment.physical_schema)} but the first has {_columns(dataset.schema)}")


def _columns(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def check_labels(pool: str, ids: pa.Array) -> int:
    """The number of classes (1 + the pool's largest label), once every one of ``ids`` has a label.

    The labels are the pool's ``label`` column: the oracle's answers for labeled images (or, for
    prepared folders, the class sub-folder). Task models need one for every labeled image.
    """
    fs, files = pool_files(pool)
    dataset = pads.dataset(files, filesystem=fs, format=VERIFIED_PARQUET)
    if "label" not in dataset.schema.names:
        raise InputError(f"pool {pool!r} has no 'label' column; this strategy trains a classifier on the "
                         f"labeled images and needs their labels")
    if not pa.types.is_integer(dataset.schema.field("label").type):
        raise InputError(f"pool {pool!r}: column 'label' must be integers, got {dataset.schema.field('label').type}")
    all_labels = dataset.to_table(columns=["label"]).column("label")
    table = dataset.to_table(columns=["id", "label"], filter=pc.field("id").isin(ids) & pc.field("label").is_null())
    missing = table.column("id")
    if len(missing):
        raise InputError(f"pool {pool!r}: {len(missing)} labeled images have no label, e.g. "
                         f"{missing[:5].to_pylist()}")
    low = pc.min(all_labels).as_py()
    if low is not None and low < 0:
        raise InputError(f"pool {pool!r}: labels must be class indices >= 0, found {low}")
    return int(pc.max(all_labels).as_py() or 0) + 1


def read_manifest(uri: str) -> pa.Array:
    """The ids of a manifest: Parquet with an ``id`` column, or text with one id per line."""
    if not exists(uri):
        raise InputError(f"manifest {uri!r} does not exist")
    fs, path = resolve(uri)
    try:
        if path.endswith(".parquet"):
            ids = pq.read_table(path, filesystem=fs, columns=["id"], page_checksum_verification=True
                                ).column("id").combine_chunks()
            ids.validate(full=True)
        else:
            with fs.open_input_stream(path) as f:
                text = f.read().decode("utf-8-sig")     # an editor's byte-order mark is no part of the first id
            # Ids are kept as written (no Unicode normalisation); only \n ends a line (splitlines() would also
            # cut an id at U+2028, U+0085, \x1c...), and spaces around an id (a \r of \r\n too) are dropped.
            ids = pa.array([line.strip() for line in text.split("\n") if line.strip()], pa.string())
    except (pa.ArrowInvalid, OSError, KeyError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {uri!r}: {e}") from e
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
