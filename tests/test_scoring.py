"""Scorers on hand-made batches without Ray, then streamed through Ray Data actors: same answer."""

import gc
import re
import time

import numpy as np
import pytest
import torch

from conftest import assert_same_top_k, f32_noise, pool_batch, vaal_checkpoint
from vaal_dist.cli import main
from vaal_dist.config import ScoringConfig, preset
from vaal_dist.errors import DivergedModelError, InputError, ScoringFailedError
from vaal_dist.models.vaal import pixels_to_input
from vaal_dist.placement import PlacementError
from vaal_dist.pool.dataset import filter_ids, read_pool
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import read_manifest
from vaal_dist.round_inputs import Trained
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import BatchTopK, stream_top_k
from vaal_dist.scoring.topk import top_k
from vaal_dist.strategies.random import Random, RandomScorer
from vaal_dist.strategies.vaal import VAALScorer
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models


def test_vaal_scorer_is_minus_the_discriminator_logit_of_mu(tmp_path, tiny_pool):
    pool = tiny_pool[0]
    ckpt = vaal_checkpoint(tmp_path / "ckpt")
    scorer = VAALScorer(ckpt, read_pool_meta(pool))
    batch = pool_batch(pool)
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT_FILE, weights_only=True)
    vae, disc = build_models(preset("cpu").vaal, 1)
    vae.load_state_dict(state["vae"]); disc.load_state_dict(state["disc"])
    vae.eval(); disc.eval()
    x = pixels_to_input(torch.from_numpy(decode_images(batch["id"], batch["image"], read_pool_meta(pool), 32)))
    with torch.no_grad():
        want = -disc(vae.encode_mean(x)).double().numpy()
    got = scorer(batch)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(scorer(batch), got)          # eval mode: deterministic, no sampling
    # lowest D(mu) first: the pick order is the ascending order of D's probability that an image is labeled,
    # which is unique here: neighbouring logits are further apart than got and want may differ
    with torch.no_grad():
        p_labeled = torch.sigmoid(disc(vae.encode_mean(x))).numpy()
    assert np.diff(np.sort(want)).min() > 2 * (1e-6 + 1e-6 * np.abs(want).max())
    picked, _ = top_k(batch["id"], got, len(got))
    np.testing.assert_array_equal(picked, batch["id"][np.argsort(p_labeled)])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_gpu_scorer_without_cuda_is_refused_not_moved_to_the_cpu(tmp_path, tiny_pool):
    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(tiny_pool[0])}
    with pytest.raises(InputError, match=r"use_gpu \(--use-gpu\) was asked, but torch in this scoring actor sees no"):
        VAALScorer(**kwargs, use_gpu=True)
    assert VAALScorer(**kwargs).device == torch.device("cpu")


@needs_cuda
@pytest.mark.parametrize("amp, rtol", [(False, 1e-2), (True, 5e-2)])     # TF32 convs; bfloat16
def test_a_gpu_actor_scores_as_the_cpu_does(tmp_path, tiny_pool, amp, rtol):
    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(tiny_pool[0])}
    batch = pool_batch(tiny_pool[0])
    cpu = BatchTopK(ScorerSpec(VAALScorer, kwargs), k=64)(batch)
    gpu = BatchTopK(ScorerSpec(VAALScorer, {**kwargs, "use_gpu": True}), k=64, amp=amp)(batch)
    assert gpu["score"].dtype == np.float64
    by_id = dict(zip(cpu["id"], cpu["score"]))
    np.testing.assert_allclose(gpu["score"], [by_id[i] for i in gpu["id"]], rtol=rtol, atol=rtol)


def test_amp_without_gpus_is_refused_by_name(ray_local, tiny_pool):
    from vaal_dist.errors import InputError

    with pytest.raises(InputError, match="amp"):
        stream_top_k(read_pool(tiny_pool[0]), ScorerSpec(RandomScorer, {"seed": 0}), 5, ScoringConfig(amp=True),
                     use_gpu=False)


