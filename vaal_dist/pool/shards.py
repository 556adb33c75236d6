"""Parquet files, the one way vaal_dist writes and reads them: every page carries a CRC (written by
``write_parquet``, checked on every read through ``open_shard``), so damaged storage is refused, not read, and a
read that ends short of the footer's row count is refused too. A pool's shard that cannot be read is named in
the error (``read_shard``, ``shard_named``): round.py finds that name again in a Ray worker's error.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vaal_dist.errors import StorageError
from vaal_dist.pool.storage import retrying, write_atomic

T = TypeVar("T")

PAGE_CRC_FAILURE = "CRC checksum verification failed"        # pyarrow's words when a page fails it
SHARD_READ_FAILED = "cannot read shard "                      # a ShardError's words, found again by round.py
ROW_GROUP_ROWS = 1024      # training reads a pool a row group at a time (train/pool_batches.py)
# what pyarrow raises reading a damaged file: KeyError and UnicodeDecodeError from a footer's schema
_READ_ERRORS = (OSError, pa.ArrowException, KeyError, UnicodeDecodeError)


def write_parquet(uri: str, table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, write_page_checksum=True)
    write_atomic(uri, sink.getvalue().to_pybytes())


class Shard:
    """An open Parquet file whose reads are checked: each page against its CRC, the rows against the footer's
    count (a damaged page header, its page type say, can end a column early without an error)."""

    def __init__(self, parquet: pq.ParquetFile, path: str):
        self.parquet, self.path = parquet, path

    @property
    def schema(self) -> pa.Schema:
        return self.parquet.schema_arrow

    @property
    def metadata(self) -> pq.FileMetaData:
        return self.parquet.metadata

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return _counted(self.parquet.read(columns=columns), self.metadata.num_rows)

    def read_row_group(self, group: int, columns: list[str] | None = None) -> pa.Table:
        return _counted(self.parquet.read_row_group(group, columns=columns), self.metadata.row_group(group).num_rows)

    def iter_batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The file's rows in batches of ``batch_size``; the count is checked once the last is read."""
        rows = 0
        for batch in self.parquet.iter_batches(batch_size=batch_size, columns=columns):
            rows += len(batch)
            yield batch
        _check_rows(rows, self.metadata.num_rows)


def _counted(table: pa.Table, expected: int) -> pa.Table:
    _check_rows(len(table), expected)
    return table


def _check_rows(rows: int, expected: int) -> None:
    if rows != expected:
        raise OSError(f"read {rows} of its {expected} rows: a page header is damaged")


@contextlib.contextmanager
def open_shard(fs: pafs.FileSystem, path: str) -> Iterator[Shard]:
    """The Parquet file at ``path`` (a pool's shard, a manifest, labels.parquet, ...), its reads checked."""
    with fs.open_input_file(path) as f:
        yield Shard(pq.ParquetFile(f, page_checksum_verification=True), path)


def read_parquet(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """The whole Parquet file at ``path`` (``columns`` of it), checked."""
    with open_shard(fs, path) as shard:
        return shard.read(columns)


def read_shard(fs: pafs.FileSystem, path: str, read: Callable[[Shard], T]) -> T:
    """``read(the shard at path)``, opened again after a transient storage error; any other error, or the
    transient ones past their retries, a ShardError (StorageError) naming the shard."""
    def attempt() -> T:
        with open_shard(fs, path) as shard:
            return read(shard)
    with shard_named(path):
        return retrying(f"{SHARD_READ_FAILED}{path}", attempt)


class ShardError(OSError):
    """A shard could not be read: ``cannot read shard PATH: REASON``."""

    def __init__(self, shard: str, reason: str):
        super().__init__(f"{SHARD_READ_FAILED}{shard}: {reason}")
        self.shard, self.reason = shard, reason

    def __reduce__(self):                       # raised in Ray workers: pickled by its fields
        return ShardError, (self.shard, self.reason)


@contextlib.contextmanager
def shard_named(shard: str):
    """An error met reading ``shard`` (a damaged page's, say) is a ShardError naming it. pyarrow reports some
    damage (a page header's sizes) as ArrowInvalid."""
    try:
        yield
    except (StorageError, ShardError):
        raise                                   # it names the shard already
    except _READ_ERRORS as e:
        raise ShardError(shard, str(e)) from e
