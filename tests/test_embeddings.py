"""--embeddings FILE (the pool's vectors from a user's Parquet) and a fixed backbone's embeddings computed once."""
import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import backbone_round, bad_file, make_raw_pool, saved_weights, vectors_round, write_embeddings
from vaal_dist import cli
from vaal_dist.config import Backbone
from vaal_dist.errors import InputError
from vaal_dist.pool import clusters as clusters_file
from vaal_dist.pool.clusters import cached_cluster_pool
from vaal_dist.pool.embeddings import Vectors, embeddings_files, read_vectors
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.round import run_round, validate_inputs
from vaal_dist.strategies.cluster_margin import _pool_features






def brute_force_greedy(unlabeled, labeled, budget, ids) -> list[str]:
    """k-center greedy in float64 numpy, ties by smallest id."""
    u = unlabeled.astype(np.float64)
    nearest = np.full(len(u), np.inf)
    for center in labeled.astype(np.float64):
        nearest = np.minimum(nearest, ((u - center) ** 2).sum(1))
    picks = []
    for _ in range(budget):
        farthest = np.flatnonzero(nearest == nearest.max())
        pick = farthest[np.argmin(ids[farthest])]
        picks.append(ids[pick])
        nearest = np.minimum(nearest, ((u - u[pick]) ** 2).sum(1))
    return picks


