"""Whole rounds on a local Ray: VAAL end to end, determinism and resume, bad input, the CLI."""
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from conftest import CALM_EPOCHS, make_raw_pool, png_bytes, read_selection, round_config, vaal_checkpoint, \
    vaal_trained_as
from vaal_dist import version
from vaal_dist.cli import main
from vaal_dist.config import ScoringConfig, preset
from vaal_dist.errors import DivergedModelError, InputError
from vaal_dist.pool.default import build_default_pool
from vaal_dist.pool.io import PoolMeta, read_pool_ids, read_pool_meta, write_pool
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.labeling.labels import write_labels
from vaal_dist.fingerprint import hash_sorted
from vaal_dist.round import run_round, validate_inputs
from vaal_dist.round_inputs import RoundInputs
from vaal_dist.strategies.vaal import VAAL


@pytest.mark.slow
def test_vaal_round_end_to_end_with_two_workers_and_two_actors(calm_round):
    """conftest's calm round on 2 Ray Train workers (the one test_cluster's faults must select again)."""
    calm = calm_round(2)
    sel = read_selection(calm.out)
    assert len(sel["id"]) == len(set(sel["id"])) == 20
    assert set(sel["id"]) <= set(calm.ids) and not set(sel["id"]) & set(calm.labeled_ids)
    assert sel["rank"] == list(range(1, 21)) and sel["score"] == sorted(sel["score"], reverse=True)
    record = json.loads((calm.out / "run.json").read_text())
    assert record["config"]["workers"] == 2 and record["pool"]["unlabeled"] == 224
    t = record["timings"]
    assert record["per_100_query_seconds"] == pytest.approx(t["total_seconds"] / 20 * 100)
    assert t["train_seconds"] > 0 and t["score_seconds"] > 0
    assert record["train"]["vaal"]["last_epoch"]["epoch"] == CALM_EPOCHS
    assert calm.result.per_100_seconds == record["per_100_query_seconds"]


@pytest.mark.slow
def test_same_selection_from_a_worker_or_the_driver_and_a_driver_restart_resumes(ray_local, tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    two_epochs = round_config(pool, labeled, tmp_path / "a", vaal={"epochs": 2})
    first = run_round(two_epochs)                       # one Ray Train worker
    # In the driver (workers=0), interrupted: epoch 1 trained and checkpointed under b/, then a crash
    # while writing epoch 2's checkpoint (a folder without its completion mark), then the round again.
    in_driver = dict(workers=0, vaal={"epochs": 1})
    VAAL().train(RoundInputs(round_config(pool, labeled, tmp_path / "b", **in_driver), read_pool_meta(pool),
                             read_manifest(labeled), str(tmp_path / "b/train")))
    half_written = tmp_path / "b/train/vaal/checkpoint_000002"
    half_written.mkdir()
    (half_written / "vaal.pt").write_bytes(b"cut short")
    in_driver["vaal"] = {"epochs": 2}
    resumed = run_round(round_config(pool, labeled, tmp_path / "b", **in_driver))
    assert resumed.record["train"]["vaal"]["last_epoch"]["resumed_from_epoch"] == 1
    assert first.record["train"]["vaal"]["last_epoch"]["resumed_from_epoch"] == 0
    assert read_selection(tmp_path / "a") == read_selection(tmp_path / "b")      # scores equal to the bit
    assert sorted(p.name for p in (tmp_path / "b/train/vaal").iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    # Rerunning a finished round is a no-op that returns the same record.
    assert run_round(two_epochs).record == first.record
    with pytest.raises(InputError, match="started with another config, pool"):
        run_round(round_config(pool, labeled, tmp_path / "a", budget=5))


def _assert_no_selection(out):
    assert not (out / "selection.parquet").exists() and not (out / "run.json").exists()


def _assert_nothing_written(out):
    """Not even inputs.json: a user who fixes the input reruns into the same --out."""
    assert not out.exists()


@pytest.mark.parametrize("case,match", [
    ("budget_too_big", r"budget 225 is larger than the unlabeled pool \(224 of 256"),
    ("budget_zero", "budget must be at least 1"),
    ("negative_workers", "workers must be at least 0"),
    ("gpu_in_driver", "workers=0 trains in the driver process"),
    ("wrong_size", "pool images are 32x32 but the model expects 64x64"),
    ("wrong_size_task", "pool images are 32x32 but the model expects 64x64"),
    ("unknown_labeled", r"names 2 ids that are not in the pool, e.g. \['ghost-1', 'ghost-2'\]"),
    ("missing_pool", "does not exist"),
    ("missing_labeled", "does not exist"),
])
def test_bad_round_input_is_named_and_nothing_is_written(ray_local, tmp_path, tiny_pool, case, match):
    pool, labeled, ids, _ = tiny_pool
    kw = {"strategy": "random"}
    if case == "budget_too_big":
        kw["budget"] = 225
    elif case == "budget_zero":
        kw["budget"] = 0
    elif case == "negative_workers":
        kw["workers"] = -1
    elif case == "gpu_in_driver":
        kw.update(workers=0, use_gpu=True)
    elif case == "wrong_size":       # refused before any training starts
        kw.update(strategy="vaal", preset=preset("imagenet"))
    elif case == "wrong_size_task":
        kw.update(strategy="ta_vaal", preset=preset("cpu", vaal={"image_size": 64}))
    elif case == "unknown_labeled":
        write_manifest(str(tmp_path / "l2.parquet"), [*ids[:3], "ghost-1", "ghost-2"])
        labeled = str(tmp_path / "l2.parquet")
    elif case == "missing_pool":
        pool = str(tmp_path / "no-pool")
    elif case == "missing_labeled":
        labeled = str(tmp_path / "no-labeled.txt")
    with pytest.raises(InputError, match=match):
        run_round(round_config(pool, labeled, tmp_path / "out", **kw))
    _assert_nothing_written(tmp_path / "out")


def test_an_out_inside_the_pool_or_a_pool_inside_the_out_is_refused_before_writing(ray_local, tmp_path, tiny_pool):
    """The pool's shards are listed recursively: a round written inside it would break every later round."""
    pool, labeled = tiny_pool[:2]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InputError, match=r"--out '.*/pool/round' lies inside --pool"):
        run_round(round_config(pool, labeled, tmp_path / "pool" / "round", strategy="random"))
    with pytest.raises(InputError, match=r"--out '.*/pool' lies inside --pool"):
        run_round(round_config(pool, labeled, tmp_path / "pool" / ".", strategy="random"))
    (tmp_path / "link").symlink_to(tmp_path / "pool")
    with pytest.raises(InputError, match="lies inside --pool"):
        run_round(round_config(pool, labeled, tmp_path / "link" / "round", strategy="random"))
    with pytest.raises(InputError, match=r"--pool '.*/pool' lies inside --out"):
        run_round(round_config(pool, labeled, tmp_path, strategy="random"))
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "link"])
    run_round(round_config(pool, labeled, tmp_path / "pool-round", strategy="random"))   # a shared prefix is apart


