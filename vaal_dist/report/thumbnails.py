"""Thumbnails of chosen pool images as data: URLs, read from the shards by id.

Only the id column of each row group is read to find the chosen ids, and the image column only of row groups
that hold one, a row group at a time, each image made a thumbnail at once: the driver never holds more of the
pool than one row group per read thread, whatever the pool's size.
"""
from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from vaal_dist.pool.images import RefusedImage, open_image, raw_picture
from vaal_dist.pool.io import READ_THREADS, PoolMeta, pool_files, retrying

THUMB_PIXELS = 96           # the longer side of a thumbnail
LOSSLESS_UP_TO = 32 * 32    # thumbnails of at most this many pixels are PNG (small anyway); larger ones JPEG


def data_urls(pool: str, meta: PoolMeta, ids: list[str]) -> dict[str, str | Exception]:
    """{id: a data: URL of its thumbnail, or the error that kept it from being made} for each of ``ids``
    found in the pool."""
    wanted = pa.array(ids, pa.string())
    fs, files = pool_files(pool)
    with ThreadPoolExecutor(max(1, min(READ_THREADS, len(files)))) as threads:
        found = list(threads.map(lambda path: _thumbnails_in_shard(fs, path, wanted, meta), files))
    return {i: url for part in found for i, url in part.items()}


def _thumbnails_in_shard(fs, path: str, wanted: pa.Array, meta: PoolMeta) -> dict[str, str | Exception]:
    def read() -> dict[str, str | Exception]:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f, page_checksum_verification=True)
            urls = {}
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=["id"]).column("id")
                hits = pc.is_in(ids, value_set=wanted)
                if pc.any(hits).as_py():
                    rows = parquet.read_row_group(group, columns=["id", "image"]).filter(hits)
                    urls.update((i, _thumbnail_url(image, meta)) for i, image in
                                zip(rows.column("id").to_pylist(), rows.column("image").to_pylist()))
            return urls
    return retrying(f"cannot read shard {path} for the report's thumbnails", read)


def _thumbnail_url(image: bytes, meta: PoolMeta) -> str | Exception:
    try:
        picture = raw_picture(image, meta) if meta.encoding == "raw" else _decoded(image)
    except (RefusedImage, OSError, ValueError, TypeError) as e:   # shown in place of the picture; a report never fails on it
        return e
    picture.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    lossless = picture.width * picture.height <= LOSSLESS_UP_TO
    buf = io.BytesIO()
    picture.save(buf, format="PNG" if lossless else "JPEG", quality=85)
    kind = "png" if lossless else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _decoded(image: bytes) -> Image.Image:
    with open_image(image) as opened:
        return opened.convert("RGB")