def test_the_vectors_of_the_ids_asked_are_read_in_float32_whatever_the_layout(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.array([f"id-{i}" for i in range(40)])
    x = rng.normal(size=(40, 6)).astype(np.float16)
    wanted = pa.array(["id-7", "id-3", "id-30"])
    (tmp_path / "folder").mkdir()
    write_embeddings(tmp_path / "folder" / "a.parquet", ids[:20], x[:20])
    write_embeddings(tmp_path / "folder" / "b.parquet", ids[20:], x[20:])
    (tmp_path / "folder" / "_SUCCESS").write_text("")
    layouts = {"float16, a folder of two files": tmp_path / "folder",
               "list<float32> of one width": write_embeddings(tmp_path / "list.parquet", ids, x.astype(np.float32),
                                                              "list")}
    for name, uri in layouts.items():
        vectors = read_vectors(embeddings_files(str(uri)), wanted)
        assert list(vectors.ids) == ["id-7", "id-3", "id-30"], name           # only the rows asked for, in order
        assert vectors.x.dtype == np.float32
        np.testing.assert_array_equal(vectors.x, x[[7, 3, 30]].astype(np.float32), err_msg=name)




BAD_FILES = {
    "missing ids": r"has no embedding for 7 of the round's 256 labeled and unlabeled ids, e\.g\. \['img-00000', "
                   r"'img-00001', 'img-00002', 'img-00003', 'img-00004'\]",
    "duplicate ids": r"3 ids occur more than once, e\.g\. \['img-00000', 'img-00001', 'img-00002'\]",
    "mixed widths": r"has mixed widths, 4 and 3, e\.g\. ids \['img-00005'\]",
    "mixed widths across files": r"has mixed widths or types across its files: "
                                 r"\['fixed_size_list<element: float>\[4\]', 'fixed_size_list<element: float>\[5\]'\]",
    "two id types across files": r"cannot read --embeddings .*Unable to merge: Field id has incompatible types",
    "NaN": r"1 embeddings hold NaN or infinity, e\.g\. ids \['img-00004'\]",
    "inf": r"1 embeddings hold NaN or infinity, e\.g\. ids \['img-00004'\]",
    "float64": r"column 'embedding' must be a list of float32 or float16, got fixed_size_list<element: double>\[4\]",
    "integer ids": r"column 'id' must be strings, got int64",
    "no embedding column": r"has no \['embedding'\] column \(columns: \['id', 'vector'\]\)",
    "null embedding": r"1 ids have a null embedding, e\.g\. \['img-00002'\]",
    "not parquet": r"cannot read --embeddings .*this is not a parquet file",
    "no file": r"--embeddings '.*none.parquet' does not exist",
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_embeddings_file_is_named_and_the_round_writes_nothing(tmp_path, tiny_pool, case):
    pool, labeled, ids, _ = tiny_pool
    path = tmp_path / "none.parquet" if case == "no file" else bad_file(tmp_path / "emb.parquet", case, ids)
    with pytest.raises(InputError, match=BAD_FILES[case]):
        run_round(vectors_round(pool, labeled, tmp_path / "out", path))
    assert not (tmp_path / "out").exists() and not (tmp_path / "embeddings-cache").exists()


def test_the_cli_names_a_bad_embeddings_file_in_one_line(tmp_path, tiny_pool, capsys):
    pool, labeled, ids, _ = tiny_pool
    path = bad_file(tmp_path / "emb.parquet", "NaN", ids)
    given = ["--pool", pool, "--labeled", labeled, "--budget", "5", "--out", str(tmp_path / "out"),
             "--strategy", "coreset", "--preset", "cpu", "--embeddings", path]
    assert cli.main(["round", *given]) == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vaal-dist: error: --embeddings {path!r}: 1 embeddings hold NaN or infinity, e.g. ids ['img-00004']"]


def test_strategies_that_embed_nothing_refuse_the_file_and_one_way_to_get_vectors_is_asked(tmp_path, tiny_pool):
    pool, labeled, ids, _ = tiny_pool
    path = write_embeddings(tmp_path / "emb.parquet", ids, np.zeros((len(ids), 4), np.float32))
    with pytest.raises(InputError, match=r"--embeddings is for the strategies that embed the pool, "
                                         r"\['cluster_margin', 'coreset', 'typiclust'\]; entropy does not"):
        run_round(vectors_round(pool, labeled, tmp_path / "out", path, strategy="entropy"))
    both = vectors_round(pool, labeled, tmp_path / "out", path, embedding=Backbone("resnet18", "w.pt"))
    with pytest.raises(InputError, match="--embedding and --embeddings are two ways to get the same vectors"):
        run_round(both)
    assert not (tmp_path / "out").exists()


def test_the_file_written_again_changes_the_fingerprint_and_where_the_cache_is_does_not(tmp_path, tiny_pool):
    pool, labeled, ids, _ = tiny_pool
    x = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    path = write_embeddings(tmp_path / "emb.parquet", ids, x)
    cfg = vectors_round(pool, labeled, tmp_path / "out", path)
    first = validate_inputs(cfg, False)[3]
    write_embeddings(path, ids, x + 1)
    os.utime(path, ns=(0, 10 ** 18))        # another modification time even on a coarse clock
    assert validate_inputs(cfg, False)[3] != first
    moved_cache = dataclasses.replace(cfg, embeddings_cache=str(tmp_path / "elsewhere"))
    assert validate_inputs(moved_cache, False)[3] == validate_inputs(cfg, False)[3]


class FileVectorsInputs:
    """What Cluster-Margin's clustering reads of a round whose vectors come from a file."""

    def __init__(self, vectors: Vectors, cache: str):
        self.vectors, self.embeddings_cache = vectors, cache


def test_clusters_of_vectors_from_a_file_are_computed_once_and_reused_by_the_next_round(tmp_path, monkeypatch):
    """Round 2 holds the same pool ids in another order (labeled first, and more of them): the same clusters,
    read from the cache."""
    rng = np.random.default_rng(0)
    ids = np.array([f"id-{i:03d}" for i in range(300)])
    x = rng.normal(size=(300, 8)).astype(np.float32)
    cache = str(tmp_path / "cache")
    first = clusters_of(Vectors(ids, x, key="k"), cache)
    monkeypatch.setattr(clusters_file, "cluster", lambda *a: pytest.fail("clustered again"))
    shuffled = rng.permutation(300)
    second = clusters_of(Vectors(ids[shuffled], x[shuffled], key="k"), cache)
    np.testing.assert_array_equal(second.of(ids), first.of(ids))
    assert len(list((tmp_path / "cache").glob("clusters-*.parquet"))) == 1


def clusters_of(vectors: Vectors, cache: str):
    """Cluster-Margin's clusters of a round whose vectors come from a file."""
    where, ids, features, seed = _pool_features(FileVectorsInputs(vectors, cache), None, None, None)
    return cached_cluster_pool(where, features, ids, seed=seed)


def vectors_pool(tmp_path, n: int, d: int, labeled: int, size: int = 4):
    """A pool of ``n`` images of ``size`` x ``size``, a manifest of ``labeled`` of them and an embeddings file of
    ``n`` x ``d`` float32 (file rows shuffled, beside 100 ids the pool does not hold)."""
    ids = make_raw_pool(tmp_path / "pool", n, size=size)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d)).astype(np.float32)
    extra = np.array([f"other-{i}" for i in range(100)])
    order = rng.permutation(n + 100)
    write_embeddings(tmp_path / "emb.parquet", np.concatenate([ids, extra])[order],
                     np.concatenate([x, rng.normal(size=(100, d)).astype(np.float32)])[order])
    is_labeled = np.zeros(n, bool)
    is_labeled[rng.choice(n, labeled, replace=False)] = True
    write_manifest(str(tmp_path / "labeled.parquet"), ids[is_labeled])
    return str(tmp_path / "pool"), str(tmp_path / "labeled.parquet"), ids, x, is_labeled