def test_duplicate_and_empty_pools_are_refused(ray_local, tmp_path):
    write_pool(str(tmp_path / "dup"), [pa.table({"id": ["a", "b", "a"], "image": [b"", b"", b""]})], PoolMeta())
    write_pool(str(tmp_path / "empty"), [pa.table({"id": pa.array([], pa.string()),
                                                   "image": pa.array([], pa.binary())})], PoolMeta())
    write_manifest(str(tmp_path / "l.parquet"), ["a"])
    with pytest.raises(InputError, match=r"ids occur more than once, e.g. \['a'\]"):
        run_round(round_config(str(tmp_path / "dup"), str(tmp_path / "l.parquet"), tmp_path / "o1"))
    with pytest.raises(InputError, match="has no images"):
        run_round(round_config(str(tmp_path / "empty"), str(tmp_path / "l.parquet"), tmp_path / "o2"))


def test_a_corrupt_image_fails_the_round_naming_it(ray_local, tmp_path, monkeypatch):
    untrained = vaal_checkpoint(tmp_path / "ckpt", channels=3)     # scoring is what meets the image
    vaal_trained_as(monkeypatch, untrained)
    pool, labeled = photo_pool(tmp_path, 30, bad=17, bad_bytes=png_bytes(np.random.default_rng(1))[:40])
    with pytest.raises(InputError, match="image 'photos/017.png' cannot be decoded"):
        run_round(round_config(pool, labeled, tmp_path / "out", budget=5))
    _assert_no_selection(tmp_path / "out")


def photo_pool(tmp_path, n: int, bad: int, bad_bytes: bytes) -> tuple[str, str]:
    """An encoded pool of n PNGs with image ``bad`` replaced by ``bad_bytes``; the first 8 are labeled."""
    rng = np.random.default_rng(0)
    images = [png_bytes(rng, 32) for _ in range(n)]
    images[bad] = bad_bytes
    ids = [f"photos/{i:03d}.png" for i in range(n)]
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ids, "image": images})], PoolMeta())
    write_manifest(str(tmp_path / "l.parquet"), ids[:8])
    return str(tmp_path / "pool"), str(tmp_path / "l.parquet")


