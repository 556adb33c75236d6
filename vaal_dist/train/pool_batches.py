"""Training batches streamed from a pool's shards: each worker reads its own share, epoch by epoch.

The unit of reading is a Parquet row group (pools that vaal_dist writes have ``ROW_GROUP_ROWS`` rows per
group). The driver describes each side of the training data once (``PoolSide``: which rows of which row
groups are unlabeled, or labeled). Every worker computes the same epoch plan from (seed, epoch): a
seeded order of the row groups, cut at ``epoch_images`` if given, dealt out so that every worker gets the
same number of images (DDP needs the same number of steps on every rank). A worker reads its row groups
in a background thread, decodes them, and shuffles ``MIX_IMAGES`` rows at a time before cutting batches.
A worker's memory is a few row groups and one mixing window whatever the pool's size, and the object
store holds none of it. docs/design-choices.md says why this and not a global shuffle.

The labeled images are scattered over the whole pool, and every epoch draws on them many times
(one labeled batch per unlabeled batch), so the driver first copies them into compact shards of their
own (``labeled_copy``): a pass over the labeled set then reads only labeled images.
"""
from __future__ import annotations

import functools
import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import torch

from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta, pool_files, shard_name
from vaal_dist.pool.shards import ROW_GROUP_ROWS, read_shard, write_parquet
from vaal_dist.pool.storage import exists, join, read_json, write_json

MIX_IMAGES = 4096      # rows shuffled together: a batch draws on every row group in the window
KEPT_IMAGES = MIX_IMAGES   # an endless side this small is kept decoded: at most one window's memory more
PREFETCH = 4           # row groups read and decoded ahead of the training step
COPY_SHARD_ROWS = 8192   # rows the driver holds while copying: 24 MiB of 32x32x3 images
_COPIED = "copy.json"  # written last into a labeled copy: the copy is whole


@dataclass(frozen=True)
class PoolSide:
    """Which rows of which row groups make one side of the training data."""

    fs: pafs.FileSystem
    files: tuple[str, ...]
    groups: np.ndarray          # (G, 2) file index, row-group index in that file
    members: np.ndarray         # (rows of all G groups,) bool: the row belongs to this side
    offsets: np.ndarray         # (G + 1,) where each group's rows start in ``members``

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """Members per row group, (G,)."""
        return np.diff(np.concatenate([[0], np.cumsum(self.members)])[self.offsets])

    @property
    def images(self) -> int:
        return int(self.members.sum())

    def read(self, g: int, start: int = 0, stop: int | None = None) -> pa.Table:
        """Row group ``g``'s member rows (members ``start`` to ``stop`` of them), columns id and image."""
        k, group = self.groups[g]
        table = read_shard(self.fs, self.files[k], lambda shard: shard.read_row_group(group, ["id", "image"]))
        rows = np.flatnonzero(self.members[self.offsets[g]:self.offsets[g + 1]])
        return table.take(rows[start:stop])


