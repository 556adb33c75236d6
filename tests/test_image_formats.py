"""Only JPEG and PNG reach a decoder, under one pixel limit, in rounds, in training and in prepare.

Ghostscript is not installed here, so no test can watch an EPS start it; instead every other Pillow
plugin's ``_open`` is replaced by a spy that fails the test if it is ever called: the format check
runs before any plugin sees the bytes.
"""
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from conftest import png_bytes, png_header_only, round_config, vaal_checkpoint, vaal_trained_as
from vaal_dist.config import RoundConfig, ScoringConfig
from vaal_dist.errors import InputError
from vaal_dist.pool.images import IMAGE_FORMATS, MAX_PIXELS, decode_images
from vaal_dist.pool.io import PoolMeta, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.prepare import ShardSettings, SkippedFile, decode_file
from vaal_dist.round import run_round
from vaal_dist.train.pool_batches import epoch_batches, pool_sides


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


OTHER_FORMATS = {"eps": "EPS", "gif": "GIF", "bmp": "BMP", "tif": "TIFF", "webp": "WEBP"}


@pytest.fixture
def plugin_spy(monkeypatch) -> list[str]:
    """Every Pillow plugin but JPEG's and PNG's fails (and is recorded) if it starts to read a file."""
    Image.init()
    opened = []

    def spy(image_file):
        opened.append(type(image_file).__name__)
        raise AssertionError(f"Pillow's {type(image_file).__name__} plugin read an image")

    for fmt, (factory, _) in Image.OPEN.items():
        if fmt not in IMAGE_FORMATS and isinstance(factory, type):
            monkeypatch.setattr(factory, "_open", spy)
    return opened


def test_the_spy_catches_a_plugin_that_opens_an_image(plugin_spy):
    with pytest.raises(AssertionError, match="EpsImageFile plugin read an image"):
        Image.open(io.BytesIO(encoded("EPS")))
    assert plugin_spy == ["EpsImageFile"]


@pytest.mark.parametrize("ext", OTHER_FORMATS)
def test_other_formats_are_refused_by_id_before_any_plugin(plugin_spy, ext):
    data = encoded(OTHER_FORMATS[ext])
    with pytest.raises(InputError, match=rf"^image 'x.{ext}' cannot be decoded: not a JPEG or PNG image "
                                         rf"\(starts with b'"):
        decode_images(np.array([f"x.{ext}"]), [data], PoolMeta(), 32)
    with pytest.raises(InputError, match="not a JPEG or PNG image"):
        decode_images(np.array(["a.png", f"x.{ext}"]), [png_bytes(np.random.default_rng(1)), data], PoolMeta(), 32)
    settings = ShardSettings(image_size=4, channels=3, max_pixels=MAX_PIXELS, classes=None)
    with pytest.raises(SkippedFile) as skipped:                 # prepare: the same door
        decode_file(data, settings)
    assert skipped.value.reason == "not a JPEG or PNG image"
    assert plugin_spy == []


def test_the_pixel_limit_is_prepares_and_is_checked_on_the_header():
    """10,000 x 10,000 is over Pillow's MAX_IMAGE_PIXELS but under the twice-that at which Pillow itself
    refuses: decoding used to try it. The header holds no pixel data, so only a header check names it."""
    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    wide = png_header_only(10_000, 10_000)
    with pytest.raises(InputError, match=r"^image 'wide.png' cannot be decoded: too many pixels "
                                         r"\(10000x10000 is over 89478485 pixels\)$"):
        decode_images(np.array(["wide.png"]), [wide], PoolMeta(), 32)
    settings = ShardSettings(image_size=4, channels=3, max_pixels=MAX_PIXELS, classes=None)
    with pytest.raises(SkippedFile) as skipped:
        decode_file(wide, settings)
    assert (skipped.value.reason, skipped.value.detail) == ("too many pixels", "10000x10000 is over 89478485 pixels")


def photo_pool(tmp_path, bad: dict[int, tuple[str, bytes]], n: int = 30) -> tuple[str, str, list[str]]:
    """An encoded pool of n PNGs with the images at ``bad``'s positions replaced; the first 8 labeled."""
    rng = np.random.default_rng(0)
    ids = [f"photos/{i:03d}.png" for i in range(n)]
    images = [png_bytes(rng, 32) for _ in range(n)]
    for at, (name, data) in bad.items():
        ids[at], images[at] = name, data
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ids, "image": images})], PoolMeta())
    write_manifest(str(tmp_path / "l.parquet"), ids[:8])
    return str(tmp_path / "pool"), str(tmp_path / "l.parquet"), ids


def test_the_training_reader_refuses_an_eps_by_id_before_its_plugin(tmp_path, plugin_spy):
    pool, _, ids = photo_pool(tmp_path, {5: ("photos/005.eps", encoded("EPS"))})
    side, = pool_sides(pool, (pa.array(ids[:1]), False))
    batches = epoch_batches(side, PoolMeta(), 32, batch_size=8, rank=0, workers=1, seed=0)
    try:
        with pytest.raises(InputError, match=r"^image 'photos/005.eps' cannot be decoded: not a JPEG or PNG image"):
            list(batches)
    finally:
        batches.close()
    assert plugin_spy == []


def photo_round(pool, labeled, out, **kw) -> RoundConfig:
    return round_config(pool, labeled, out, budget=5, vaal={"batch_size": 8},
                        scoring=ScoringConfig(batch_size=8, num_actors=1), **kw)


@pytest.mark.slow
def test_a_round_training_in_the_driver_refuses_an_eps_before_its_plugin(ray_local, tmp_path, plugin_spy):
    pool, labeled, _ = photo_pool(tmp_path, {20: ("photos/020.eps", encoded("EPS"))})
    with pytest.raises(InputError, match=r"^image 'photos/020.eps' cannot be decoded: not a JPEG or PNG image"):
        run_round(photo_round(pool, labeled, tmp_path / "out", workers=0))
    assert plugin_spy == []
    assert not (tmp_path / "out" / "selection.parquet").exists() and not (tmp_path / "out" / "run.json").exists()


def test_a_round_refuses_a_gif_in_its_scoring_actors(ray_local, tmp_path, monkeypatch):
    """The actors are other processes (no spy there): a GIF is a format Pillow decodes well, so a round
    that scored it would select; refused by id, nothing is written."""
    untrained = vaal_checkpoint(tmp_path / "ckpt", channels=3)     # scoring is what meets the image
    vaal_trained_as(monkeypatch, untrained)
    pool, labeled, _ = photo_pool(tmp_path, {17: ("photos/017.gif", encoded("GIF"))})
    with pytest.raises(InputError, match=r"image 'photos/017.gif' cannot be decoded: not a JPEG or PNG image"):
        run_round(photo_round(pool, labeled, tmp_path / "out"))
    assert not (tmp_path / "out" / "selection.parquet").exists() and not (tmp_path / "out" / "run.json").exists()