def test_an_encoded_pool_without_pool_json_runs(ray_local, tmp_path):
    """pool.json is optional (encoded images assumed): a pool written by hand has none."""
    pool, labeled = photo_pool(tmp_path, 30, bad=0, bad_bytes=png_bytes(np.random.default_rng(1), 32))
    (tmp_path / "pool" / "pool.json").unlink()
    result = run_round(round_config(pool, labeled, tmp_path / "out", budget=5, strategy="random"))
    picked = read_selection(tmp_path / "out")["id"]
    assert result.record["pool"]["images"] == 30 and len(set(picked)) == 5
    assert not set(picked) & {f"photos/{i:03d}.png" for i in range(8)}


def test_a_pool_prepared_again_in_place_or_another_version_is_not_taken_for_the_old(ray_local, tmp_path, tiny_pool,
                                                                                    monkeypatch):
    pool, labeled = tiny_pool[:2]
    run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))
    run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))          # unchanged: a no-op
    monkeypatch.setattr(version, "__version__", version.__version__ + ".post1")
    with pytest.raises(InputError, match="vaal_dist version; choose a new --out"):
        run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))
    monkeypatch.undo()
    make_raw_pool(tmp_path / "pool", 256, seed=5)             # the same ids in the same files, other pixels
    with pytest.raises(InputError, match=r"another config, pool \(ids or files\)"):
        run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))


def test_a_rerun_with_a_changed_labeled_set_is_refused(ray_local, tmp_path, tiny_pool):
    pool, labeled, ids, labeled_ids = tiny_pool
    run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))
    write_manifest(labeled, [*labeled_ids, *read_selection(tmp_path / "out")["id"]])   # next round's set
    with pytest.raises(InputError, match="started with another config, pool"):
        run_round(round_config(pool, labeled, tmp_path / "out", strategy="random"))


def test_imported_labels_changed_under_the_same_ids_change_the_fingerprint(tmp_path):
    """A pool without a label column takes labels.parquet beside the manifest: an import run again with other
    answers must not let a rerun into the old --out return the old selection. Beside a pool that has the
    column, labels.parquet is not read and does not count."""
    ids = [f"img-{i:05d}" for i in range(6)]                 # as make_raw_pool names them
    write_pool(str(tmp_path / "bare"), [pa.table({"id": ids, "image": [b"\0" * 4] * 6})], PoolMeta("raw", (2, 2, 1)))
    make_raw_pool(tmp_path / "with-labels", 6)
    write_manifest(str(tmp_path / "round" / "labeled.parquet"), ids[:2])
    answers = tmp_path / "round" / "labels.parquet"

    def fingerprint(pool: str) -> str:
        return validate_inputs(round_config(str(tmp_path / pool), str(tmp_path / "round" / "labeled.parquet"),
                                            tmp_path / "out", budget=1, strategy="entropy"), True)[3]

    def write_answers(labels: list[int], mtime_ns: int) -> None:
        write_labels(str(answers), pa.table({"id": ids[:2], "label": labels, "annotator": ["a", "a"],
                                             "time": pa.array([0, 0], pa.timestamp("us", tz="UTC"))}), ["0", "1"])
        os.utime(answers, ns=(mtime_ns, mtime_ns))

    bare, with_labels = fingerprint("bare"), fingerprint("with-labels")
    write_answers([0, 1], 10**18)
    first = fingerprint("bare")
    write_answers([1, 0], 2 * 10**18)
    assert len({bare, first, fingerprint("bare")}) == 3
    assert fingerprint("with-labels") == with_labels


def test_labels_imported_beside_a_pool_that_has_a_label_column_are_named_as_unused(tmp_path, caplog):
    """The pool's column wins (it is the oracle's); answers imported beside it must not be dropped silently."""
    ids = make_raw_pool(tmp_path / "pool", 6)
    write_manifest(str(tmp_path / "round" / "labeled.parquet"), ids[:2])
    cfg = round_config(str(tmp_path / "pool"), str(tmp_path / "round" / "labeled.parquet"), tmp_path / "out",
                       budget=1, strategy="entropy")
    assert RoundInputs(cfg, read_pool_meta(cfg.pool), pa.array(ids[:2]), "train").imported_labels is None
    assert not caplog.records
    write_labels(str(tmp_path / "round" / "labels.parquet"), pa.table({
        "id": ids[:2], "label": [1, 0], "annotator": ["a", "a"],
        "time": pa.array([0, 0], pa.timestamp("us", tz="UTC"))}), ["0", "1"])
    assert RoundInputs(cfg, read_pool_meta(cfg.pool), pa.array(ids[:2]), "train").imported_labels is None
    assert [r.getMessage() for r in caplog.records] == [
        f"labels.parquet beside the labeled manifest is not used: pool {cfg.pool} has a label column, and its "
        f"labels are the ones trained on"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 0])
