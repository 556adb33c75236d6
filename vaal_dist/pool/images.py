"""Image bytes -> uint8 pixel batches (B, C, H, W), the one decoder training and scoring share, and
``open_image``, the one door to Pillow for every image vaal_dist reads (prepare included)."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from vaal_dist.errors import InputError
from vaal_dist.pool.io import PoolMeta

# Pillow runs no other decoder: an EPS "image" would start Ghostscript (docs/security.md).
IMAGE_FORMATS = ("JPEG", "PNG")
MAX_PIXELS = 89_478_485          # Pillow's default Image.MAX_IMAGE_PIXELS; prepare's --max-pixels default

NOT_JPEG_OR_PNG = "not a JPEG or PNG image"
TOO_MANY_PIXELS = "too many pixels"


class RefusedImage(ValueError):
    """Bytes that ``open_image`` hands to no decoder; ``reason`` is NOT_JPEG_OR_PNG or TOO_MANY_PIXELS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason} ({detail})")
        self.reason, self.detail = reason, detail


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``data`` opened as a JPEG or PNG of at most ``max_pixels`` pixels: its header is read, no pixel is
    decoded yet, and no other Pillow plugin ever sees the bytes. Raises RefusedImage."""
    try:
        with warnings.catch_warnings():   # Pillow warns above its own limit; max_pixels decides here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:     # over twice Pillow's limit: refused inside open
        raise RefusedImage(TOO_MANY_PIXELS, str(e)) from None
    except Exception as e:   # Pillow reports unrecognised bytes with many exception types
        detail = f"starts with {bytes(data[:8])!r}" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise RefusedImage(NOT_JPEG_OR_PNG, detail) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise RefusedImage(TOO_MANY_PIXELS, f"{width}x{height} is over {max_pixels} pixels")
    return img


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
        with open_image(data) as img:
            img = to_8bit_without_alpha(img).convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (C, H, W)
    except (OSError, ValueError) as e:   # RefusedImage is a ValueError
        raise InputError(f"image {str(image_id)!r} cannot be decoded: {e}") from e


def to_8bit_without_alpha(img: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits (PIL's convert clips it); alpha composited onto black."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((grey + 128) // 257).astype(np.uint8))   # uint8 2-D: mode L
    if img.has_transparency_data:   # an alpha band, or a PNG tRNS colour / palette entry
        rgba = img.convert("RGBA")
        on_black = Image.new("RGB", rgba.size)
        on_black.paste(rgba, mask=rgba.getchannel("A"))
        return on_black
    return img
