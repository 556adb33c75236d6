"""A folder or bucket of JPEG/PNG files -> a raw pool (Parquet shards of resized uint8 pixels).

The sorted file listing is cut into shards of ``files_per_shard`` files; shard k is
``part-{k:05d}.parquet`` and its report of skipped files ``errors-{k:05d}.pq``. Both are written
atomically, the report first, so a shard whose two files exist is finished and a rerun skips it.
Links are never followed: they and special files are left out of the listing and reported in
``errors-listing.pq``. ``prepare-inputs.json`` pins the listing and settings a dest was started with
(a rerun on another listing would shift files between shards), ``classes.json`` maps class folders to
labels, ``prepare.json`` is the summary and ``pool.json`` comes last, naming the source folder; each shard
row keeps its file's size and modification time, so an export can give the labeler the original file. See
docs/prepare.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray.data

from vaal_dist.errors import InputError
from vaal_dist.folder_lock import writer_lock
from vaal_dist.pool.images import MAX_PIXELS, RefusedImage, decode_resized
from vaal_dist.pool.io import SOURCE_MTIME, SOURCE_SIZE, PoolMeta, shard_name, write_pool
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import exists, join, lies_within, read_json, remove_stale_temporaries, resolve, write_json
from vaal_dist.redaction import redact

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")   # compared lower-cased
INPUTS, CLASSES, SUMMARY = "prepare-inputs.json", "classes.json", "prepare.json"

NOT_IMAGE_EXTENSION = "not an image extension"
EMPTY_FILE = "empty file"
CORRUPT_IMAGE = "corrupt image"     # and NOT_JPEG_OR_PNG, TOO_MANY_PIXELS, OVER_DECODE_BUDGET from images
LINK_OUTSIDE = "link outside the source folder"          # reasons of entries the listing leaves out
LINK_INSIDE = "link inside the source folder"
BROKEN_LINK = "broken link"
NOT_REGULAR_FILE = "not a regular file"
LISTING_REPORT = "errors-listing.pq"

REPORT_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


@dataclass(frozen=True)
class ShardSettings:
    """What a shard worker needs besides its file list; all of it is pinned by the dest's fingerprint."""

    image_size: int
    channels: int
    max_pixels: int
    classes: dict[str, int] | None     # class folder -> label; None: the pool has no labels


class SkippedFile(Exception):
    """A file that is not made into a pool image, with a reason from the fixed list above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def prepare_pool(source: str, dest: str, image_size: int = 32, channels: int = 3, files_per_shard: int = 1000,
                 max_pixels: int = MAX_PIXELS, labels: str = "auto", cpus_per_shard: float = 0.5,
                 read_threads: int = 8) -> dict:
    """Prepare (or resume preparing) the raw pool ``dest`` from the JPEG/PNG files under ``source``.

    ``labels``: ``auto`` (class folders when every image lies in a sub-folder, none when all lie at the
    root), ``folders`` or ``none``. Each shard is one Ray Data task asking ``cpus_per_shard`` CPUs and
    reading its files with ``read_threads`` threads; Ray must be initialised. Files that cannot be made
    into images are skipped and reported. Returns the summary also written to ``dest/prepare.json``.
    """
    start = time.perf_counter()
    _check_arguments(image_size, channels, files_per_shard, max_pixels, labels, cpus_per_shard, read_threads)
    ids, unlisted = list_source(source, dest)
    settings = ShardSettings(image_size, channels, max_pixels, class_folders(source, ids, labels))
    shards = [ids[i:i + files_per_shard] for i in range(0, len(ids), files_per_shard)]
    with writer_lock(dest) as lock:          # from the check of what dest holds to pool.json, its last write
        record_sources = _claim_dest(dest, ids, settings, files_per_shard)
        remove_stale_temporaries(dest)           # shards half-written by a killed run; never a live writer's
        _report_unlisted(source, dest, unlisted)
        todo = unfinished_shards(dest, len(shards))
        log.info("prepare: %d files in %d shards, %d to write", len(ids), len(shards), len(todo))
        written = _run_shards(source, dest, {k: shards[k] for k in todo}, settings, cpus_per_shard, read_threads,
                              record_sources)
        summary = _summarize(source, dest, len(ids) + len(unlisted), len(shards), written, settings,
                             time.perf_counter() - start)
        write_json(join(dest, SUMMARY), summary)
        if summary["prepared"] == 0:
            raise InputError(f"no file under {source!r} could be prepared: {summary['skipped_by_reason']}")
        lock.check_held()
        write_pool(dest, [], PoolMeta("raw", (image_size, image_size, channels),     # no shards: pool.json only
                                      source_uri(source) if record_sources else None))
    return summary


def _check_arguments(image_size, channels, files_per_shard, max_pixels, labels, cpus_per_shard, read_threads):
    for name, value in (("image_size", image_size), ("files_per_shard", files_per_shard),
                        ("max_pixels", max_pixels), ("read_threads", read_threads)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if labels not in ("auto", "folders", "none"):
        raise InputError(f"labels must be 'auto', 'folders' or 'none', got {labels!r}")
    if cpus_per_shard <= 0:
        raise InputError(f"cpus_per_shard must be positive, got {cpus_per_shard}")


def list_source(source: str, dest: str) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Every regular file under ``source`` as a sorted POSIX path relative to it (the pool ids), and the
    entries left out: {path: (reason, detail)} for links and special files (local folders only: object
    stores have neither)."""
    fs, root = resolve(source)
    root = root.rstrip("/")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"source {source!r} does not exist")
    if info.type != pafs.FileType.Directory:
        raise InputError(f"source {source!r} is not a folder")
    if lies_within(dest, source):
        raise InputError(f"dest {dest!r} lies inside source {source!r}; a rerun would list "
                         f"the pool as source files")
    if isinstance(fs, pafs.LocalFileSystem):
        ids, unlisted = _local_listing(os.path.realpath(root))
    else:
        ids = sorted(f.path[len(root) + 1:] for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                     if f.type == pafs.FileType.File)
        unlisted = {}
    if not ids:
        example = next(iter(sorted(unlisted.items())), None)
        raise InputError(f"source {source!r} has no files" + (
            f" ({len(unlisted)} links or special files left out, e.g. {example[0]!r}: {example[1][0]})"
            if example else ""))
    return ids, unlisted


