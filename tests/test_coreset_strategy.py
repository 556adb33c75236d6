"""Core-set as a strategy: embeddings streamed through the actors, exact greedy, in a whole round."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import assert_greedy_picks_are_stable, f32_noise, vaal_checkpoint, vaal_trained_as
from vaal_dist.config import RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.coreset.kcenter import k_center_greedy
from vaal_dist.pool.dataset import filter_ids, read_pool
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import read_manifest
from vaal_dist.round import run_round
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import stream_embeddings
from vaal_dist.strategies.vaal import VAALScorer


@pytest.fixture
def untrained_vaal(tmp_path, monkeypatch):
    """VAAL's training replaced by an untrained checkpoint: the selection path is what is tested."""
    ckpt = vaal_checkpoint(tmp_path / "ckpt")
    vaal_trained_as(monkeypatch, ckpt)
    return ckpt


def test_streamed_embeddings_equal_in_memory(ray_local, tiny_pool, untrained_vaal):
    pool, labeled_uri = tiny_pool[:2]
    meta = read_pool_meta(pool)
    unlabeled = filter_ids(read_pool(pool), read_manifest(labeled_uri), keep=False)
    ids, emb = stream_embeddings(unlabeled, ScorerSpec(VAALScorer, {"checkpoint": untrained_vaal, "meta": meta}),
                                 ScoringConfig(batch_size=16, num_actors=2))
    table = unlabeled.to_pandas()
    want = VAALScorer(untrained_vaal, meta).embed({"id": table["id"].to_numpy(), "image": table["image"].to_numpy()})
    order = np.argsort(ids)
    # each coordinate of mu is a float32 network output: batches of 16 on one thread vs one of 224
    np.testing.assert_allclose(emb[order], want[np.argsort(table["id"].to_numpy())], rtol=0, atol=f32_noise(want))
    assert emb.shape == (224, 32)


def test_streamed_embeddings_come_in_id_order_whatever_order_the_rows_stream_in(ray_local, tiny_pool, untrained_vaal):
    """k-means samples its points by row position: rows in the actors' order would make clusters depend on timing."""
    import ray.data

    pool = tiny_pool[0]
    meta = read_pool_meta(pool)
    table = read_pool(pool).to_pandas().sample(frac=1, random_state=0)
    ids, emb = stream_embeddings(ray.data.from_pandas(table), ScorerSpec(VAALScorer, {"checkpoint": untrained_vaal,
                                                                                      "meta": meta}),
                                 ScoringConfig(batch_size=16, num_actors=2))
    assert list(ids) == sorted(table["id"])
    in_order = table.sort_values("id")
    want = VAALScorer(untrained_vaal, meta).embed({"id": in_order["id"].to_numpy(), "image": in_order["image"].to_numpy()})
    np.testing.assert_allclose(emb, want, rtol=0, atol=f32_noise(want))


@pytest.mark.slow
def test_coreset_round_equals_greedy_on_the_embeddings(ray_local, tmp_path, tiny_pool, untrained_vaal):
    pool, labeled_uri, ids, labeled_ids = tiny_pool
    cfg = RoundConfig(pool=pool, labeled=labeled_uri, out=str(tmp_path / "out"), budget=15, strategy="coreset_vae",
                      setup=Setup(preset("cpu"), scoring=ScoringConfig(batch_size=32, num_actors=2)))
    result = run_round(cfg)
    selection = pq.read_table(tmp_path / "out" / "selection.parquet").to_pydict()
    # reference: embed everything in one process, run the greedy
    table = read_pool(pool).to_pandas()
    emb = VAALScorer(untrained_vaal, read_pool_meta(pool)).embed(
        {"id": table["id"].to_numpy(), "image": table["image"].to_numpy()})
    is_labeled = table["id"].isin(set(labeled_ids)).to_numpy()
    u_ids = table["id"].to_numpy()[~is_labeled]
    picks = k_center_greedy(emb[~is_labeled], emb[is_labeled], 15, u_ids)
    assert_greedy_picks_are_stable(emb[~is_labeled], emb[is_labeled], picks, f32_noise(emb))   # streamed: batches of 32
    assert selection["id"] == list(u_ids[picks])
    assert not set(selection["id"]) & set(labeled_ids)
    assert selection["score"] == sorted(selection["score"], reverse=True)
    assert result.record["timings"]["merge_seconds"] > 0