def test_a_corrupt_image_met_in_training_is_named(ray_local, tmp_path, workers):
    pool, labeled = photo_pool(tmp_path, 40, bad=33, bad_bytes=b"GIF89a not really")
    with pytest.raises(InputError, match="image 'photos/033.png' cannot be decoded"):
        run_round(round_config(pool, labeled, tmp_path / "out", budget=5, workers=workers))
    _assert_no_selection(tmp_path / "out")


def test_a_diverged_model_selects_nothing(ray_local, tmp_path, tiny_pool, monkeypatch):
    poisoned = vaal_checkpoint(tmp_path / "nan", poison=True)
    vaal_trained_as(monkeypatch, poisoned)
    with pytest.raises(DivergedModelError, match="non-finite scores"):
        run_round(round_config(*tiny_pool[:2], tmp_path / "out"))
    _assert_no_selection(tmp_path / "out")


@pytest.mark.slow          # three whole rounds
def test_random_round_is_seeded_and_order_free(ray_local, tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    a = run_round(round_config(pool, labeled, tmp_path / "a", strategy="random", seed=7))
    b = run_round(round_config(pool, labeled, tmp_path / "b", strategy="random", seed=7,
                               scoring=ScoringConfig(batch_size=5, num_actors=1)))
    c = run_round(round_config(pool, labeled, tmp_path / "c", strategy="random", seed=8))
    assert read_selection(tmp_path / "a") == read_selection(tmp_path / "b")
    assert read_selection(tmp_path / "a")["id"] != read_selection(tmp_path / "c")["id"]
    assert a.record["train"] == {} and b.record["budget"] == c.record["budget"] == 20


@pytest.mark.slow          # two whole rounds
def test_cli_runs_the_same_path_and_reports_bad_input(ray_local, tmp_path, tiny_pool, capsys):
    pool, labeled = tiny_pool[:2]
    assert main(["round", "--pool", pool]) == 2
    assert "with --pool, also give --labeled, --budget, --out" in capsys.readouterr().err
    assert main(["round", "--pool", pool, "--labeled", labeled, "--budget", "9999", "--out",
                 str(tmp_path / "o")]) == 2
    assert "budget 9999 is larger than the unlabeled pool" in capsys.readouterr().err
    assert main(["round", "--pool", pool, "--labeled", labeled, "--budget", "7", "--out",
                 str(tmp_path / "o"), "--strategy", "random", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert f"selection: {tmp_path / 'o'}/selection.parquet" in out and "per-100-sample query time" in out
    assert read_selection(tmp_path / "o")["id"] == read_selection_random(pool, labeled, tmp_path, 7)


def read_selection_random(pool, labeled, tmp_path, seed):
    run_round(round_config(pool, labeled, tmp_path / "api", strategy="random", seed=seed, budget=7,
                           preset=preset("cifar10"), scoring=ScoringConfig()))
    return read_selection(tmp_path / "api")["id"]


def test_default_pool_is_the_bundled_mnist_with_a_seeded_tenth_labeled(tmp_path):
    build_default_pool(str(tmp_path / "p"), str(tmp_path / "l.parquet"), size=32, seed=0)
    ids = read_pool_ids(str(tmp_path / "p"))
    labeled = read_manifest(str(tmp_path / "l.parquet")).to_pylist()
    assert len(ids) == 5000 and len(labeled) == 500 and set(labeled) <= set(ids.to_pylist())
    assert read_pool_meta(str(tmp_path / "p")) == PoolMeta("raw", (32, 32, 1))
    build_default_pool(str(tmp_path / "p2"), str(tmp_path / "l2.parquet"), size=32, seed=0)
    assert read_manifest(str(tmp_path / "l2.parquet")).to_pylist() == labeled


def test_the_ids_fingerprint_hashes_the_sorted_ids_joined_whatever_the_chunks():
    """A rerun's --out is matched by this hash: the chunked form must equal hashing the whole sorted join."""
    rng = np.random.default_rng(0)
    ids = [f"{c}{i}" for i, c in enumerate(rng.choice(list("aZé0-ü"), 50))]
    whole = hashlib.sha256(b"\x01".join(i.encode() for i in sorted(ids))).hexdigest()
    for chunk in (1, 7, 50, 64):
        h = hashlib.sha256()
        hash_sorted(h, pa.chunked_array([pa.array(ids[:20]), pa.array(ids[20:])]), chunk)
        assert h.hexdigest() == whole
