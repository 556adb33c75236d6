"""A round's selection as labeling tasks: Label Studio's import JSON (with its labeling config), COCO image
entries, or CSV, in rank order (each format's files: ``formats``).

Each image is read from the pool's shards by id (a filtered scan: only the selected rows are decoded) and
given as a URL: for a local ``dest``, a ``data:`` URL of the image itself; for an ``s3://`` or ``gs://``
``dest``, an object written under ``dest/images/`` and a presigned (signed) https URL that expires. A pool
``prepare`` made gives the original files instead (labeling/sources.py): their bytes as those URLs, or, from a
bucket, a signed URL of the source object itself (no copy) or its plain URI for the labeling tool to sign. Ids are
anyone's text: no id becomes a path (an image's object is named by a hash of its id), and a CSV cell a
spreadsheet would run as a formula is quoted.
Selections larger than a project should hold are split into several files of at most ``max_tasks`` tasks and
``max_bytes`` bytes each, built and written one at a time.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from vaal_dist.errors import InputError
from vaal_dist.folder_lock import WRITER, FolderLock
from vaal_dist.labeling.formats import LABEL_FORMATS, Guess, LabelFormat, Task
from vaal_dist.labeling.labels import class_names
from vaal_dist.labeling.sources import BUCKET_SCHEMES, Originals, pool_originals, say_no_originals
from vaal_dist.pool.images import RefusedImage, open_image, raw_picture
from vaal_dist.pool.io import PoolMeta, read_pool_meta, read_rows
from vaal_dist.pool.storage import join, missing_folders, remove_empty_folders, resolve, retrying, write_atomic
from vaal_dist.round_files import FinishedRound, read_round

log = logging.getLogger(__name__)
LINKS = ("url", "source")      # a URL a browser opens; the original's plain s3:// or gs:// URI
# Label Studio: "It's best to keep about 100k tasks / 100k annotations per project for optimal performance"
# (labelstud.io/guide/tasks); one import request is limited to 250k tasks and 200 MB.
MAX_TASKS = 100_000
MAX_BYTES = 150_000_000        # under the 200 MB import limit: a local export's data: URLs make tasks large
READ_ROWS = 1_000              # selected images read from the pool at once: ~110 MB of ImageNet-size JPEGs
READ_ORIGINALS = 64            # original files read at once: a camera's photos are ~5 MB each
LINK_THREADS = 16             # images written and signed at once
WEEK_S = 7 * 24 * 3600         # the longest expiry a SigV4 (S3) or V4 (GCS) signed URL may have
IMAGES = "images"              # a bucket dest's folder of the images its tasks link


def export_selection(round_out: str, to: str, dest: str, *, classes: list[str] | None = None,
                     pool: str | None = None, max_tasks: int = MAX_TASKS, max_bytes: int = MAX_BYTES,
                     expires_s: int = WEEK_S, links: str = "url", source: str | None = None) -> list[str]:
    """Write the round's selection under ``dest`` in format ``to`` (a name in LABEL_FORMATS); returns the files
    written.

    ``classes`` are the class names in label order (default: the pool's classes.json). Label Studio gets
    ``tasks-NNNNN.json`` and ``labeling-config.xml``; COCO ``coco-NNNNN.json``; CSV ``tasks-NNNNN.csv``. A file
    holds at most ``max_tasks`` tasks and ``max_bytes`` bytes (but always one task). ``links`` (one of LINKS) and
    ``source`` (the pool's source folder again, with the credentials its pool.json hides) choose how the
    original files of a prepared pool are linked.
    """
    if to not in LABEL_FORMATS:
        raise InputError(f"export format must be one of {tuple(LABEL_FORMATS)}, got {to!r}")
    images: list[str] = []
    names, tasks_without = selection_tasks(round_out, dest, images, classes=classes, pool=pool,
                                           expires_s=expires_s, links=links, source=source)
    lock = FolderLock(dest, WRITER)         # one writer in dest at a time: a second is refused naming this one
    form = LABEL_FORMATS[to]
    written = []
    fs, _ = resolve(dest)
    new_folders = missing_folders(join(dest, IMAGES))
    try:
        lock.acquire()
        for number, body in enumerate(task_files(form, names, tasks_without(frozenset()), max_tasks, max_bytes), 1):
            lock.check_held()               # each part is a commit: never over another writer's files
            written.append(join(dest, form.file_name.format(number)))
            write_atomic(written[-1], body)
        for name, data in form.extra_files(names).items():
            lock.check_held()
            written.append(join(dest, name))
            write_atomic(written[-1], data)
    except BaseException:
        # an image refused in a later part: what this export wrote goes, what others wrote meanwhile stays
        _remove(dest, fs, [resolve(uri)[1] for uri in written + images], new_folders)
        raise
    finally:
        lock.release()                      # removes dest too where the lock made it and nothing is left in it
    return written


def selection_tasks(round_out: str, dest: str, images: list[str], *, classes: list[str] | None = None,
                    pool: str | None = None, expires_s: int = WEEK_S, links: str = "url", source: str | None = None
                    ) -> tuple[list[str], Callable[[frozenset[str]], Iterator[Task]]]:
    """(the class names, tasks_without(skip): the round's tasks in rank order but those of the ids in ``skip``),
    each image linked as an export to ``dest`` links it (``export_selection``'s options); the objects that writes
    (a bucket ``dest``'s images) are added to ``images``. The round, pool and originals are checked here, before
    any task is made."""
    if links not in LINKS:
        raise InputError(f"links must be one of {LINKS}, got {links!r}")
    if not 1 <= expires_s <= WEEK_S:
        raise InputError(f"a signed URL expires after 1 s to 7 days ({WEEK_S} s), got {expires_s} s")
    finished = read_round(round_out, pool=pool, needs_labeled=False)
    names = class_names(finished.pool, classes)
    meta = read_pool_meta(finished.pool)
    originals = pool_originals(finished.pool, meta, source)
    link = original_links(originals, dest, links, expires_s) or image_links(dest, expires_s, images)
    if originals is None:
        say_no_originals(finished.pool, meta)
    _check_in_pool(finished)
    return names, functools.partial(_tasks, finished, meta, link, names, originals)


def task_files(form: LabelFormat, names: list[str], tasks: Iterator[Task], max_tasks: int,
               max_bytes: int) -> Iterator[bytes]:
    """The bytes of each of ``form``'s files (or import requests): ``tasks`` in order, at most ``max_tasks`` and
    ``max_bytes`` bytes in each (but always one task)."""
    head = form.head(names)
    entries = (form.entry(task) for task in tasks)
    for part in _parts(entries, max_tasks, max_bytes - len(head) - len(form.tail), len(form.separator)):
        yield head + form.separator.join(part) + form.tail


def _remove(dest: str, fs: pafs.FileSystem, files: list[str], new_folders: list[str]) -> None:
    """Deletes ``files``, then each of ``new_folders`` (deepest first) left empty: not one another writer put a
    file in meanwhile, nor any folder above it."""
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            retrying(f"cannot delete {path!r}", lambda: fs.delete_file(path))
    remove_empty_folders(dest, new_folders)


def _check_in_pool(finished: FinishedRound) -> None:
    """Refuses a selection whose images the pool no longer holds before any file is written (else a later
    part's read would refuse it, the earlier parts written)."""
    ids = finished.selection.column("id")
    held = pa.chunked_array([rows.column("id") for rows in read_rows(finished.pool, ids, ["id"])], pa.string())
    gone = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=held))).to_pylist()
    if gone:
        raise InputError(f"pool {finished.pool!r} no longer holds {len(gone)} selected images, e.g. {gone[:5]}")


def _tasks(finished: FinishedRound, meta: PoolMeta, link: Callable[[str, bytes, str], str], names: list[str],
           originals: Originals | None = None, skip: frozenset[str] = frozenset()) -> Iterator[Task]:
    """The selection's tasks in rank order but those of the ids in ``skip``, its images (the ``originals`` when
    known, else the pool's) read READ_ROWS (READ_ORIGINALS) at a time."""
    step = READ_ROWS if originals is None else READ_ORIGINALS
    guess = _guesses(finished, names)
    skipped = pa.array(sorted(skip), pa.string())
    for start in range(0, len(finished.selection), step):
        rows = finished.selection.slice(start, step)
        rows = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=skipped)))
        if not len(rows):
            continue
        ids = rows.column("id")
        held = dict(pool_images(finished.pool, ids)) if originals is None else originals.recorded(finished.pool, ids)
        gone = [i for i in ids.to_pylist() if i not in held]
        if gone:
            raise InputError(f"pool {finished.pool!r} no longer holds {len(gone)} selected images, e.g. {gone[:5]}")
        image = held.__getitem__ if originals is None else lambda image_id: originals.read(image_id, held[image_id])
        shown_as = meta if originals is None else PoolMeta()      # originals: the JPEG/PNG files prepare read
        with ThreadPoolExecutor(LINK_THREADS) as threads:        # an object store's latency, per image
            tasks = list(threads.map(lambda row: _task(row, guess(row), image(row["id"]), shown_as, link),
                                     rows.to_pylist()))
        yield from tasks


