"""Cluster-Margin's clustering of a pool as a file: Parquet (id, cluster) with the fingerprint of what it was
computed from in the schema's metadata, computed once and read back while the fingerprint matches. The
clustering itself is pure (``clustering.cluster_margin``); every read and write here is pool/io's, retried.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vaal_dist.clustering.cluster_margin import PoolClusters, cluster, clustering_inputs
from vaal_dist.errors import InputError
from vaal_dist.pool.shards import read_parquet, write_parquet
from vaal_dist.pool.storage import exists, resolve, retrying

FORMAT = "vaal_dist.cluster_margin.v1"


def cached_cluster_pool(uri: str, embeddings: np.ndarray, ids, **settings) -> PoolClusters:
    """``cluster_pool(embeddings, ids, **settings)``, read from ``uri`` when it holds the clustering of
    these very embeddings, ids and settings, else computed and saved there."""
    inputs = clustering_inputs(embeddings, ids, **settings)
    clusters = load_clusters(uri, inputs.fingerprint)
    if clusters is None:
        clusters = cluster(inputs)
        save_clusters(uri, clusters)
    return clusters


def save_clusters(uri: str, clusters: PoolClusters) -> None:
    """Parquet (id, cluster) with the fingerprint in the schema's metadata, written atomically."""
    table = pa.table({"id": pa.array(clusters.ids, pa.string()), "cluster": pa.array(clusters.cluster, pa.int64())})
    write_parquet(uri, table.replace_schema_metadata({"format": FORMAT, "fingerprint": clusters.fingerprint}))


def load_clusters(uri: str, expected_fingerprint: str | None = None) -> PoolClusters | None:
    """The clusters saved at ``uri``; None when there are none or they came from other inputs."""
    if not exists(uri):
        return None
    fs, path = resolve(uri)
    table = retrying(f"cannot read {uri!r}", lambda: read_parquet(fs, path))
    meta = table.schema.metadata or {}
    if meta.get(b"format") != FORMAT.encode():
        raise InputError(f"{uri} is not a saved Cluster-Margin clustering")
    found = meta[b"fingerprint"].decode()
    if expected_fingerprint is not None and found != expected_fingerprint:
        return None
    return PoolClusters(table.column("id").to_numpy(zero_copy_only=False).astype(str),
                        table.column("cluster").to_numpy(), found)
