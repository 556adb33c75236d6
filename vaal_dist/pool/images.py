"""Image bytes -> uint8 pixel batches (B, C, H, W), the one decoder training and scoring share, and
``open_image``, the one door to Pillow for every image vaal_dist reads (prepare included)."""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageMode

from vaal_dist.errors import InputError
from vaal_dist.pool.io import PoolMeta

# Pillow runs no other decoder: an EPS "image" would start Ghostscript (docs/security.md).
IMAGE_FORMATS = ("JPEG", "PNG")
MAX_PIXELS = 89_478_485          # Pillow's default Image.MAX_IMAGE_PIXELS; prepare's --max-pixels default

NOT_JPEG_OR_PNG = "not a JPEG or PNG image"
TOO_MANY_PIXELS = "too many pixels"
OVER_DECODE_BUDGET = "over the decode budget"

MIB = 1024 ** 2
# Pillow keeps a pixel of several 8-bit bands in 4 bytes; one band in its type's size (I;16: 2, I and F: 4).
_RGB_BYTES = 4


@dataclass(frozen=True)
class DecodeBudget:
    """What decoding one image may cost. ``max_bytes`` bounds, from the header alone, the picture Pillow
    decodes (after a JPEG's reduced-scale draft) plus its 8-bit RGB copies; ``max_seconds`` is wall-clock
    time, checked between the decoder's input blocks and between conversions (docs/reliability.md)."""

    max_bytes: int = 256 * MIB
    max_seconds: float = 10.0


DECODE_BUDGET = DecodeBudget()


class RefusedImage(ValueError):
    """Bytes that ``open_image`` hands to no decoder, or whose decoding ``decode_resized`` stops; ``reason``
    is NOT_JPEG_OR_PNG, TOO_MANY_PIXELS or OVER_DECODE_BUDGET."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason} ({detail})")
        self.reason, self.detail = reason, detail


class _Deadline:
    """When decoding one image runs out of its ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds, self.at = seconds, time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise RefusedImage(OVER_DECODE_BUDGET, f"decoding took over {self.seconds:g} s")


class _TimedBytes(io.BytesIO):
    """Image bytes that Pillow's decoder reads a block at a time: a read past the deadline stops the decode
    there (a single block's decoding is not interrupted)."""

    def __init__(self, data: bytes, deadline: _Deadline):
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return super().read(size)


def open_image(data: bytes, max_pixels: int = MAX_PIXELS, deadline: _Deadline | None = None) -> Image.Image:
    """``data`` opened as a JPEG or PNG of at most ``max_pixels`` pixels: its header is read, no pixel is
    decoded yet, and no other Pillow plugin ever sees the bytes. Reads past ``deadline`` refuse the image.
    Raises RefusedImage."""
    try:
        with warnings.catch_warnings():   # Pillow warns above its own limit; max_pixels decides here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            source = io.BytesIO(data) if deadline is None else _TimedBytes(data, deadline)
            img = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:     # over twice Pillow's limit: refused inside open
        raise RefusedImage(TOO_MANY_PIXELS, str(e)) from None
    except RefusedImage:                           # out of time while reading the header
        raise
    except Exception as e:   # Pillow reports unrecognised bytes with many exception types
        detail = f"starts with {bytes(data[:8])!r}" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise RefusedImage(NOT_JPEG_OR_PNG, detail) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise RefusedImage(TOO_MANY_PIXELS, f"{width}x{height} is over {max_pixels} pixels")
    return img


def decode_resized(data: bytes, size: int, mode: str, max_pixels: int = MAX_PIXELS,
                   budget: DecodeBudget = DECODE_BUDGET) -> Image.Image:
    """``data`` decoded to a ``size`` x ``size`` picture of ``mode`` (RGB or L): the one decoder of pool images
    (prepare's, training's and scoring's). See ``decode_picture``."""
    return decode_picture(data, mode, size, max_pixels, budget).resize((size, size), Image.BILINEAR)


def decode_picture(data: bytes, mode: str, min_side: int, max_pixels: int = MAX_PIXELS,
                   budget: DecodeBudget = DECODE_BUDGET) -> Image.Image:
    """``data`` decoded to a picture of ``mode`` (RGB or L), 16-bit grey scaled and alpha composited onto black;
    a JPEG is decoded at the most reduced scale that keeps both sides at least ``min_side``. Raises RefusedImage
    before decoding an image over ``max_pixels`` or over the budget's bytes, or once its seconds run out;
    broken data raises the decoder's error."""
    deadline = _Deadline(budget.max_seconds)
    with open_image(data, max_pixels, deadline) as img:
        img.draft(mode, (min_side, min_side))
        _check_decode_bytes(img, budget.max_bytes)
        img.load()
        picture = to_8bit_without_alpha(img)
        deadline.check()
        picture = picture.convert(mode)
        deadline.check()
        return picture