def _parts(entries: Iterator[bytes], max_tasks: int, room: int, separator: int) -> Iterator[list[bytes]]:
    """``entries`` cut, in order, into runs of at most ``max_tasks`` whose bytes, ``separator`` bytes between
    two, fit in ``room`` (an entry larger than ``room`` alone); a run is cut as soon as it is full."""
    part: list[bytes] = []
    size = 0
    for entry in entries:
        grown = size + separator + len(entry) if part else len(entry)
        if part and (len(part) == max_tasks or grown > room):
            yield part
            part, grown = [], len(entry)
        part.append(entry)
        size = grown
    if part:
        yield part


def pool_images(pool: str, ids: pa.Array) -> Iterator[tuple[str, bytes]]:
    """(id, image bytes) of the pool's rows whose id is in ``ids``."""
    for rows in read_rows(pool, ids, ["id", "image"]):
        yield from zip(rows.column("id").to_pylist(), rows.column("image").to_pylist())


def _task(row: dict, guess: Guess, image: bytes, meta: PoolMeta, link: Callable[[str, bytes, str], str]) -> Task:
    data, mime, (width, height) = viewable(row["id"], image, meta)
    return Task(row["id"], row["rank"], row["score"], guess, link(row["id"], data, mime), width, height)


def _guesses(finished: FinishedRound, names: list[str]) -> Callable[[dict], Guess]:
    """Each selection row's Guess. Its score is the rank's, not the selection's: Label Studio 1.23 refuses a
    prediction score outside [0, 1] (entropy's, margin's and the discriminators' are not), and Cluster-Margin's
    and BADGE's picks are not in the order of their scores."""
    picked = len(finished.selection)
    guessed = "predicted" in finished.selection.column_names
    highest = pc.max(finished.selection.column("predicted")).as_py() if guessed else None
    if highest is not None and highest >= len(names):
        raise InputError(f"the round's task model guessed class {highest}, but {len(names)} class names were "
                         f"given: give every class (--classes)")

    def guess(row: dict) -> Guess:
        return Guess(finished.strategy, f"{finished.strategy}-{finished.fingerprint[:8]}",
                     1 - (row["rank"] - 1) / picked, names[row["predicted"]] if guessed else None,
                     row["confidence"] if guessed else None)
    return guess


