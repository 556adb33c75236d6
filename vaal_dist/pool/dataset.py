"""A pool as Ray Datasets: read lazily, split into labeled / unlabeled by id, decoded for training."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta, pool_files


def read_pool(pool: str, columns: list[str] = ("id", "image")) -> ray.data.Dataset:
    """The pool's Parquet shards (pool.json and other files are ignored), in file order."""
    fs, files = pool_files(pool)
    # At least one block per shard, so that small pools still spread over every scoring actor.
    return ray.data.read_parquet(files, filesystem=fs, columns=list(columns), override_num_blocks=len(files))


def _select_by_id(batch: pa.Table, ids: pa.Array, keep_members: bool) -> pa.Table:
    member = pc.is_in(batch.column("id"), value_set=ids)
    return batch.filter(member if keep_members else pc.invert(member))


def filter_ids(ds: ray.data.Dataset, ids: pa.Array, keep: bool = True) -> ray.data.Dataset:
    """The rows of ``ds`` whose id is in ``ids`` (``keep``) or is not (``not keep``)."""
    return ds.map_batches(_select_by_id, batch_format="pyarrow", batch_size=None,
                          fn_kwargs={"ids": ids, "keep_members": keep})


def split_labeled(ds: ray.data.Dataset, labeled_ids: pa.Array) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(labeled rows, unlabeled rows) of a pool dataset; nothing in the second has a labeled id."""
    return filter_ids(ds, labeled_ids, True), filter_ids(ds, labeled_ids, False)


class DecodeForTraining:
    """Ray Data batch fn: {'id', 'image'[, 'label']} -> {'pixels': (B, C, S, S) uint8[, 'label']}."""

    def __init__(self, meta: PoolMeta, size: int):
        self.meta, self.size = meta, size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = {"pixels": decode_images(batch["id"], batch["image"], self.meta, self.size)}
        return {**pixels, "label": batch["label"]} if "label" in batch else pixels


def training_datasets(pool: str, labeled_ids: pa.Array, meta: PoolMeta, size: int,
                      not_unlabeled: pa.Array | None = None) -> dict[str, ray.data.Dataset]:
    """{'labeled', 'unlabeled'} datasets of decoded pixels, ready for Ray Train's dataset shards.

    ``not_unlabeled``: ids kept out of the unlabeled side (default: the labeled ones), e.g. a held-out split.
    """
    ds = read_pool(pool)
    labeled = filter_ids(ds, labeled_ids, True)
    unlabeled = filter_ids(ds, labeled_ids if not_unlabeled is None else not_unlabeled, False)
    decode = DecodeForTraining(meta, size)
    return {name: d.map_batches(decode, batch_format="numpy")
            for name, d in (("labeled", labeled), ("unlabeled", unlabeled))}


def labeled_datasets(pool: str, splits: dict[str, pa.Array], meta: PoolMeta, size: int
                     ) -> dict[str, ray.data.Dataset]:
    """{name: decoded pixels and labels of the images whose ids are in ``splits[name]``}."""
    decode = DecodeForTraining(meta, size)
    return {name: filter_ids(read_pool(pool, ("id", "image", "label")), ids).map_batches(decode, batch_format="numpy")
            for name, ids in splits.items()}