def _local_listing(root: str) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The regular files under the local folder ``root`` (a real path) and the entries left out.

    No link is followed, so the walk stays inside ``root`` and cannot loop. A link to a file or folder
    inside ``root`` is left out too: the walk lists its target under the target's own path, once.
    """
    files, unlisted, folders = [], {}, [""]
    while folders:
        folder = folders.pop()
        with os.scandir(os.path.join(root, folder)) as entries:
            for entry in entries:
                path = posixpath.join(folder, entry.name)
                if entry.is_symlink():
                    unlisted[path] = _link_reason(entry.path, root)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(path)
                else:                        # a FIFO would block its reader forever
                    unlisted[path] = (NOT_REGULAR_FILE, "")
    return sorted(files), unlisted


def _link_reason(link: str, root: str) -> tuple[str, str]:
    """(reason, the link's resolved target) for a link under ``root``."""
    target = os.path.realpath(link)
    if not os.path.exists(target):               # dangling, or a loop that never resolves
        return BROKEN_LINK, target
    inside = target == root or target.startswith(root + os.sep)
    return (LINK_INSIDE if inside else LINK_OUTSIDE), target


def _report_unlisted(source: str, dest: str, unlisted: dict[str, tuple[str, str]]) -> None:
    """Write what the listing left out (every run: the listing is taken again) and log it."""
    rows = [{"id": path, "reason": reason, "detail": detail} for path, (reason, detail) in sorted(unlisted.items())]
    write_parquet(join(dest, LISTING_REPORT), pa.Table.from_pylist(rows, schema=REPORT_SCHEMA))
    outside = [r["id"] for r in rows if r["reason"] == LINK_OUTSIDE]
    if outside:
        log.warning("prepare: %d links under %s lead outside the source folder and were skipped, e.g. %r",
                    len(outside), redact(source), outside[0])
    if len(rows) > len(outside):
        log.info("prepare: %d other links or special files under %s left out", len(rows) - len(outside),
                 redact(source))


def is_image_name(file_id: str) -> bool:
    """Whether the file counts as an image, by its extension."""
    return file_id.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(source: str, ids: list[str], labels: str) -> dict[str, int] | None:
    """Class folder -> label (folders sorted by name), or None when the pool has no labels."""
    images = [i for i in ids if is_image_name(i)]
    if not images:
        raise InputError(f"source {source!r} has no {'/'.join(IMAGE_EXTENSIONS)} files "
                         f"(e.g. {ids[0]!r})")
    if labels == "none":
        return None
    at_root = [i for i in images if "/" not in i]
    if labels == "auto" and len(at_root) == len(images):
        return None
    if at_root:
        nested = next((i for i in images if "/" in i), None)
        raise InputError(f"source {source!r}: image {at_root[0]!r} is not inside a class folder"
                         + (f" while {nested!r} is" if nested else "") + "; pass labels='none' to prepare "
                         "it without labels, or move the stray images")
    return {name: label for label, name in enumerate(sorted({i.split("/", 1)[0] for i in images}))}


def _fingerprint(ids: list[str], settings: ShardSettings, files_per_shard: int) -> str:
    h = hashlib.sha256(json.dumps([asdict(settings), files_per_shard], sort_keys=True).encode())
    h.update(b"\x00".join(i.encode() for i in ids))
    return h.hexdigest()


def _claim_dest(dest: str, ids: list[str], settings: ShardSettings, files_per_shard: int) -> bool:
    """Pin dest to this listing and these settings, or refuse if it was started with others. Returns whether its
    shards record their source files (a dest started before they did is finished without, its shards alike)."""
    inputs_uri = join(dest, INPUTS)
    fingerprint = _fingerprint(ids, settings, files_per_shard)
    if exists(inputs_uri):
        inputs = read_json(inputs_uri)
        if inputs["fingerprint"] != fingerprint:
            raise InputError(f"dest {dest!r} was prepared from another file listing or with other "
                             f"settings; choose a new dest (or delete this one)")
        return inputs.get("records_sources", False)
    if settings.classes is not None:
        write_json(join(dest, CLASSES), settings.classes)
    write_json(inputs_uri, {"fingerprint": fingerprint, "files": len(ids), "files_per_shard": files_per_shard,
                            "records_sources": True, **asdict(settings)})
    return True


def source_uri(source: str) -> str:
    """What pool.json records of the source folder: a local one's absolute path (an export may run elsewhere in
    the tree), a URI with its credentials hidden (an export takes them again)."""
    return redact(source) if "://" in source else os.path.abspath(source)


def report_name(k: int) -> str:
    """File name of shard k's report of skipped files (Parquet: id, reason, detail)."""
    # Not *.parquet: pool readers take every .parquet file under the pool for a shard.
    return f"errors-{k:05d}.pq"


def unfinished_shards(dest: str, n_shards: int) -> list[int]:
    """The shards of dest whose Parquet file or report is missing (one listing of dest, not 2n lookups)."""
    fs, root = resolve(dest)
    names = {posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))}
    return [k for k in range(n_shards) if shard_name(k) not in names or report_name(k) not in names]