def viewable(image_id: str, image: bytes, meta: PoolMeta) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes a browser shows, their MIME type, (width, height)): a raw pool's pixels as PNG, else the
    pool's own JPEG or PNG bytes."""
    if meta.encoding == "raw":
        try:
            picture = raw_picture(image, meta)
        except ValueError as e:
            raise InputError(f"image {image_id!r}: {e}") from None
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        return buf.getvalue(), "image/png", picture.size
    try:
        with open_image(image) as img:
            size, kind = img.size, img.format
    except RefusedImage as e:
        raise InputError(f"image {image_id!r}: {e}") from None
    return image, f"image/{kind.lower()}", size


def image_links(dest: str, expires_s: int, written: list[str]) -> Callable[[str, bytes, str], str]:
    """How an image becomes a URL for an export to ``dest``: link(id, bytes, mime) -> URL; the objects it writes
    (a bucket ``dest``'s images) are added to ``written``."""
    scheme = urlsplit(dest).scheme if "://" in dest else ""
    if scheme in ("", "file"):
        return lambda _, data, mime: f"data:{mime};base64,{base64.b64encode(data).decode()}"
    sign = {"s3": _s3_signer, "gs": _gs_signer}.get(scheme)
    if sign is None:
        raise InputError(f"images can be linked from s3://, gs:// or local exports, not {scheme}://")
    presign = sign(dest, expires_s)

    def link(image_id: str, data: bytes, mime: str) -> str:
        uri = join(dest, IMAGES, image_name(image_id, mime))
        written.append(uri)
        write_atomic(uri, data)
        return presign(uri)
    return link


def image_name(image_id: str, mime: str) -> str:
    """The name of an image's object: the SHA-256 of its id, which no storage library reads as a path (pyarrow
    decodes a %-quoted id's %2F into '/', and '..' and '//' then leave or break the folder)."""
    return f"{hashlib.sha256(image_id.encode()).hexdigest()}.{mime.split('/')[1]}"


