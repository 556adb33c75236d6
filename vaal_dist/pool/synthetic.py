"""A deterministic synthetic raw pool of any size, for scale tests and benchmarks.

Shard k holds images k*shard_rows ... with pixels drawn from a generator seeded by (seed, k), so any
shard can be (re)made alone: a rerun skips shards already written, and the pool is the same bytes
whatever order or machine wrote it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vaal_dist.pool.io import PoolMeta, exists, join, write_parquet, write_pool


def write_synthetic_pool(dest: str, images: int, image_size: int = 32, channels: int = 3,
                         shard_rows: int = 50_000, seed: int = 0) -> None:
    """Write ``images`` random uint8 images as a raw pool at ``dest`` (ids ``syn-00000000``...)."""
    shape = (image_size, image_size, channels)
    for k, start in enumerate(range(0, images, shard_rows)):
        uri = join(dest, f"part-{k:05d}.parquet")
        if exists(uri):
            continue
        rows = min(shard_rows, images - start)
        pixels = np.random.default_rng([seed, k]).integers(0, 256, (rows, int(np.prod(shape))), dtype=np.uint8)
        write_parquet(uri, pa.table({
            "id": pa.array([f"syn-{i:08d}" for i in range(start, start + rows)], pa.string()),
            "image": pa.array([row.tobytes() for row in pixels], pa.binary()),
        }))
    write_pool(dest, [], PoolMeta("raw", shape))      # no shards to add: pool.json, written last