def _check_decode_bytes(img: Image.Image, max_bytes: int) -> None:
    """Refuse ``img`` (its header read, drafted) if its decoded picture and the 8-bit RGB copies that
    ``to_8bit_without_alpha`` and ``convert`` make (two where alpha is composited onto black) would take more
    than ``max_bytes``: a few kB of PNG can hold a picture of hundreds of MB."""
    descriptor = ImageMode.getmode(img.mode)
    bytes_per_pixel = _RGB_BYTES if len(descriptor.bands) > 1 else np.dtype(descriptor.typestr).itemsize
    copies = 2 if img.has_transparency_data else 1
    width, height = img.size
    needed = width * height * (bytes_per_pixel + copies * _RGB_BYTES)
    if needed > max_bytes:
        raise RefusedImage(OVER_DECODE_BUDGET, f"{width}x{height} {img.mode} takes {needed / MIB:.1f} MiB to "
                                               f"decode, over {max_bytes / MIB:g} MiB")


def decode_images(ids, images, meta: PoolMeta, size: int) -> np.ndarray:
    """Decode a batch of pool images to (B, C, size, size) uint8.

    ``raw`` pools must already be ``size`` x ``size``; encoded JPEG/PNG images are converted to RGB and
    resized as ``vaal-dist prepare`` does (16-bit grey scaled, alpha onto black). A bad image, one that
    is not a JPEG or PNG, or one over MAX_PIXELS raises InputError naming its id.
    """
    if meta.encoding == "raw":
        return _decode_raw(ids, images, meta.image_shape, size)
    return np.stack([_decode_one(i, b, size) for i, b in zip(ids, images)]) if len(images) else \
        np.zeros((0, 3, size, size), np.uint8)


def raw_picture(image: bytes, meta: PoolMeta) -> Image.Image:
    """A raw pool's image bytes as a picture for people to look at (grey for one channel)."""
    h, w, c = meta.image_shape
    pixels = np.frombuffer(image, np.uint8)
    if pixels.size != h * w * c:
        raise ValueError(f"{pixels.size} bytes, not the {h}x{w}x{c} of pool.json")
    pixels = pixels.reshape(h, w, c)
    return Image.fromarray(pixels[:, :, 0] if c == 1 else pixels[:, :, :3])


def check_image_size(meta: PoolMeta, size: int) -> None:
    """A raw pool must already have the model's input size (encoded images are resized on decode)."""
    if meta.encoding == "raw" and tuple(meta.image_shape[:2]) != (size, size):
        h, w, _ = meta.image_shape
        raise InputError(f"pool images are {h}x{w} but the model expects {size}x{size}; "
                         f"prepare the pool at that size or choose a preset that matches")


def _decode_raw(ids, images, shape, size) -> np.ndarray:
    check_image_size(PoolMeta("raw", shape), size)
    h, w, c = shape
    lengths = np.fromiter((len(b) for b in images), dtype=np.int64, count=len(images))
    bad = np.flatnonzero(lengths != h * w * c)
    if len(bad):
        raise InputError(f"image {str(ids[bad[0]])!r} has {lengths[bad[0]]} bytes, expected {h}x{w}x{c}")
    flat = np.frombuffer(bytearray().join(images), dtype=np.uint8)  # writable: torch.from_numpy warns on read-only
    return np.ascontiguousarray(flat.reshape(len(images), h, w, c).transpose(0, 3, 1, 2))  # (B, C, H, W)


def _decode_one(image_id, data: bytes, size: int) -> np.ndarray:
    try:
        return np.asarray(decode_resized(data, size, "RGB"), dtype=np.uint8).transpose(2, 0, 1)  # (C, H, W)
    except (OSError, ValueError) as e:   # RefusedImage is a ValueError
        raise InputError(f"image {str(image_id)!r} cannot be decoded: {e}") from e


def to_8bit_without_alpha(img: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits (PIL's convert clips it); alpha composited onto black."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        return Image.fromarray(_grey16_to_8bit(np.asarray(img)))   # uint8 2-D: mode L
    if img.has_transparency_data:   # an alpha band, or a PNG tRNS colour / palette entry
        rgba = img.convert("RGBA")
        on_black = Image.new("RGB", rgba.size)
        on_black.paste(rgba, mask=rgba.getchannel("A"))
        return on_black
    return img


def _grey16_to_8bit(grey: np.ndarray) -> np.ndarray:
    """(H, W) 16-bit grey (or 32-bit, clipped to 16) -> uint8, rounded; a few rows at a time, since an int64
    copy of the whole picture would take 8 bytes a pixel."""
    out = np.empty(grey.shape, np.uint8)
    rows = max(1, 2 ** 20 // max(1, grey.shape[1]))
    for top in range(0, grey.shape[0], rows):
        block = np.clip(grey[top:top + rows].astype(np.int64), 0, 65535)
        out[top:top + rows] = (block + 128) // 257
    return out