@pytest.mark.slow
def test_a_coreset_round_on_given_vectors_picks_what_the_exact_greedy_picks(ray_local, tmp_path):
    pool, labeled, ids, x, is_labeled = vectors_pool(tmp_path, 20_000, 512, labeled=50)
    result = run_round(vectors_round(pool, labeled, tmp_path / "out", tmp_path / "emb.parquet", budget=25))
    assert result.record["train"] == {}
    want = brute_force_greedy(x[~is_labeled], x[is_labeled], 25, ids[~is_labeled])
    assert pq.read_table(result.selection).column("id").to_pylist() == want


@pytest.mark.slow
def test_typiclust_and_cluster_margin_rounds_take_the_given_vectors(ray_local, tmp_path):
    pool, labeled, ids, x, is_labeled = vectors_pool(tmp_path, 400, 16, labeled=40, size=32)   # the task model's
    for strategy, trains in (("typiclust", set()), ("cluster_margin", {"task"})):
        result = run_round(dataclasses.replace(vectors_round(
            pool, labeled, tmp_path / strategy, tmp_path / "emb.parquet", strategy=strategy, budget=12),
            embeddings_cache=str(tmp_path / "embeddings-cache")))
        picked = pq.read_table(result.selection).column("id").to_pylist()
        assert set(result.record["train"]) == trains
        assert len(set(picked)) == 12 and not set(picked) & set(ids[is_labeled])
    assert len(list((tmp_path / "embeddings-cache").glob("clusters-*.parquet"))) == 1


@pytest.mark.slow
def test_a_fixed_backbone_embeds_the_pool_once_and_the_next_round_reads_it(ray_local, tmp_path, tiny_pool,
                                                                              monkeypatch):
    pool, labeled, ids, labeled_ids = tiny_pool
    weights = saved_weights(tmp_path / "w.pt")
    cache = str(tmp_path / "embeddings-cache")           # what rounds of one pool share: --embeddings-cache
    run_round(dataclasses.replace(backbone_round(pool, labeled, tmp_path / "r1", "coreset", weights, budget=10),
                                  embeddings_cache=cache))
    (cached,) = (tmp_path / "embeddings-cache").glob("embeddings-*.parquet")
    vectors = pq.read_table(cached)
    assert sorted(vectors.column("id").to_pylist()) == sorted(ids)          # the whole pool, once
    picked = pq.read_table(tmp_path / "r1" / "selection.parquet").column("id").to_pylist()
    write_manifest(str(tmp_path / "labeled-2.parquet"), [*labeled_ids, *picked])

    import vaal_dist.round_inputs
    monkeypatch.setattr(vaal_dist.round_inputs, "stream_embeddings", lambda *a, **k: pytest.fail("embedded again"))
    result = run_round(dataclasses.replace(backbone_round(pool, str(tmp_path / "labeled-2.parquet"), tmp_path / "r2",
                                                          "coreset", weights, budget=10), embeddings_cache=cache))
    x = np.stack(vectors.column("embedding").to_numpy(zero_copy_only=False))
    file_ids = np.array(vectors.column("id").to_pylist())
    is_labeled = np.isin(file_ids, [*labeled_ids, *picked])
    assert pq.read_table(result.selection).column("id").to_pylist() == brute_force_greedy(
        x[~is_labeled], x[is_labeled], 10, file_ids[~is_labeled])