def test_batch_top_k_passes_a_diverged_model_on(tmp_path, tiny_pool):
    actor = BatchTopK(ScorerSpec(VAALScorer, {"checkpoint": vaal_checkpoint(tmp_path / "c", poison=True),
                                              "meta": read_pool_meta(tiny_pool[0])}), k=5)
    out = actor(pool_batch(tiny_pool[0]))
    assert np.isnan(out["score"]).all() and len(out["id"]) == 64     # every bad row goes to the driver


def test_random_scorer_is_seeded_uniform_and_order_free():
    ids = np.array([f"x{i}" for i in range(2000)])
    a, b = RandomScorer(3)({"id": ids}), RandomScorer(3)({"id": ids[::-1]})[::-1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, RandomScorer(4)({"id": ids}))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.03


# The last case streams many 16 KiB blocks with room in the object store for one block per actor.
@pytest.mark.parametrize("k,actors,batch,layout", [(10, 2, 16, {}), (100, 2, 7, {}), (224, 1, 64, {}),
                                                   (50, 2, 8, {"block_bytes": 16 * 1024, "read_ahead_blocks": 1})])
def test_streamed_top_k_equals_in_memory_sort(ray_local, tmp_path, tiny_pool, k, actors, batch, layout):
    pool, labeled_uri, ids, labeled = tiny_pool
    ckpt = vaal_checkpoint(tmp_path / "ckpt")
    meta = read_pool_meta(pool)
    unlabeled = filter_ids(read_pool(pool), read_manifest(labeled_uri), keep=False)
    got = stream_top_k(unlabeled, ScorerSpec(VAALScorer, {"checkpoint": ckpt, "meta": meta}), k,
                       ScoringConfig(batch_size=batch, num_actors=actors, **layout))
    # in memory: every unlabeled image scored at once, then one full sort
    full = read_pool(pool).to_pandas()
    full = full[~full["id"].isin(set(labeled))]
    scores = VAALScorer(ckpt, meta)({"id": full["id"].to_numpy(), "image": full["image"].to_numpy()})
    assert_same_top_k(got, full["id"].to_numpy(), scores, f32_noise(scores), k)   # a score: one float32 output
    assert not set(got.ids) & set(labeled)
    assert len(set(got.ids)) == len(got.ids) == min(k, len(ids) - len(labeled))


def test_stream_surfaces_a_diverged_model_as_its_own_error(ray_local, tmp_path, tiny_pool):
    pool = tiny_pool[0]
    with pytest.raises(DivergedModelError, match="diverged"):
        stream_top_k(read_pool(pool), ScorerSpec(VAALScorer, {"checkpoint": vaal_checkpoint(tmp_path / "c", poison=True),
                                                          "meta": read_pool_meta(pool)}),
                     5, ScoringConfig(batch_size=32, num_actors=1))


def test_a_scorer_spec_refuses_arguments_its_class_does_not_take_on_the_driver():
    with pytest.raises(TypeError, match="RandomScorer: got an unexpected keyword argument 'sead'"):
        ScorerSpec(RandomScorer, {"seed": 3, "sead": 3})
    with pytest.raises(TypeError, match="VAALScorer: missing a required argument: 'meta'"):
        ScorerSpec(VAALScorer, {"checkpoint": None})
    spec = ScorerSpec(RandomScorer, {"seed": 3})
    assert spec.with_kwargs(seed=4).build().seed == 4 and spec.build().seed == 3


def stalls_on(victim: str, stall_s: float) -> type:
    """A RandomScorer that sleeps ``stall_s`` on the batch holding ``victim`` (a decode that hangs); made in a
    function, so that Ray's workers get the class by value."""
    class Stalls(RandomScorer):
        def __call__(self, batch):
            if victim in batch["id"]:
                time.sleep(stall_s)
            return super().__call__(batch)
    return Stalls


