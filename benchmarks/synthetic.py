"""A deterministic synthetic raw pool of any size, for the benchmarks (imported as ``synthetic`` by the scripts
here, as ``benchmarks.synthetic`` by tests/test_synthetic.py).

Shard k holds images k*shard_rows ... with pixels drawn from a generator seeded by (seed, k), so any
shard can be (re)made alone: a rerun skips shards already written, and the pool is the same bytes
whatever order or machine wrote it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vaal_dist.pool.io import PoolMeta, shard_name, write_pool
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import exists, join


def write_synthetic_pool(dest: str, images: int, image_size: int = 32, channels: int = 3,
                         shard_rows: int = 50_000, seed: int = 0) -> None:
    """Write ``images`` random uint8 images as a raw pool at ``dest`` (ids ``syn-00000000``...)."""
    shape = (image_size, image_size, channels)
    for k, start in enumerate(range(0, images, shard_rows)):
        uri = join(dest, shard_name(k))
        if exists(uri):
            continue
        rows = min(shard_rows, images - start)
        pixels = np.random.default_rng([seed, k]).integers(0, 256, (rows, int(np.prod(shape))), dtype=np.uint8)
        write_parquet(uri, pa.table({
            "id": pa.array([f"syn-{i:08d}" for i in range(start, start + rows)], pa.string()),
            "image": pa.array([row.tobytes() for row in pixels], pa.binary()),
        }))
    write_pool(dest, [], PoolMeta("raw", shape))      # no shards to add: pool.json, written last


def write_synthetic_files(dest: str, images: int, image_size: int = 64, classes: int = 10, seed: int = 0,
                          files_per_folder: int = 10_000) -> None:
    """Write ``images`` JPEGs as an ImageNet-style tree ``dest/class-c/i.jpg``, for prepare benchmarks.

    Image i is a smooth random colour field (JPEG compresses it to a few KB, like a photo thumbnail)
    from a generator seeded by (seed, i), in class folder i % classes; existing files are kept.
    """
    import io
    import os

    from PIL import Image

    for i in range(images):
        folder = os.path.join(dest, f"class-{i % classes}", f"{i // files_per_folder:04d}")
        path = os.path.join(folder, f"{i:08d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(folder, exist_ok=True)
        coarse = np.random.default_rng([seed, i]).integers(0, 256, (4, 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(coarse).resize((image_size, image_size), Image.BILINEAR).save(buf, "JPEG", quality=90)
        with open(path + ".tmp", "wb") as f:      # a killed run leaves no truncated .jpg behind
            f.write(buf.getvalue())
        os.replace(path + ".tmp", path)
