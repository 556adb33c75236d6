"""A pool as Ray Datasets: read lazily, split into labeled / unlabeled by id, decoded for training."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta, pool_files
from vaal_dist.pool.shards import SHARD_READ_FAILED, open_shard, shard_named
from vaal_dist.pool.storage import StorageRetries


def read_pool(pool: str, columns: list[str] = ("id", "image")) -> ray.data.Dataset:
    """The pool's Parquet shards (pool.json and other files are ignored), in file order, each page's
    CRC checked as it is read.

    One read task per shard, through pyarrow: Ray Data's own Parquet reader (2.60, datasource V2)
    drops the ``fragment_scan_options`` that would turn the page checksums on, and a damaged image
    page would then be scored as garbage instead of being reported.
    """
    fs, files = pool_files(pool)
    shards = ray.data.from_items([{"shard": f} for f in files], override_num_blocks=len(files))
    return shards.map_batches(_read_shards, batch_size=1, batch_format="pyarrow",
                              fn_kwargs={"fs": fs, "columns": list(columns)})


def _read_shards(batch: pa.Table, fs, columns: list[str]) -> Iterator[pa.Table]:
    """Each shard of ``batch`` as tables of about Ray Data's target block size."""
    target = ray.data.DataContext.get_current().target_max_block_size
    for shard in batch.column("shard").to_pylist():
        yield from _read_shard(fs, shard, columns, target)


def _read_shard(fs, shard: str, columns: list[str], target: int) -> Iterator[pa.Table]:
    """The shard's rows, each once: after a transient storage error the shard is opened again and read on from
    the first row not yet yielded (pyarrow's own retries of each request are fewer on a Ray worker, see
    pool/storage.py). Failures count against the retries only until a row is read."""
    retries, rows = StorageRetries(f"{SHARD_READ_FAILED}{shard}"), 0
    with shard_named(shard):
        while True:
            try:
                for part in _shard_parts(fs, shard, columns, target, skip=rows):
                    rows += len(part)
                    retries.progressed()
                    yield part
                return
            except (OSError, pa.ArrowException) as e:
                if not retries.wait_after(e):
                    raise


def _shard_parts(fs, shard: str, columns: list[str], target: int, skip: int) -> Iterator[pa.Table]:
    """The shard's rows after its first ``skip``, as tables of about ``target`` bytes (the shard's reader checks
    the rows read against the footer's count at its end). The skipped rows are read again, not located through
    the footer: a damaged page can end a row group early without an error, and only the end-of-shard check tells."""
    with open_shard(fs, shard) as parquet:
        meta = parquet.metadata
        row_bytes = max(1, sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
                        // max(1, meta.num_rows))
        rows = 0
        for batch in parquet.iter_batches(batch_size=max(1, target // row_bytes), columns=columns):
            new = batch.slice(max(0, skip - rows))
            rows += len(batch)
            if len(new):
                yield pa.Table.from_batches([new])


def _select_by_id(batch: pa.Table, ids: pa.Array, keep_members: bool) -> pa.Table:
    member = pc.is_in(batch.column("id"), value_set=ids)
    return batch.filter(member if keep_members else pc.invert(member))


def filter_ids(ds: ray.data.Dataset, ids: pa.Array, keep: bool = True) -> ray.data.Dataset:
    """The rows of ``ds`` whose id is in ``ids`` (``keep``) or is not (``not keep``)."""
    return ds.map_batches(_select_by_id, batch_format="pyarrow", batch_size=None,
                          fn_kwargs={"ids": ids, "keep_members": keep})


class DecodeForTraining:
    """Ray Data batch fn: {'id', 'image'[, 'label']} -> {'pixels': (B, C, S, S) uint8[, 'label']}."""

    def __init__(self, meta: PoolMeta, size: int):
        self.meta, self.size = meta, size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = {"pixels": decode_images(batch["id"], batch["image"], self.meta, self.size)}
        return {**pixels, "label": batch["label"]} if "label" in batch else pixels


def labeled_datasets(pool: str, splits: dict[str, pa.Array], meta: PoolMeta, size: int
                     ) -> dict[str, ray.data.Dataset]:
    """{name: decoded pixels and labels of the images whose ids are in ``splits[name]``}."""
    decode = DecodeForTraining(meta, size)
    return {name: filter_ids(read_pool(pool, ("id", "image", "label")), ids).map_batches(decode, batch_format="numpy")
            for name, ids in splits.items()}
