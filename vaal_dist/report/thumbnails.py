"""Thumbnails of chosen pool images as data: URLs, read from the shards by id.

The chosen rows are read with ``pool.io.read_rows`` (a filtered scan per shard), so the driver holds the chosen
images only, whatever the pool's size.
"""
from __future__ import annotations

import base64
import io

import pyarrow as pa

from vaal_dist.pool.images import RefusedImage, decode_picture, raw_picture
from vaal_dist.pool.io import PoolMeta, read_rows

THUMB_PIXELS = 96           # the longer side of a thumbnail
LOSSLESS_UP_TO = 32 * 32    # thumbnails of at most this many pixels are PNG (small anyway); larger ones JPEG


def data_urls(pool: str, meta: PoolMeta, ids: list[str]) -> dict[str, str | Exception]:
    """{id: a data: URL of its thumbnail, or the error that kept it from being made} for each of ``ids``
    found in the pool."""
    urls = {}
    for rows in read_rows(pool, pa.array(ids, pa.string()), ["id", "image"]):
        urls.update((i, _thumbnail_url(image, meta)) for i, image in
                    zip(rows.column("id").to_pylist(), rows.column("image").to_pylist()))
    return urls


def _thumbnail_url(image: bytes, meta: PoolMeta) -> str | Exception:
    try:
        picture = (raw_picture(image, meta) if meta.encoding == "raw"
                   else decode_picture(image, "RGB", THUMB_PIXELS))
    except (RefusedImage, OSError, ValueError, TypeError) as e:   # shown in place of the picture; a report never fails on it
        return e
    picture.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    lossless = picture.width * picture.height <= LOSSLESS_UP_TO
    buf = io.BytesIO()
    picture.save(buf, format="PNG" if lossless else "JPEG", quality=85)
    kind = "png" if lossless else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