def _run_shards(source, dest, shards: dict[int, list[str]], settings, cpus_per_shard, read_threads,
                record_sources) -> list[dict]:
    """Write the given shards as Ray Data tasks, one block (one task) per shard; their result rows."""
    if not shards:
        return []
    specs = [{"shard": k, "ids": ids} for k, ids in shards.items()]
    rows = ray.data.from_items(specs, override_num_blocks=len(specs)).map(
        prepare_shard, num_cpus=cpus_per_shard,
        fn_kwargs={"source": source, "dest": dest, "settings": settings, "read_threads": read_threads,
                   "record_sources": record_sources},
    ).take_all()
    failed = [r for r in rows if r["read_error"]]
    if failed:
        raise InputError(f"{len(failed)} of {len(rows)} shards were not written because a source file could "
                         f"not be read, e.g. {failed[0]['read_error']}; rerun to retry them (finished shards "
                         f"are kept)")
    return rows


def prepare_shard(spec: dict, source: str, dest: str, settings: ShardSettings, read_threads: int,
                  record_sources: bool = True) -> dict:
    """Ray Data row fn: read, decode and write one shard, with each file's size and modification time when
    ``record_sources``; returns its counts.

    A file that cannot be read (network, permissions) leaves the shard unwritten, so a rerun retries it;
    the error travels back as data (``read_error``) rather than as an exception that would lose its type.
    """
    fs, root = resolve(source)
    ids = [str(i) for i in spec["ids"]]
    try:
        contents, stats = _read_files(fs, root.rstrip("/"), ids, read_threads)
    except OSError as e:
        return {"shard": spec["shard"], "prepared": 0, "skipped": 0, "read_error": str(e)}
    images, skipped = {}, []
    for file_id, data in zip(ids, contents):
        try:
            images[file_id] = decode_file(data, settings)
        except SkippedFile as s:
            skipped.append((file_id, s.reason, s.detail))
    write_parquet(join(dest, report_name(spec["shard"])), pa.Table.from_pylist(
        [dict(zip(REPORT_SCHEMA.names, row)) for row in skipped], schema=REPORT_SCHEMA))
    write_parquet(join(dest, shard_name(spec["shard"])),
                  _shard_table(images, settings, dict(zip(ids, stats)) if record_sources else None))
    return {"shard": spec["shard"], "prepared": len(images), "skipped": len(skipped), "read_error": ""}