def pool_sides(pool: str, *selections: tuple[pa.Array, bool]) -> list[PoolSide]:
    """One side per (ids, keep): the pool's rows whose id is in ids (keep) or is not (not keep). Reads
    only the id column, once for all the sides."""
    fs, files = pool_files(pool)
    groups, sizes, members = [], [], [[] for _ in selections]
    for k, path in enumerate(files):
        shard_ids, meta = read_shard(fs, path, lambda shard: (shard.read(["id"]).column("id"), shard.metadata))
        groups += [(k, g) for g in range(meta.num_row_groups)]
        sizes += [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        for side, (ids, keep) in zip(members, selections):
            member = pc.is_in(shard_ids, value_set=ids)
            side.append(np.asarray(member if keep else pc.invert(member), dtype=bool))
    groups = np.asarray(groups, np.int64).reshape(-1, 2)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    return [PoolSide(fs, tuple(files), groups, np.concatenate(side) if side else np.zeros(0, bool), offsets)
            for side in members]


def labeled_copy(source: PoolSide, ids: pa.Array, dest: str, workers: int) -> PoolSide:
    """The images of ``source`` (the pool's rows of ``ids``) copied to ``dest`` in shards whose row groups
    deal out to ``workers`` (at least four groups each when there are enough images); a whole copy of
    the same shards, ids and layout is reused."""
    group_rows = int(min(ROW_GROUP_ROWS, max(1, len(ids) // (4 * workers))))
    what = {"shards": list(source.files), "row_group_rows": group_rows,
            "ids": hashlib.sha256("\n".join(sorted(ids.to_pylist())).encode()).hexdigest()}
    if not exists(join(dest, _COPIED)) or read_json(join(dest, _COPIED)) != what:
        tables, rows, written = [], 0, 0
        groups = np.flatnonzero(source.counts)
        for g in groups:
            tables.append(source.read(int(g)))
            rows += len(tables[-1])
            if rows >= COPY_SHARD_ROWS or g == groups[-1]:
                write_parquet(join(dest, shard_name(written)), pa.concat_tables(tables), group_rows)
                tables, rows, written = [], 0, written + 1
        dest_fs, shards = pool_files(dest)
        for path in shards[written:]:            # shards of an earlier, larger copy
            dest_fs.delete_file(path)
        write_json(join(dest, _COPIED), what)
    return pool_sides(dest, (ids, True))[0]


def epoch_share(counts: np.ndarray, rank: int, workers: int, seed: int, limit: int | None = None
                ) -> list[tuple[int, int, int]]:
    """This worker's part of one epoch, as (row group, first member, end member). All workers compute
    the same plan: the groups' members in a seeded group order, cut after ``limit`` images, split into
    ``workers`` equal runs (the last ``total % workers`` images wait for another epoch)."""
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[counts[order] > 0]
    ends = np.cumsum(counts[order])
    total = int(ends[-1]) if len(ends) else 0
    each = min(total, total if limit is None else limit) // workers
    lo, hi = rank * each, (rank + 1) * each
    share = []
    for g, end, n in zip(order.tolist(), ends.tolist(), counts[order].tolist()):
        start = end - n
        if start < hi and end > lo:
            share.append((g, max(lo, start) - start, min(hi, end) - start))
    return share


@dataclass(frozen=True)
class PoolSource:
    """What VAAL's training loop reads: the labeled copy, the pool's unlabeled rows, how to decode them."""

    meta: PoolMeta
    labeled: PoolSide
    unlabeled: PoolSide

    def epoch(self, size: int, batch_size: int, *, rank: int, workers: int, seed: int, limit: int | None,
              pin: bool) -> tuple[Iterator[dict], Iterator[dict]]:
        """(endless labeled batches, one epoch of unlabeled batches) for this worker, both seeded by ``seed``."""
        labeled = endless_batches(self.labeled, self.meta, size, batch_size, rank=rank, workers=workers, seed=seed,
                                  pin=pin)
        unlabeled = epoch_batches(self.unlabeled, self.meta, size, batch_size, rank=rank, workers=workers,
                                  seed=seed, limit=limit, pin=pin)
        return labeled, unlabeled


def pool_source(pool: str, labeled_ids: pa.Array, not_unlabeled: pa.Array, meta: PoolMeta, copy_dir: str,
                workers: int) -> PoolSource:
    """The training data of a VAAL round: the labeled images (copied to ``copy_dir``) and the rest of the
    pool less ``not_unlabeled`` (the labeled and held-out ids)."""
    labeled, unlabeled = pool_sides(pool, (labeled_ids, True), (not_unlabeled, False))
    return PoolSource(meta, labeled_copy(labeled, labeled_ids, copy_dir, max(1, workers)), unlabeled)


def _decoded(side: PoolSide, share: list[tuple[int, int, int | None]], meta: PoolMeta, size: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, uint8 pixels (n, C, S, S)) of each (row group, first member, end member) in ``share``."""
    for g, start, stop in share:
        table = side.read(g, start, stop)
        ids = table.column("id").to_numpy(zero_copy_only=False)
        yield ids, decode_images(ids, table.column("image").to_pylist(), meta, size)


def _mixed(chunks: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, rng: np.random.Generator,
           pin: bool) -> Iterator[dict]:
    """Batches of ``batch_size`` (the last one smaller) cut from ``MIX_IMAGES`` rows shuffled at a time."""
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    rows = 0
    for ids, pixels in chunks:
        pending.append((ids, pixels))
        rows += len(ids)
        if rows >= MIX_IMAGES:
            ids, pixels = _shuffled(pending, rng)
            whole = rows - rows % batch_size
            yield from _batches(ids[:whole], pixels[:whole], batch_size, pin)
            pending, rows = [(ids[whole:], pixels[whole:])], rows - whole
    if rows:
        yield from _batches(*_shuffled(pending, rng), batch_size, pin)


def _shuffled(pending: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    ids, pixels = np.concatenate([i for i, _ in pending]), np.concatenate([p for _, p in pending])
    order = rng.permutation(len(ids))
    return ids[order], pixels[order]


def _batches(ids: np.ndarray, pixels: np.ndarray, batch_size: int, pin: bool) -> Iterator[dict]:
    """{'id': (B,) str, 'pixels': (B, C, S, S) uint8 tensor, pinned for a fast copy to a GPU if ``pin``}."""
    for start in range(0, len(ids), batch_size):
        t = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size]))
        yield {"id": ids[start:start + batch_size], "pixels": t.pin_memory() if pin else t}


def epoch_batches(side: PoolSide, meta: PoolMeta, size: int, batch_size: int, *, rank: int, workers: int,
                  seed: int, limit: int | None = None, pin: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of this worker's share of ``side``: uint8 ``pixels`` batches, the same count on every worker."""
    share = epoch_share(side.counts, rank, workers, seed, limit)
    rng = np.random.default_rng([seed, rank])
    return _Prefetched(_mixed(_decoded(side, share, meta, size), batch_size, rng, pin))


def endless_batches(side: PoolSide, meta: PoolMeta, size: int, batch_size: int, *, rank: int, workers: int,
                    seed: int, pin: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's row groups of ``side`` (every ``workers``-th of a seeded order), in a new order
    each pass, for as long as they are asked for.

    A side of at most ``KEPT_IMAGES`` images is read and decoded once and kept: filling one mixing window
    takes many passes over it (256 for a worker's 16 labeled images), and reading every row group on each pass
    makes an epoch 14 times slower with --out on a bucket (docs/benchmarks.md)."""
    def group(g: int) -> tuple[np.ndarray, np.ndarray]:
        return next(_decoded(side, [(g, 0, None)], meta, size))
    if side.images <= KEPT_IMAGES:
        group = functools.cache(group)

    def passes():
        for p in range(1 << 62):
            order = np.random.default_rng([seed, p]).permutation(len(side.counts))
            groups = [int(g) for g in order[rank::workers] if side.counts[g]]
            if not groups:
                raise ValueError("this worker's labeled share is empty: use fewer workers or label more")
            yield from map(group, groups)

    return _Prefetched(_mixed(passes(), batch_size, np.random.default_rng([seed, rank]), pin))


class _Prefetched(Iterator):
    """``items`` produced by a background thread, at most ``PREFETCH`` ahead; ``close`` stops it.

    Reading and decoding (pyarrow, numpy) release the GIL, so they overlap the training step."""

    _END = object()

    def __init__(self, items: Iterator):
        self._queue: queue.Queue = queue.Queue(PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(items,), daemon=True)
        self._thread.start()

    def _fill(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:       # handed to the consumer, raised there
            self._put(e)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)     # stays ended
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
