"""The pool's storage layer: one opener for every Parquet file read, the shard named in its errors, the listings a
round takes once, one way to tell this machine's processes."""
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_raw_pool
from conftest import bad_file, vectors_round
from vaal_dist.errors import InputError
from vaal_dist.folder_lock import FolderLock
from vaal_dist.labeling.labels import check_labels
from vaal_dist.placement import pool_listing
from vaal_dist.pool import embeddings, storage
from vaal_dist.pool.io import pool_state
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.shards import SHARD_READ_FAILED, ShardError
from vaal_dist.processes import THIS_MACHINE
from vaal_dist.round import run_round


def _short_read_damage(path) -> bytes:
    """The file's bytes with the first bit flip in its data page's header (which no CRC covers) after which
    pyarrow, its checksums on, reads fewer rows than the footer counts without an error."""
    clean = path.read_bytes()
    page = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    for at in range(24):
        for bit in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80):
            data = bytearray(clean)
            data[page + at] ^= bit
            try:
                rows = pq.read_table(pa.BufferReader(bytes(data)), page_checksum_verification=True).num_rows
            except (OSError, pa.ArrowException):
                continue
            if rows != pq.ParquetFile(path).metadata.num_rows:
                return bytes(data)
    raise AssertionError("no flip of the data page header reads short")


def test_a_manifest_read_short_by_a_damaged_page_header_is_refused_not_taken_as_fewer_ids(tmp_path):
    """The opener checks every Parquet file's rows against its footer, a manifest's too: read short, a labeled
    manifest would silently lose images."""
    manifest = tmp_path / "labeled.parquet"
    write_manifest(str(manifest), [f"img-{i:05d}" for i in range(64)])
    manifest.write_bytes(_short_read_damage(manifest))
    with pytest.raises(InputError, match=r"cannot read manifest .*: read \d+ of its 64 rows: a page header is "
                                         r"damaged"):
        read_manifest(str(manifest))


def test_a_damaged_label_page_is_one_error_naming_the_pool_and_the_shard(tmp_path):
    make_raw_pool(tmp_path / "pool", 40, size=4, shards=2)
    shard = tmp_path / "pool" / "part-00001.parquet"
    label = pq.ParquetFile(shard).metadata.row_group(0).column(2)        # id, image, label
    data = bytearray(shard.read_bytes())
    start = label.dictionary_page_offset or label.data_page_offset
    data[start + label.total_compressed_size - 1] ^= 0xFF       # the last page's data: its CRC fails
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"cannot read pool '.*pool': shard {shard}: .*CRC checksum verification "
                                         rf"failed"):
        check_labels(str(tmp_path / "pool"), pa.array(["img-00000"]))


def test_a_shard_error_keeps_its_shard_and_reason_through_pickling():
    """Raised in a Ray worker, it reaches the driver pickled; round.py finds the shard's name in its text."""
    error = pickle.loads(pickle.dumps(ShardError("bucket/pool/part-00002.parquet", "CRC checksum verification failed")))
    assert (error.shard, error.reason) == ("bucket/pool/part-00002.parquet", "CRC checksum verification failed")
    assert str(error) == f"{SHARD_READ_FAILED}bucket/pool/part-00002.parquet: CRC checksum verification failed"


def test_a_round_lists_the_embeddings_files_once_and_reads_the_files_it_fingerprinted(tmp_path, tiny_pool,
                                                                                       monkeypatch):
    pool, labeled, ids, _ = tiny_pool
    path = bad_file(tmp_path / "emb.parquet", "NaN", ids)        # refused once read: the round stops there
    listed = []
    real = embeddings.resolve
    monkeypatch.setattr(embeddings, "resolve", lambda uri: listed.append(uri) or real(uri))
    with pytest.raises(InputError, match="1 embeddings hold NaN"):
        run_round(vectors_round(pool, labeled, tmp_path / "out", path))
    assert listed == [path]


def test_the_nodes_compare_the_pool_listing_the_round_fingerprints(tmp_path):
    """A shard written again with other pixels of the same size is another pool to the round's fingerprint
    (``pool_state``), and so to the check that every node sees the driver's pool."""
    make_raw_pool(tmp_path / "pool", 20, size=4, shards=2)
    pool, shard = str(tmp_path / "pool"), tmp_path / "pool" / "part-00000.parquet"
    before = pool_state(pool), pool_listing(pool)
    os.utime(shard, ns=(0, shard.stat().st_mtime_ns + 10 ** 9))
    after = pool_state(pool), pool_listing(pool)
    assert before[0] != after[0] and before[1] != after[1]
    assert after[1].startswith("sha256:") and pool_listing(pool) == after[1]


def test_a_lock_claim_and_a_temporary_file_tell_this_machine_the_same_way(tmp_path):
    if THIS_MACHINE is None:
        pytest.skip("needs /proc to tell this machine's processes")
    claim = FolderLock(str(tmp_path), "writer").claim
    temporary = storage._temporary_name(str(tmp_path / "run.json"))
    assert claim["machine"] == THIS_MACHINE
    assert temporary.startswith(f"{tmp_path}/run.json{storage.TEMPORARY}{THIS_MACHINE}-{os.getpid()}-"
                                f"{claim['process_start']}-")
