"""Manifests: lists of ids, as Parquet with an ``id`` column or a text file with one id per line."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vaal_dist.errors import InputError, StorageError
from vaal_dist.pool.io import raise_on_bad_ids, read_pool_ids
from vaal_dist.pool.shards import read_parquet, write_parquet
from vaal_dist.pool.storage import exists, read_all, resolve, retrying


def read_manifest(uri: str) -> pa.Array:
    """The ids of a manifest: Parquet with an ``id`` column, or text with one id per line."""
    if not exists(uri):
        raise InputError(f"manifest {uri!r} does not exist")
    fs, path = resolve(uri)
    what = f"cannot read manifest {uri!r}"
    try:
        if path.endswith(".parquet"):
            ids = retrying(what, lambda: read_parquet(fs, path, ["id"])).column("id").combine_chunks()
            ids.validate(full=True)
        else:
            # utf-8-sig: an editor's byte-order mark is no part of the first id
            text = retrying(what, lambda: read_all(fs, path)).decode("utf-8-sig")
            # Ids are kept as written (no Unicode normalisation); only \n ends a line (splitlines() would also
            # cut an id at U+2028, U+0085, \x1c...), and spaces around an id (a \r of \r\n too) are dropped.
            ids = pa.array([line.strip() for line in text.split("\n") if line.strip()], pa.string())
    except StorageError:
        raise
    except (pa.ArrowInvalid, OSError, KeyError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: {e}") from e
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise InputError(f"manifest {uri!r}: column 'id' must be strings, got {ids.type}")
    if ids.null_count:
        raise InputError(f"manifest {uri!r}: {ids.null_count} null ids")
    raise_on_bad_ids(ids, f"manifest {uri!r}")
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