def test_a_batch_past_its_timeout_is_a_named_scoring_failure(tiny_pool):
    batch = pool_batch(tiny_pool[0])
    first, victim = str(batch["id"][0]), str(batch["id"][3])
    stalls = BatchTopK(ScorerSpec(stalls_on(victim, 2.0), {"seed": 0}), k=4, timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(ScoringFailedError, match=rf"^the scoring stage stalled: a batch of {len(batch['id'])} "
                                                 rf"images starting with id '{first}' was not done after 0.2 s "
                                                 rf"\(--score-timeout\)"):
        stalls(batch)
    assert time.monotonic() - start < 2.0               # the caller was let go before the stall ended
    calm = BatchTopK(ScorerSpec(stalls_on("none", 2.0), {"seed": 0}), k=4, timeout_s=0.2)
    assert calm(batch)["top"].sum() == 4
    forever = BatchTopK(ScorerSpec(stalls_on(victim, 0.3), {"seed": 0}), k=4, timeout_s=1e10)   # > TIMEOUT_MAX
    assert forever(batch)["top"].sum() == 4


def test_a_round_whose_scoring_batch_hangs_stops_with_one_error_line(ray_local, tmp_path, tiny_pool, monkeypatch,
                                                                      capsys):
    """A batch that does not finish in time (a 120 s sleep in the actor, 24x the timeout) fails the round after
    --score-timeout with one 'vaal-dist: error:' line, and the stalled thread does not keep its actor alive: every
    CPU is free again. Not an hour's sleep: Ray cannot stop the thread, so its process lives until it ends."""
    pool, labeled, ids, _ = tiny_pool
    victim = str(ids[100])
    monkeypatch.setattr(Random, "train", lambda self, inputs: Trained(
        ScorerSpec(stalls_on(victim, 120.0), {"seed": 0})))
    timeout_s = 5
    start = time.monotonic()
    code = main(["round", "--pool", pool, "--labeled", labeled, "--budget", "20", "--out", str(tmp_path / "out"),
                 "--strategy", "random", "--preset", "cpu", "--score-batch-size", "32", "--actors", "2",
                 "--score-timeout", str(timeout_s)])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()        # vaal_dist's INFO log lines, then the error
    assert code == 2 and sum("error" in line.lower() for line in err) == 1, err
    assert re.fullmatch(rf"vaal-dist: error: the scoring stage stalled: a batch of 32 images starting with id "
                        rf"'img-\d+' was not done after {timeout_s} s \(--score-timeout\); nothing was selected\..*",
                        err[-1]), err
    assert timeout_s < seconds < timeout_s + 120        # the batch's timeout, plus starting the stream on 2 cores
    assert not (tmp_path / "out" / "selection.parquet").exists()
    gc.collect()        # Ray Data lets a failed stream's actors go by reference, held in cycles until collected
    deadline = time.monotonic() + 60
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the stalled actor still holds its CPU"
        time.sleep(0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without GPUs")
def test_actors_the_cluster_has_no_room_for_end_the_stream_naming_the_shortfall(ray_local, tiny_pool, caplog):
    """A GPU actor asked of a CPU-only Ray: logged once as the stream starts, and after the placement timeout
    a PlacementError naming what was asked and what the cluster has (Ray Data alone waits forever)."""
    spec = ScorerSpec(RandomScorer, {"seed": 0})
    missing = "scoring needs 1 actor × 1 GPU, the cluster has 0 GPU on 1 alive node (room for 0)"
    with pytest.raises(PlacementError) as stopped:
        stream_top_k(read_pool(tiny_pool[0]), spec, 5, ScoringConfig(batch_size=32), use_gpu=True,
                     placement_timeout=3)
    assert str(stopped.value).startswith(f"{missing}; waited 3 s (--placement-timeout)")
    assert [r.getMessage() for r in caplog.records if r.name == "vaal_dist.placement"] == \
        [f"{missing}; waiting for up to 3 s (--placement-timeout) for resources or nodes to join"]