def _read_files(fs: pafs.FileSystem, root: str, ids: list[str], threads: int
                ) -> tuple[list[bytes | None], list[tuple[int, int] | None]]:
    """The bytes of each image file (None for other files) and its (size, mtime_ns), taken before the read so
    that a file rewritten meanwhile looks changed to an export; threads hide object-store latency."""
    def read(file_id: str) -> tuple[bytes | None, tuple[int, int] | None]:
        if not is_image_name(file_id):
            return None, None
        path = f"{root}/{file_id}"
        try:
            info = fs.get_file_info(path)
            with fs.open_input_stream(path) as f:
                return f.read(), (info.size, info.mtime_ns)
        except OSError as e:
            raise OSError(f"cannot read {path!r}: {e}") from e
    with ThreadPoolExecutor(threads) as pool:
        contents, stats = zip(*pool.map(read, ids))
    return list(contents), list(stats)


def decode_file(data: bytes | None, settings: ShardSettings) -> bytes:
    """Raw uint8 HWC pixels of one file's bytes (None: not an image name), resized; raises SkippedFile."""
    if data is None:
        raise SkippedFile(NOT_IMAGE_EXTENSION)
    if not data:
        raise SkippedFile(EMPTY_FILE)
    mode = "RGB" if settings.channels == 3 else "L"
    try:
        return decode_resized(data, settings.image_size, mode, settings.max_pixels).tobytes()
    except RefusedImage as e:
        raise SkippedFile(e.reason, e.detail) from None
    except Exception as e:   # truncated or broken data surfaces from the decoder in many types
        raise SkippedFile(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None


def _shard_table(images: dict[str, bytes], settings: ShardSettings,
                 stats: dict[str, tuple[int, int]] | None) -> pa.Table:
    columns = {"id": pa.array(list(images), pa.string()), "image": pa.array(list(images.values()), pa.binary())}
    if settings.classes is not None:
        columns["label"] = pa.array([settings.classes[i.split("/", 1)[0]] for i in images], pa.int64())
    if stats is not None:
        columns[SOURCE_SIZE] = pa.array([stats[i][0] for i in images], pa.int64())
        columns[SOURCE_MTIME] = pa.array([stats[i][1] for i in images], pa.int64())
    return pa.table(columns)


def _summarize(source, dest, n_seen, n_shards, written: list[dict], settings: ShardSettings, seconds) -> dict:
    """Counts over every shard of dest (this run's and earlier runs') and this run's listing report, timings
    over this run. ``n_seen``: the files listed and the entries left out of the listing."""
    fs, root = resolve(dest)
    names = [LISTING_REPORT] + [report_name(k) for k in range(n_shards)]
    reports = pads.dataset([f"{root.rstrip('/')}/{name}" for name in names],
                           filesystem=fs, format="parquet").to_table(columns=["reason"])
    by_reason = {r["values"]: r["counts"] for r in pc.value_counts(reports.column("reason")).to_pylist()}
    prepared_now = sum(r["prepared"] for r in written)
    return {
        "source": redact(source), "dest": redact(dest),
        "files_seen": n_seen, "prepared": n_seen - len(reports), "skipped": len(reports),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "image_shape": [settings.image_size, settings.image_size, settings.channels],
        "classes": None if settings.classes is None else len(settings.classes),
        "shards": n_shards, "shards_written": len(written), "shards_reused": n_shards - len(written),
        "prepared_this_run": prepared_now, "seconds": seconds,
        "images_per_second": prepared_now / seconds,
    }
