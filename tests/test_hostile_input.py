"""Hostile pools, manifests and images: each is refused with an error that names it (or,
for a corrupt shard, refused wholesale), never another exception and never a wrong answer."""
import io
import itertools
import math
import types

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from conftest import damage_image_page, flat_grey16_png, make_raw_pool
from vaal_dist.errors import InputError, raise_if_input_error
from vaal_dist.pool import images
from vaal_dist.pool.images import DECODE_BUDGET, MAX_PIXELS, OVER_DECODE_BUDGET, DecodeBudget, RefusedImage, \
    decode_images, decode_resized
from vaal_dist.labeling.labels import check_labels
from vaal_dist.pool.io import PoolMeta, read_pool_ids, write_pool
from vaal_dist.pool.manifests import read_manifest
from vaal_dist.pool.shards import PAGE_CRC_FAILURE, read_parquet


@pytest.mark.parametrize("columns,match", [
    ({"id": pa.array(["a", "b"]), "image": pa.array([1, 2])}, "'image' must be bytes"),
    ({"id": pa.array(["a", "b"]), "image": pa.array(["x", "y"])}, "'image' must be bytes"),
    ({"id": pa.array([1, 2]), "image": pa.array([b"", b""])}, "'id' must be strings"),
    ({"id": pa.array(["a", None]), "image": pa.array([b"", b""])}, "null id"),
    ({"image": pa.array([b"", b""])}, "cannot read pool"),
])
def test_wrong_schemas_and_dtypes_are_named(tmp_path, columns, match):
    write_pool(str(tmp_path / "p"), [pa.table(columns)], PoolMeta())
    with pytest.raises(InputError, match=match):
        read_pool_ids(str(tmp_path / "p"))


def test_shards_that_disagree_on_the_schema_are_refused(tmp_path):
    write_pool(str(tmp_path / "p"), [pa.table({"id": ["a"], "image": [b""]}),
                                     pa.table({"id": [1], "image": [b""]})], PoolMeta())
    with pytest.raises(InputError, match=r"part-00001.parquet' has columns \(id: int64, image: binary\) but the "
                                         r"first has \(id: string, image: binary\)"):
        read_pool_ids(str(tmp_path / "p"))


@pytest.mark.parametrize("labels,match", [
    (pa.array([0.0, 1.5]), "'label' must be integers"),
    (pa.array([0, -1]), "class indices >= 0"),
    (pa.array([0, None], pa.int64()), "have no label"),
])
def test_bad_labels_are_named(tmp_path, labels, match):
    write_pool(str(tmp_path / "p"), [pa.table({"id": ["a", "b"], "image": [b"", b""], "label": labels})],
               PoolMeta())
    with pytest.raises(InputError, match=match):
        check_labels(str(tmp_path / "p"), pa.array(["a", "b"]))


def test_only_the_labeled_ids_need_a_label(tmp_path):
    write_pool(str(tmp_path / "p"), [pa.table({"id": ["a", "b", "c"], "image": [b""] * 3,
                                               "label": pa.array([0, None, 4], pa.int64())})], PoolMeta())
    assert check_labels(str(tmp_path / "p"), pa.array(["c", "a"])) == 5       # classes: 1 + the largest label


