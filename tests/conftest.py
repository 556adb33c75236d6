"""Shared fixtures: a temporary HOME (Ray's token lives there), one local Ray per test session (job API on
127.0.0.1), tiny seeded pools."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vaal_dist.pool.io import PoolMeta, write_manifest, write_pool


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    """Tests never touch the real ~/.ray: Ray writes and reads its auth token under $HOME, and every
    subprocess a test starts inherits this one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from vaal_dist.cli import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_raw_pool(path, n: int, size: int = 32, channels: int = 1, shards: int = 4, seed: int = 0,
                  id_prefix: str = "img") -> np.ndarray:
    """A raw pool of n seeded random images in ``shards`` files; returns the ids in pool order."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    ids = np.array([f"{id_prefix}-{i:05d}" for i in range(n)])
    bounds = np.linspace(0, n, shards + 1).astype(int)
    write_pool(str(path), [
        pa.table({"id": ids[a:b], "image": pa.array([p.tobytes() for p in pixels[a:b]], pa.binary()),
                  "label": np.arange(a, b) % 10})
        for a, b in zip(bounds, bounds[1:])
    ], PoolMeta("raw", (size, size, channels)))
    return ids


def png_bytes(rng, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tiny_pool(tmp_path):
    """(pool uri, labeled manifest uri, ids, labeled ids): 256 random 32x32 images, 32 labeled."""
    ids = make_raw_pool(tmp_path / "pool", 256)
    labeled = ids[np.random.default_rng(1).choice(len(ids), 32, replace=False)]
    write_manifest(str(tmp_path / "labeled.parquet"), labeled)
    return str(tmp_path / "pool"), str(tmp_path / "labeled.parquet"), ids, labeled
