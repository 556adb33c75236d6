"""Injected faults: a scoring actor killed for real, mid-stream, a scorer that fails or refuses to start, a crash at
each stage of a round; the selection is the one an undisturbed run makes. (A Ray Train worker killed mid-run:
test_cluster.py, one of two DDP workers.)"""
import os
import signal
import time

import numpy as np
import psutil
import pytest
import ray
import torch

from conftest import read_selection, round_config, vaal_checkpoint
from vaal_dist.config import ScoringConfig
from vaal_dist.errors import InputError, ScoringFailedError
from vaal_dist.pool.dataset import read_pool
from vaal_dist.placement import alive_nodes
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.round import run_round
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring import stream
from vaal_dist.scoring.stream import stream_top_k
from vaal_dist.strategies.vaal import VAALScorer

pytestmark = pytest.mark.slow          # faults: scoring actors killed for real, rounds crashed at each stage


def test_a_scoring_actor_killed_mid_stream_changes_nothing(ray_local, tmp_path, tiny_pool):
    """The actor scoring the batch that holds ``victim`` dies (SIGKILL) once; Ray restarts it and rescores
    the batch. The top-b holds each id once and equals the undisturbed stream's."""
    pool, _, ids, _ = tiny_pool
    marker, victim = tmp_path / "killed-pid", str(ids[150])

    class DiesOnce(VAALScorer):
        def __call__(self, batch):
            if victim in batch["id"] and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(pool)}
    cfg = ScoringConfig(batch_size=16, num_actors=2)
    calm = stream_top_k(read_pool(pool), ScorerSpec(VAALScorer, kwargs), 40, cfg)
    hit = stream_top_k(read_pool(pool), ScorerSpec(DiesOnce, kwargs), 40, cfg)
    assert marker.exists() and not psutil.pid_exists(int(marker.read_text()))
    assert len(set(hit.ids)) == 40
    np.testing.assert_array_equal(hit.ids, calm.ids)
    np.testing.assert_array_equal(hit.scores, calm.scores)


def test_a_batch_that_kills_its_actor_every_time_fails_the_stream(ray_local, tmp_path, tiny_pool):
    """A poison input that crashes the process on every try ends the stream after ``batch_retries``
    rescoring attempts, instead of restarting actors forever."""
    pool, _, ids, _ = tiny_pool
    attempts, victim = tmp_path / "attempts", str(ids[10])
    attempts.mkdir()

    class AlwaysDies(VAALScorer):
        def __call__(self, batch):
            if victim in batch["id"]:
                (attempts / str(os.getpid())).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(pool)}
    with pytest.raises(ScoringFailedError, match="died on the same batch 3 times"):
        stream_top_k(read_pool(pool), ScorerSpec(AlwaysDies, kwargs), 5, ScoringConfig(batch_size=16, num_actors=1,
                                                                                       batch_retries=2))
    assert len(list(attempts.iterdir())) == 3          # the first try and 2 retries, each in a new process


def test_an_unreachable_actor_while_every_node_answers_is_no_lost_node(ray_local):
    """Ray gives an actor process that died on a live node (the poison input above) the ActorUnavailableError a lost
    node's actors give. Every node answering a task tells them apart at once: without it the stream's error waited
    NODE_DEATH_SECONDS for a node death that never came."""
    start = time.monotonic()
    assert stream._lost_nodes(alive_nodes(), ray.exceptions.ActorUnavailableError("unreachable", None)) == ""
    assert time.monotonic() - start < stream.NODE_DEATH_SECONDS       # the wait alone would take all of it


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_scorer_that_refuses_to_start_is_named_not_called_an_actor_death(ray_local, tmp_path, tiny_pool):
    """A scorer asked for a GPU where torch has no CUDA raises InputError in its actor's constructor; the
    actor dies, and the stream stops with that error, not ScoringFailedError's guess about a batch."""
    pool = tiny_pool[0]
    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(pool), "use_gpu": True}
    with pytest.raises(InputError, match=r"use_gpu \(--use-gpu\) was asked, but torch in this scoring actor"):
        stream_top_k(read_pool(pool), ScorerSpec(VAALScorer, kwargs), 5, ScoringConfig(batch_size=16, num_actors=1))


@pytest.mark.parametrize("stage", ["scoring", "writing run.json"])
def test_a_crash_leaves_no_round_and_a_rerun_completes_without_retraining(ray_local, tmp_path, tiny_pool,
                                                                           monkeypatch, stage):
    """Crash after training: no run.json (the round's commit mark) is left, and the rerun resumes from
    the finished checkpoint instead of training again, then writes the whole round."""
    import vaal_dist.round as round_module
    from vaal_dist.strategies.base import TopKStrategy

    pool, labeled = tiny_pool[:2]
    cfg = round_config(pool, labeled, tmp_path / "out")

    def crash(*args, **kwargs):
        raise RuntimeError(f"injected crash while {stage}")

    if stage == "scoring":
        monkeypatch.setattr(TopKStrategy, "select", crash)
    else:
        real_write_json = round_module.write_json
        monkeypatch.setattr(round_module, "write_json", lambda uri, obj: (
            crash() if uri.endswith("run.json") else real_write_json(uri, obj)))
    with pytest.raises(RuntimeError, match="injected crash"):
        run_round(cfg)
    assert not (tmp_path / "out" / "run.json").exists()
    assert (tmp_path / "out" / "selection.parquet").exists() == (stage == "writing run.json")
    monkeypatch.undo()
    result = run_round(cfg)
    assert result.record["train"]["vaal"]["last_epoch"]["resumed_from_epoch"] == cfg.vaal.epochs    # nothing retrained
    selection = read_selection(tmp_path / "out")
    assert len(selection["id"]) == cfg.budget and selection["rank"] == list(range(1, cfg.budget + 1))