def test_odd_ids_survive_parquet_manifests_exactly(tmp_path):
    odd = ["with space", " lead", "trail ", "tab\there", "new\nline", "ünïcødé", "emoji-🙂", "a/b/../c",
           "quote'\"", "x" * 4096, ""]
    pq.write_table(pa.table({"id": odd}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet")).to_pylist() == odd


def test_text_manifests_refuse_what_they_cannot_hold(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe not utf-8\n")
    with pytest.raises(InputError, match="cannot read manifest"):
        read_manifest(str(tmp_path / "bin.txt"))
    (tmp_path / "dup.txt").write_text("a\n a \n")          # surrounding spaces are stripped: a duplicate
    with pytest.raises(InputError, match="more than once"):
        read_manifest(str(tmp_path / "dup.txt"))


def test_a_decompression_bomb_in_an_encoded_pool_is_named():
    buf = io.BytesIO()
    side = 13_400                    # just over PIL's refusal at twice its default MAX_IMAGE_PIXELS
    assert side * side > 2 * 89_478_485
    Image.new("1", (side, side)).save(buf, format="PNG")      # 180 Mpx in a few dozen KB
    assert len(buf.getvalue()) < 1_000_000
    with pytest.raises(InputError, match="image 'bomb.png' cannot be decoded"):
        decode_images(np.array(["bomb.png"]), [buf.getvalue()], PoolMeta(), 32)


def test_a_16_bit_png_under_the_pixel_limit_is_refused_by_its_decode_budget_before_decoding(monkeypatch):
    """The 16-bit PNG of the issue: 9400 x 9400, under the pixel limit, a few hundred kB, that once grew a worker
    by 1.6 GB. Its header names what decoding would take: the 2-byte pixels and a 4-byte RGB copy of each."""
    side = 9_400
    data = flat_grey16_png(side)
    assert side * side < MAX_PIXELS and len(data) < 250_000
    needed_mib = side * side * (2 + 4) / 2 ** 20
    assert needed_mib * 2 ** 20 > DECODE_BUDGET.max_bytes

    def decode_pixels(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode_pixels)
    with pytest.raises(InputError, match=rf"^image 'deep.png' cannot be decoded: over the decode budget "
                                         rf"\(9400x9400 I;16 takes {needed_mib:.1f} MiB to decode, over 256 MiB\)$"):
        decode_images(np.array(["deep.png"]), [data], PoolMeta(), 32)


def test_the_decode_time_budget_stops_the_decoder_between_input_blocks(monkeypatch):
    """On a clock that moves one second at each reading, a 10 s budget runs out while the decoder still has
    most of the PNG's blocks to read; an unbounded budget decodes the same bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()

    def clock_readings(budget: DecodeBudget) -> tuple[int, RefusedImage | None]:
        readings = itertools.count()
        monkeypatch.setattr(images, "time", types.SimpleNamespace(monotonic=lambda: float(next(readings))))
        try:
            return decode_resized(data, 32, "RGB", budget=budget).size and next(readings), None
        except RefusedImage as refused:
            return next(readings), refused

    whole, refused = clock_readings(DecodeBudget(max_seconds=math.inf))
    assert refused is None and whole > len(data) / ImageFile.MAXBLOCK > 40    # a reading per input block at least
    stopped, refused = clock_readings(DecodeBudget(max_seconds=10))
    assert (refused.reason, refused.detail) == (OVER_DECODE_BUDGET, "decoding took over 10 s")
    assert stopped == 12            # the start, then a reading per read until the one at 11 s


def test_a_huge_but_legal_image_is_resized(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 10, 10)).save(buf, format="JPEG")
    out = decode_images(np.array(["big.jpg"]), [buf.getvalue()], PoolMeta(), 32)
    assert out.shape == (1, 3, 32, 32) and abs(int(out[0, 0].mean()) - 200) < 5


ODD_IDS = ["with space", " lead", "trail ", "tab\there", "new\nline", "ünïcødé", "emoji-🙂", "a/b/../c",
           "quote'\"", "x" * 4096, "", "CON", "..", "%2F", "back\\slash"]


def _round(pool, labeled, out, budget, strategy="random"):
    from vaal_dist.config import RoundConfig, ScoringConfig, Setup
    from vaal_dist.round import run_round

    return run_round(RoundConfig(pool=str(pool), labeled=str(labeled), out=str(out), budget=budget,
                                 strategy=strategy, setup=Setup(scoring=ScoringConfig(batch_size=4, num_actors=2))))


def test_odd_ids_round_trip_through_a_round(ray_local, tmp_path):
    from vaal_dist.pool.manifests import write_manifest

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, 32 * 32, dtype=np.uint8).tobytes() for _ in ODD_IDS]
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ODD_IDS[:7], "image": pixels[:7]}),
                                        pa.table({"id": ODD_IDS[7:], "image": pixels[7:]})],
               PoolMeta("raw", (32, 32, 1)))
    write_manifest(str(tmp_path / "labeled.parquet"), ODD_IDS[:3])
    result = _round(tmp_path / "pool", tmp_path / "labeled.parquet", tmp_path / "out", len(ODD_IDS) - 3)
    selected = pq.read_table(result.selection).column("id").to_pylist()
    assert sorted(selected) == sorted(ODD_IDS[3:])


def test_a_damaged_image_page_fails_the_round_naming_the_pool(ray_local, tmp_path):
    """The ids read fine, an image page does not: the round stops with the pool named, selects nothing."""
    ids = make_raw_pool(tmp_path / "pool", 64, shards=1)
    from vaal_dist.pool.manifests import write_manifest

    write_manifest(str(tmp_path / "labeled.parquet"), ids[:4])
    shard = tmp_path / "pool" / "part-00000.parquet"
    damage_image_page(shard)
    assert read_pool_ids(str(tmp_path / "pool")).to_pylist() == list(ids)
    with pytest.raises(InputError, match="shard that cannot be read .*part-00000.*failed its checksum"):
        _round(tmp_path / "pool", tmp_path / "labeled.parquet", tmp_path / "out", 5)
    assert not (tmp_path / "out" / "selection.parquet").exists()


def _image_header_damage_past_the_ids(shard, ids) -> bytes:
    """The shard's bytes with the first bit flip in its image data page's header (which no CRC covers) that
    leaves the ids readable and makes the image read fail other than by a CRC: the damage a round meets
    only in its workers."""
    clean = shard.read_bytes()
    page = pq.ParquetFile(shard).metadata.row_group(0).column(1).data_page_offset
    for at in range(24):
        for bit in (0x01, 0x02, 0x10):
            data = bytearray(clean)
            data[page + at] ^= bit
            shard.write_bytes(bytes(data))
            try:
                if read_pool_ids(str(shard.parent)).to_pylist() != list(ids):
                    continue
            except InputError:
                continue
            try:
                read_parquet(pafs.LocalFileSystem(), str(shard), ["image"])
            except (OSError, pa.ArrowException) as e:
                if PAGE_CRC_FAILURE not in str(e):
                    return bytes(data)
    raise AssertionError("no flip of the image page header failed the read past the ids")


def test_a_damaged_page_header_fails_the_round_naming_the_shard(ray_local, tmp_path):
    """Not a CRC failure (page headers have none): still one InputError naming the shard, nothing selected."""
    ids = make_raw_pool(tmp_path / "pool", 64, shards=1)
    from vaal_dist.pool.manifests import write_manifest

    write_manifest(str(tmp_path / "labeled.parquet"), ids[:4])
    shard = tmp_path / "pool" / "part-00000.parquet"
    shard.write_bytes(_image_header_damage_past_the_ids(shard, ids))
    with pytest.raises(InputError, match="shard that cannot be read .*part-00000.*damaged, or its storage"):
        _round(tmp_path / "pool", tmp_path / "labeled.parquet", tmp_path / "out", 5)
    assert not (tmp_path / "out" / "selection.parquet").exists()


def test_an_input_error_wrapped_by_ray_is_raised_again_by_name():
    remote = "ray.exceptions.RayTaskError: vaal_dist.errors.InputError: image 'a.png' cannot be decoded\nTraceback"
    with pytest.raises(InputError, match=r"^image 'a.png' cannot be decoded$"):
        raise_if_input_error(RuntimeError(remote))

    class WorkerGroupError(RuntimeError):          # Ray Train keeps each worker's whole error aside
        worker_failures = {0: RuntimeError(remote)}
    with pytest.raises(InputError, match=r"^image 'a.png' cannot be decoded$"):
        raise_if_input_error(WorkerGroupError("training failed (truncated)"))
    raise_if_input_error(RuntimeError("worker died: OOM"))      # no InputError inside: nothing raised


def _accented_pool(path) -> list[str]:
    """A raw pool whose ids are written in NFC ('é' as one code point), plus one holding U+2028."""
    ids = [f"caf\xe9-{i:02d}" for i in range(20)] + ["line\u2028sep"]
    pixels = np.random.default_rng(2).integers(0, 256, (len(ids), 32 * 32), dtype=np.uint8)
    write_pool(str(path), [pa.table({"id": ids, "image": [p.tobytes() for p in pixels]})],
               PoolMeta("raw", (32, 32, 1)))
    return ids


@pytest.mark.slow          # two whole rounds
def test_a_text_manifest_with_a_byte_order_mark_selects_as_the_plain_one(ray_local, tmp_path):
    ids = _accented_pool(tmp_path / "pool")
    lines = "\r\n".join(ids[:3] + ids[-1:]) + "\r\n"
    (tmp_path / "plain.txt").write_text(lines, encoding="utf-8")
    (tmp_path / "bom.txt").write_text(lines, encoding="utf-8-sig")      # as Notepad saves "UTF-8 with BOM"
    assert (tmp_path / "bom.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_manifest(str(tmp_path / "bom.txt")).to_pylist() == ids[:3] + ids[-1:]     # U+2028 kept inside
    plain = _round(tmp_path / "pool", tmp_path / "plain.txt", tmp_path / "plain", 5)
    bom = _round(tmp_path / "pool", tmp_path / "bom.txt", tmp_path / "bom", 5)
    assert pq.read_table(bom.selection).equals(pq.read_table(plain.selection))


def test_an_id_in_another_unicode_normalisation_is_refused_naming_the_closest_pool_id(tmp_path):
    _accented_pool(tmp_path / "pool")
    (tmp_path / "nfd.txt").write_text("caf\xe9-00\ncafe\u0301-01\n", encoding="utf-8")   # the second in NFD
    with pytest.raises(InputError) as refused:
        _round(tmp_path / "pool", tmp_path / "nfd.txt", tmp_path / "out", 5)
    assert str(refused.value).endswith(
        "names 1 ids that are not in the pool, e.g. ['cafe\u0301-01']; closest pool ids (compared as written, "
        r"no Unicode normalisation): 'cafe\u0301-01' ~ 'caf\xe9-01'")
    assert not (tmp_path / "out").exists()
