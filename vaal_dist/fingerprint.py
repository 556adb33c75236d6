"""A round's inputs fingerprint: what its selection depends on, hashed. A rerun into the same ``--out`` must match
it (``round._claim``), and an export names its predictions' model version by it.

It hashes the config (less how the round runs), the pool, labeled and held-out ids, and, from listings (no byte
read), the pool's files, the imported labels.parquet, the ``--embedding`` weights or ``--embeddings`` files, with
this package's version. A round's fingerprint must never change for the same inputs: a round started by an earlier
version would no longer resume.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from vaal_dist import version
from vaal_dist.config import RoundConfig
from vaal_dist.errors import InputError
from vaal_dist.labeling.labels import LABELS, pool_has_label_column
from vaal_dist.pool.embeddings import EmbeddingsFiles, embeddings_files
from vaal_dist.pool.io import pool_state
from vaal_dist.pool.storage import beside, resolve, retrying
from vaal_dist.redaction import redact_all

# Hashed only when set: a round started without them has the fingerprint it had before they existed.
HASHED_WHEN_SET = (("acquisition", "max_clusters"), ("acquisition", "embedding"), ("acquisition", "embeddings"))
UNHASHED = ("scoring", "out", "max_failures", "placement_timeout", "embeddings_cache")     # how it runs, not what


def inputs_fingerprint(cfg: RoundConfig, pool_ids, labeled_ids, holdout_ids,
                       embeddings: EmbeddingsFiles | None = None) -> str:
    """The round's fingerprint (hex SHA-256): config and ids, then the files' listings and the version.
    ``embeddings``: the ``--embeddings`` files as the round listed them (listed here when not given)."""
    fingerprint = hashlib.sha256(hash_config_and_ids(cfg, pool_ids, labeled_ids, holdout_ids).encode())
    fingerprint.update(pool_state(cfg.pool).encode())
    fingerprint.update(_imported_labels_state(cfg).encode())
    fingerprint.update(_embedding_state(cfg, embeddings).encode())
    fingerprint.update(version.__version__.encode())
    return fingerprint.hexdigest()


def hash_config_and_ids(cfg: RoundConfig, pool_ids, labeled_ids, holdout_ids) -> str:
    """The config (less UNHASHED: of the scoring settings only the precision, which changes scores) and the pool,
    labeled and held-out ids: what the selection depends on besides the files and the code."""
    h = hashlib.sha256()
    config = {k: v for k, v in redact_all(cfg.to_dict()).items() if k not in UNHASHED}
    config["amp"] = cfg.scoring.amp
    for group, key in HASHED_WHEN_SET:
        if config[group][key] is None:
            del config[group][key]
    h.update(json.dumps(config, sort_keys=True).encode())
    for ids in (pool_ids, labeled_ids, pa.array([], pa.string()) if holdout_ids is None else holdout_ids):
        hash_sorted(h, ids)
        h.update(b"\x02")
    return h.hexdigest()


def hash_sorted(h, ids, chunk: int = 65_536) -> None:
    """``h.update(b"\\x01".join(sorted ids))`` a chunk at a time: a million ids as Python strings at once
    cost the driver ~100 MiB. Arrow sorts strings by their UTF-8 bytes, which is Python's code-point order."""
    ordered = pc.take(ids, pc.sort_indices(ids))
    for start in range(0, len(ordered), chunk):
        if start:
            h.update(b"\x01")
        h.update(b"\x01".join(i.encode() for i in ordered.slice(start, chunk).to_pylist()))


def _embedding_state(cfg: RoundConfig, embeddings: EmbeddingsFiles | None) -> str:
    """The ``--embedding`` weights file's (or the ``--embeddings`` files') size and modification time, from a
    listing: weights trained again into the same file no longer match a round started on the old ones."""
    if cfg.acquisition.embeddings is not None:
        return (embeddings or embeddings_files(cfg.acquisition.embeddings)).state
    if cfg.acquisition.embedding is None:
        return ""
    uri = cfg.acquisition.embedding.weights
    info = _listed(uri)
    if info.type != pafs.FileType.File:
        raise InputError(f"--embedding-weights {uri!r} is not a file")
    return json.dumps({"embedding weights": [info.size, info.mtime_ns]})


def _imported_labels_state(cfg: RoundConfig) -> str:
    """labels.parquet beside the labeled manifest, where the labels come from there (a pool without a ``label``
    column): its size and modification time from a listing, so answers changed under the same ids (an import
    run again) no longer match a round started on the old ones."""
    info = _listed(beside(cfg.labeled, LABELS))
    if info.type == pafs.FileType.NotFound or pool_has_label_column(cfg.pool):
        return ""
    return json.dumps({LABELS: [info.size, info.mtime_ns]})


def _listed(uri: str) -> pafs.FileInfo:
    """What a listing says of one file (its size and modification time: no byte of it is read)."""
    fs, path = resolve(uri)
    return retrying(f"cannot list {uri!r}", lambda: fs.get_file_info(path))