def original_links(originals: Originals | None, dest: str, links: str,
                   expires_s: int) -> Callable[[str, bytes, str], str] | None:
    """How an image becomes a URL at its original file: its plain bucket URI (``links`` "source"), or, from a bucket
    to a bucket ``dest``, a signed URL of the source object (nothing copied); None where the original's bytes
    travel as the pool's would (``image_links``: a local ``dest``'s data: URL, a bucket ``dest``'s images/)."""
    in_bucket = originals is not None and originals.scheme in BUCKET_SCHEMES
    if links == "source":
        if not in_bucket:
            raise InputError("--link source writes each original's s3:// or gs:// URI: it needs a pool prepared "
                             "from an s3:// or gs:// folder")
        return lambda image_id, _data, _mime: originals.plain_uri(image_id)
    if not in_bucket or (urlsplit(dest).scheme if "://" in dest else "") not in BUCKET_SCHEMES:
        return None
    presign = {"s3": _s3_signer, "gs": _gs_signer}[originals.scheme](originals.uri, expires_s)
    return lambda image_id, _data, _mime: presign(originals.object_uri(image_id))


def _s3_signer(dest: str, expires_s: int) -> Callable[[str], str]:
    """A presigner of GET URLs for objects under ``dest``, with the credentials and endpoint its URI carries
    (pyarrow's s3://KEY:SECRET@bucket/key?endpoint_override=...&scheme=...&region=...), else the default ones;
    signed for the region pyarrow writes to, since a URL signed for another one is refused."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise InputError("presigned s3:// URLs need boto3: pip install 'vaal_dist[labeling]'") from None
    parts = urlsplit(dest)
    key_id, _, secret = (unquote(p) for p in parts.netloc.rpartition("@")[0].partition(":"))
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    endpoint = options.get("endpoint_override")
    session = boto3.Session(aws_access_key_id=key_id or options.get("access_key"),
                            aws_secret_access_key=secret or options.get("secret_key"),
                            aws_session_token=options.get("session_token"))
    client = session.client(
        "s3", region_name=resolve(dest)[0].region,      # pyarrow's: ?region=, else the bucket's, else the default
        endpoint_url=f"{options.get('scheme', 'https')}://{endpoint}" if endpoint else None,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint else {}))
    credentials = session.get_credentials()
    if credentials is None:
        raise InputError("presigned s3:// URLs need AWS credentials: there are none in the --dest URI, the "
                         "environment, the AWS config files or an instance role")
    warning = expiry_warning(credentials, expires_s, datetime.now(timezone.utc))
    if warning:
        log.warning(warning)
    return lambda uri: client.generate_presigned_url("get_object", Params=_bucket_and_key(uri), ExpiresIn=expires_s)


def expiry_warning(credentials, expires_s: int, now: datetime) -> str | None:
    """Why URLs signed with botocore ``credentials`` may stop working before ``expires_s`` seconds: a presigned
    URL dies with the credentials that signed it, and temporary ones (a role's, a session token) expire. None
    when they outlive it or are long-term keys."""
    credentials.get_frozen_credentials()                # refreshes credentials about to expire, as signing does
    expiry = getattr(credentials, "_expiry_time", None)     # botocore's RefreshableCredentials: a role's
    if expiry is not None:
        if expiry >= now + timedelta(seconds=expires_s):
            return None
        return (f"the signed image URLs stop working when the credentials that sign them expire at "
                f"{expiry.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC, before --expires ({expires_s} s) runs out: "
                f"export again before then, or sign with credentials that last longer")
    if not credentials.token:
        return None
    return (f"the signed image URLs are signed with temporary credentials (a session token) whose expiry is "
            f"unknown here: they stop working when those expire, which may be before --expires ({expires_s} s)")


def _gs_signer(dest: str, expires_s: int) -> Callable[[str], str]:
    try:
        from google.cloud import storage
    except ImportError:
        raise InputError("signed gs:// URLs need google-cloud-storage (pip install google-cloud-storage) and a "
                         "service account; or export to a local folder, whose tasks carry the images") from None
    client = storage.Client()

    def sign(uri: str) -> str:
        where = _bucket_and_key(uri)
        return client.bucket(where["Bucket"]).blob(where["Key"]).generate_signed_url(
            version="v4", expiration=timedelta(seconds=expires_s), method="GET")
    return sign


def _bucket_and_key(uri: str) -> dict[str, str]:
    """The object ``write_atomic(uri)`` wrote: pyarrow decodes a URI's %-escapes into the key."""
    bucket, _, key = resolve(uri)[1].partition("/")
    return {"Bucket": bucket, "Key": key}
