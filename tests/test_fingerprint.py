"""A round's inputs fingerprint: pinned for a config with every setting hashed only when set, and composed of the
config-and-ids hash, the listings of the files the round reads and the package's version."""
import hashlib

import pyarrow as pa

from vaal_dist import version
from conftest import make_raw_pool
from vaal_dist.config import AcquisitionConfig, Backbone, RoundConfig, Setup, preset
from vaal_dist.fingerprint import hash_config_and_ids, inputs_fingerprint
from vaal_dist.pool.io import pool_state
from vaal_dist.pool.manifests import write_manifest

EVERY_SETTING = RoundConfig("s3://KEY:SECRET@bucket/pool?endpoint_override=h:1", "labeled.parquet", "out", 3,
                            strategy="typiclust", holdout="held.parquet", seed=7,
                            setup=Setup(preset("cpu"), acquisition=AcquisitionConfig(
                                max_clusters=500, embedding=Backbone("resnet18", "w.pt"), embeddings="vectors/")))


def test_a_round_with_every_later_setting_and_held_out_ids_keeps_its_fingerprint():
    """Computed by round.py's _fingerprint before it moved here: a change fails every such round's rerun."""
    ids, labeled, held_out = pa.array(["d", "a", "é", "b"]), pa.array(["b"]), pa.array(["a"])
    assert hash_config_and_ids(EVERY_SETTING, ids, labeled, held_out) == \
        "4428acb35a32ef984509eb70b097febd5832e9a05ceaef306e518b6ba1ccad29"


def test_credentials_are_not_hashed():
    """The config is hashed as run.json records it, redacted: a rotated secret keeps the round's fingerprint."""
    rotated = RoundConfig("s3://KEY:OTHER@bucket/pool?endpoint_override=h:1", "labeled.parquet", "out", 3,
                          strategy="typiclust", holdout="held.parquet", seed=7, setup=EVERY_SETTING.setup)
    ids, labeled = pa.array(["a", "b"]), pa.array(["b"])
    assert hash_config_and_ids(rotated, ids, labeled, None) == hash_config_and_ids(EVERY_SETTING, ids, labeled, None)


def test_the_fingerprint_hashes_config_and_ids_then_the_pools_listing_then_the_version(tmp_path, monkeypatch):
    """The composition a round started by an earlier version was fingerprinted with (no labels.parquet, no
    embeddings: their states are empty)."""
    pool = str(tmp_path / "pool")
    ids = pa.array(make_raw_pool(pool, n=6))
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:2])
    cfg = RoundConfig(pool, str(tmp_path / "labeled.parquet"), str(tmp_path / "out"), 2)
    monkeypatch.setattr(version, "__version__", "9.9.9")
    expected = hashlib.sha256(hash_config_and_ids(cfg, ids, ids[:2], None).encode()
                              + pool_state(pool).encode() + b"9.9.9").hexdigest()
    assert inputs_fingerprint(cfg, ids, ids[:2], None) == expected
