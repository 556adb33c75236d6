"""A round on several Ray nodes (separate raylets on 127.0.0.1, see conftest's loopback_cluster): the same
selection as on one node; scoring that cannot hang on nodes too small for an actor and a read together;
nodes and DDP workers killed for real mid-run, and the selection of the undisturbed run all the same."""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.train
import torch

import vaal_dist.round_inputs as round_inputs
import vaal_dist.strategies.vaal as vaal_strategy
from conftest import CALM_EPOCHS, assert_same_top_k, calm_config, f32_noise, loopback_cluster, make_raw_pool, \
    node_of, read_selection, round_config, s3_uri, vaal_checkpoint, vaal_trained_as
from vaal_dist import cli
from vaal_dist.config import RoundConfig, ScoringConfig, preset
from vaal_dist.errors import InputError, ScoringFailedError
from vaal_dist.pool.dataset import read_pool
from vaal_dist.placement import READ_TASK_CPUS, Demand, cpu_actor_layout, shared_storage_problem, shortfall
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.storage import join, resolve
from vaal_dist.round import run_round
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import stream_top_k
from vaal_dist.strategies.vaal import VAALScorer
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, save_checkpoint, train_loop_per_worker


# --- scoring's actor layout, by arithmetic ------------------------------------------------------------------

def _placements(actors: int, node_cpus: list[float], each: float):
    """Every way Ray could place ``actors`` actors of ``each`` CPUs on nodes of ``node_cpus`` (counts per
    node), each node holding what fits."""
    for counts in itertools.product(*(range(int(c // each) + 1) for c in node_cpus)):
        if sum(counts) == actors:
            yield counts


def _some_node_reads(counts, node_cpus, each) -> bool:
    return any(c - n * each >= READ_TASK_CPUS for n, c in zip(counts, node_cpus))


def test_no_placement_of_the_scoring_actors_leaves_the_reads_without_a_node():
    """Whichever nodes Ray puts the actors on, some node keeps a read task's CPU; and one actor more (up to
    ``wanted``, by default one per CPU) could be placed so that none does: the layout gives up no more
    actors than it must. Every placement is enumerated, for clusters from one to three nodes."""
    clusters = [[2], [4], [16], [1], [1, 1, 1], [0, 1, 1], [0, 2, 2], [1, 2], [3, 1.5], [0.5, 1, 4], [1.5, 1.5]]
    for node_cpus, each, wanted in itertools.product(clusters, [0.25, 0.5, 1.0, 1.5], [None, 1, 3, 8]):
        case = f"nodes {node_cpus}, {each} CPU per actor, {wanted} wanted"
        actors, cpus = cpu_actor_layout(node_cpus, each, wanted)
        if cpus == 0:      # not one actor fits beside a read anywhere: one actor shares a node's cores
            assert actors == 1, case
            assert not any(_some_node_reads(p, node_cpus, each) for p in _placements(1, node_cpus, each)), case
            continue
        assert cpus == each and actors >= 1, case
        assert all(_some_node_reads(p, node_cpus, each) for p in _placements(actors, node_cpus, each)), case
        assert any(_placements(actors, node_cpus, each)), case                # and Ray can place them all
        if actors < (wanted or int(sum(node_cpus))):
            more = list(_placements(actors + 1, node_cpus, each))
            assert not more or not all(_some_node_reads(p, node_cpus, each) for p in more), case


def test_the_default_layout_is_unchanged_where_it_never_hung_and_shrinks_where_it_did():
    assert cpu_actor_layout([2], 0.5, None) == (2, 0.5)              # the one-node default: one per CPU
    assert cpu_actor_layout([4, 4], 0.5, None) == (8, 0.5)
    assert cpu_actor_layout([1, 1, 1], 0.5, None) == (2, 0.5)        # issue 20: 3 actors hung here
    assert cpu_actor_layout([1, 1, 1], 0.5, 3) == (2, 0.5)           # asked for, too
    assert cpu_actor_layout([1], 0.5, None) == (1, 0.0)              # no room beside a read: share the core
    assert cpu_actor_layout([0], 0.5, None) == (1, 0.5)              # no CPU yet: ask, an autoscaler adds


# --- room for workers and actors, by arithmetic ----------------------------------------------------------------

def test_a_shortfall_names_what_is_asked_and_what_the_nodes_have():
    two_workers = Demand("training", 2, "worker", {"CPU": 1.0})
    assert shortfall(two_workers, [{"CPU": 1.0}]) == \
        "training needs 2 workers × 1 CPU, the cluster has 1 CPU free on 1 alive node (room for 1)"
    assert shortfall(two_workers, [{"CPU": 1.0}, {"CPU": 1.0}]) is None
    assert shortfall(two_workers, [{"CPU": 2.0}]) is None
    # Enough CPUs in all, but on no one node: room is counted per node.
    assert shortfall(Demand("training", 1, "worker", {"CPU": 1.0}), [{"CPU": 0.5}, {"CPU": 0.5, "GPU": 1.0}]) == \
        "training needs 1 worker × 1 CPU, the cluster has 1 CPU free on 2 alive nodes (room for 0)"
    gpu_workers = Demand("training", 2, "worker", {"CPU": 0.5, "GPU": 1.0})
    assert shortfall(gpu_workers, [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0}]) == \
        "training needs 2 workers × 0.5 CPU + 1 GPU, the cluster has 32 CPU + 1 GPU free on 2 alive nodes (room for 1)"
    assert shortfall(Demand("scoring", 1, "actor", {"GPU": 1.0}), [{"CPU": 2.0}], free=False) == \
        "scoring needs 1 actor × 1 GPU, the cluster has 0 GPU on 1 alive node (room for 0)"
    # Exact in Ray's 1/10,000ths: 0.3 // 0.1 is 2.0 in floats, and three 0.1-CPU actors do fit in 0.3 CPU.
    assert shortfall(Demand("scoring", 3, "actor", {"CPU": 0.1}), [{"CPU": 0.3}]) is None
    assert shortfall(Demand("scoring", 4, "actor", {"CPU": 0.1}), [{"CPU": 0.3}]) is not None
    assert shortfall(Demand("scoring", 5, "actor", {}), [{"CPU": 0.0}]) is None     # asks nothing: always fits


# --- on a cluster -------------------------------------------------------------------------------------------

@contextmanager
def deadline(seconds: float, what: str):
    """Raise TimeoutError in this (the main) thread if the block runs past ``seconds``: a hang fails the test."""
    def expire(*_):
        raise TimeoutError(f"{what} did not finish in {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _every_row(pool: str) -> dict[str, np.ndarray]:
    """The whole pool as one numpy batch (id, image)."""
    table = pa.concat_tables(pq.read_table(shard, columns=["id", "image"])
                             for shard in sorted(Path(pool).glob("*.parquet")))
    return {"id": np.array(table.column("id").to_pylist()),
            "image": np.array(table.column("image").to_pylist(), dtype=object)}


@pytest.mark.slow
def test_three_one_cpu_nodes_score_the_pool_without_hanging(tmp_path):
    """Issue 20: on three 1-CPU nodes one 0.5-CPU actor per CPU left every node 0.5 CPU, none the 1 CPU a
    shard read asks, and the stream waited forever with no error. Now two actors score it (the layout above),
    and the top-b is the in-memory one."""
    pool = str(tmp_path / "pool")
    make_raw_pool(pool, 256)
    spec = ScorerSpec(VAALScorer, {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(pool)})
    with loopback_cluster(1, 1, 1), deadline(300, "scoring on three 1-CPU nodes"):
        got = stream_top_k(read_pool(pool), spec, 20, ScoringConfig(batch_size=32))
    rows = _every_row(pool)
    scores = spec.build()(rows)
    assert_same_top_k(got, rows["id"], scores, f32_noise(scores), 20)


def _scorer_waiting_for_its_node_to_die(marker: Path, victim: str) -> type:
    """VAAL's scorer, but the first actor to meet ``victim`` writes its node's id to ``marker`` and waits for
    the test to kill that node; a retry of that batch, on another node, scores it as usual. (A class made
    here travels to the actors by value: nothing needs to import this test module there.)"""

    class WaitsForItsNodeToDie(VAALScorer):
        def __call__(self, batch):
            if victim in batch["id"]:
                try:
                    with open(marker, "x") as f:
                        f.write(ray.get_runtime_context().get_node_id())
                except FileExistsError:
                    pass                                # the retry, after the node died
                else:
                    time.sleep(600)                     # killed with its node long before
            return super().__call__(batch)

    return WaitsForItsNodeToDie


@contextmanager
def _node_killed_when_marked(cluster, marker: Path, timeout: float = 600):
    """While the block runs, a thread SIGKILLs every process of the node whose id ``marker`` comes to hold
    (Cluster.remove_node without grace: its raylet and its workers, as when a machine is lost).
    Yields the list that receives the killed node's id."""
    killed: list[str] = []

    def kill() -> None:
        deadline_at = time.monotonic() + timeout
        while time.monotonic() < deadline_at and not killed:
            node_id = marker.read_text() if marker.exists() else ""
            if len(node_id) == 56:                      # the whole hex id is written
                cluster.remove_node(node_of(cluster, node_id), allow_graceful=False)
                killed.append(node_id)
            time.sleep(0.1)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        yield killed
    finally:
        killer.join(timeout=timeout)


@pytest.mark.slow
def test_a_node_lost_while_scoring_changes_nothing_and_one_lost_for_good_is_named(tmp_path):
    """Head (no CPU) and two 2-CPU worker nodes, one scoring actor on each. The node of the actor scoring
    ``victim`` dies mid-batch: its actor restarts on the other node, the lost blocks are read again, and the
    top-b is the undisturbed one, each id once. With no retries left the stream ends with an error that
    says a node was lost, not that a batch keeps killing its actor."""
    pool = str(tmp_path / "pool")
    ids = make_raw_pool(pool, 256)
    kwargs = {"checkpoint": vaal_checkpoint(tmp_path / "ckpt"), "meta": read_pool_meta(pool)}
    cfg = ScoringConfig(batch_size=16, num_actors=2)
    with loopback_cluster(0, 2, 2) as cluster, deadline(600, "scoring while a node dies"):
        calm = stream_top_k(read_pool(pool), ScorerSpec(VAALScorer, kwargs), 40, cfg)
        marker = tmp_path / "killed-node"
        with _node_killed_when_marked(cluster, marker) as killed:
            hit = stream_top_k(read_pool(pool), ScorerSpec(_scorer_waiting_for_its_node_to_die(marker, str(ids[150])),
                                                            kwargs), 40, cfg)
        assert killed and killed[0] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        np.testing.assert_array_equal(hit.ids, calm.ids)
        np.testing.assert_array_equal(hit.scores, calm.scores)

        cluster.add_node(num_cpus=2)
        marker = tmp_path / "killed-for-good"
        no_retries = ScoringConfig(batch_size=16, num_actors=2, batch_retries=0)
        with _node_killed_when_marked(cluster, marker) as killed, \
                pytest.raises(ScoringFailedError, match=r"scoring lost node \w{8} \(127\.0\.0\.1\) while it ran"):
            stream_top_k(read_pool(pool), ScorerSpec(_scorer_waiting_for_its_node_to_die(marker, str(ids[150])),
                                                     kwargs), 40, no_retries)
        assert killed


# --- whole rounds: on three nodes, and with a node or a DDP worker killed mid-training ---------------------

# Every round below is conftest's calm_config on two DDP workers, compared with calm_round(2).
FAULT_AFTER_EPOCH = 2      # its checkpoint is reported before the fault: a resumed run starts at epoch 1 or 2


def _vaal_loop_calling(after_epoch) -> Callable[[dict], None]:
    """VAAL's training loop, calling ``after_epoch(epoch, rank)`` on each worker once it has reported that
    epoch (rank 0 with its checkpoint). Made here, it reaches the workers by value: nothing needs to import
    this test module there."""
    def loop(config: dict) -> None:
        import vaal_dist.train.common as common

        report = common.report

        def reported(metrics, write=None):
            report(metrics, write)
            after_epoch(metrics["epoch"], ray.train.get_context().get_world_rank())

        common.report = reported
        train_loop_per_worker(config)
    return loop


@pytest.mark.slow
def test_one_of_two_ddp_workers_killed_mid_run_resumes_and_selects_as_undisturbed(calm_round, calm_pool,
                                                                                 tmp_path, monkeypatch):
    """Rank 1 SIGKILLs its own process once it has reported epoch 2: Ray Train restarts both workers from the
    latest checkpoint, and the round selects what the undisturbed one does."""
    calm = calm_round(2)
    pool, labeled = calm_pool[:2]
    marker = tmp_path / "killed-rank-1"

    def kill_rank_1_once(epoch: int, rank: int) -> None:
        if epoch == FAULT_AFTER_EPOCH and rank == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(round_inputs, "train_loop_per_worker", _vaal_loop_calling(kill_rank_1_once))
    record = run_round(calm_config(pool, labeled, tmp_path / "out", 2)).record
    assert marker.exists() and not psutil.pid_exists(int(marker.read_text()))
    last = record["train"]["vaal"]["last_epoch"]
    assert last["epoch"] == CALM_EPOCHS and 1 <= last["resumed_from_epoch"] <= FAULT_AFTER_EPOCH
    assert read_selection(tmp_path / "out") == read_selection(calm.out)


@pytest.mark.slow
def test_a_node_lost_while_training_resumes_on_the_nodes_left_and_selects_as_undisturbed(calm_round, calm_pool,
                                                                                        tmp_path, monkeypatch):
    """Three 1-CPU nodes; each DDP worker asks a whole CPU, so the two train on two different nodes. Once
    epoch 2 is reported, a worker on a node other than the head (the driver's) writes its node's id and
    waits; that node is killed (its raylet and every process on it). Ray Train restarts both workers on the
    two nodes left, from the latest checkpoint; scoring runs there too (one actor: two would leave no node a
    read's CPU), and the selection is the undisturbed one-node round's."""
    calm = calm_round(2)         # in the session's Ray, before any cluster of this test's
    pool, labeled = calm_pool[:2]
    marker = tmp_path / "killed-node"
    with loopback_cluster(1, 1, 1) as cluster:
        head = cluster.head_node.node_id

        def wait_for_the_node_to_die(epoch: int, rank: int) -> None:
            node = ray.get_runtime_context().get_node_id()
            if epoch != FAULT_AFTER_EPOCH or node == head:
                return
            try:
                with open(marker, "x") as f:
                    f.write(node)
            except FileExistsError:
                return                          # the other worker's node, or a run resumed after the kill
            time.sleep(600)                     # killed with its node long before

        monkeypatch.setattr(round_inputs, "train_loop_per_worker", _vaal_loop_calling(wait_for_the_node_to_die))
        with _node_killed_when_marked(cluster, marker) as killed, deadline(600, "the round that lost a node"):
            record = run_round(calm_config(pool, labeled, tmp_path / "out", 2, cpus_per_worker=1.0)).record
        assert killed and killed[0] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    last = record["train"]["vaal"]["last_epoch"]
    assert last["epoch"] == CALM_EPOCHS and 1 <= last["resumed_from_epoch"] <= FAULT_AFTER_EPOCH
    assert read_selection(tmp_path / "out") == read_selection(calm.out)


@pytest.mark.slow
@pytest.mark.timeout(480, method="thread")     # Ray Train's fit waits in a ray.get that no signal interrupts
def test_a_node_lost_for_good_while_training_ends_the_round_naming_the_shortfall(calm_pool, tmp_path,
                                                                                monkeypatch, caplog, capsys):
    """Issue 29: a head with no CPU and two 1-CPU nodes, `--workers 2 --cpus-per-worker 1`; once epoch 2 is
    reported, one worker's node is killed and none replaces it. Ray Train's restart asks 2 CPUs of a cluster
    with 1: the shortfall is logged once while it waits, and after --placement-timeout the command ends with
    one error line naming it (Ray Train alone asks again every 60 s, forever)."""
    pool, labeled = calm_pool[:2]
    marker = tmp_path / "killed-node"

    def wait_for_the_node_to_die(epoch: int, rank: int) -> None:
        if epoch != FAULT_AFTER_EPOCH:
            return
        try:
            with open(marker, "x") as f:
                f.write(ray.get_runtime_context().get_node_id())
        except FileExistsError:
            return
        time.sleep(600)                         # killed with its node long before

    monkeypatch.setattr(round_inputs, "train_loop_per_worker", _vaal_loop_calling(wait_for_the_node_to_die))
    out = tmp_path / "out"
    argv = ["round", "--pool", pool, "--labeled", labeled, "--budget", "20", "--out", str(out), "--preset", "cpu",
            "--epochs", str(CALM_EPOCHS), "--batch-size", "32", "--workers", "2", "--cpus-per-worker", "1",
            "--placement-timeout", "10"]
    # The lost node counts as alive until the cluster declares it dead (missed health checks): 2 or 3 nodes.
    shortfall_line = (r"training needs 2 workers × 1 CPU, the cluster has 1 CPU free on [23] alive nodes "
                      r"\(room for 1\)")
    with loopback_cluster(0, 1, 1) as cluster:
        with _node_killed_when_marked(cluster, marker) as killed:
            code = cli.main(argv)
        assert killed
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("vaal-dist: error: ")]
    assert len(errors) == 1 and re.fullmatch(
        rf"vaal-dist: error: {shortfall_line}; waited 10 s \(--placement-timeout\) for resources or nodes to join\. "
        r"Add nodes, ask less \(--workers, --cpus-per-worker\), or where an autoscaler adds nodes wait longer "
        r"\(0: as long as it takes\)", errors[0])
    assert "Traceback" not in err
    waiting = [r.getMessage() for r in caplog.records if r.name == "vaal_dist.placement"]
    assert len(waiting) == 1 and re.fullmatch(
        rf"{shortfall_line}; waiting for up to 10 s \(--placement-timeout\) for resources or nodes to join", waiting[0])
    assert not (out / "selection.parquet").exists() and not (out / "run.json").exists()
    assert list((out / "train" / "vaal").glob("checkpoint_*"))          # kept: a rerun resumes from them


def _scorer_recording_its_node(folder: Path) -> type:
    """VAAL's scorer, which touches ``folder``/<its node's id> when an actor builds it."""

    class RecordsItsNode(VAALScorer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            (folder / ray.get_runtime_context().get_node_id()).touch()

    return RecordsItsNode


@pytest.mark.slow
def test_a_round_on_three_nodes_with_its_files_on_s3_selects_what_one_node_selects(calm_round, calm_pool,
                                                                                  s3_endpoint, tmp_path, monkeypatch):
    """A head that runs no task and two 2-CPU worker nodes, token auth on (a client with a wrong token is
    refused); pool, labeled set and --out on the loopback S3 server, the storage every node shares. Each DDP
    worker asks a whole node, so the two train on both worker nodes; the two scoring actors run one on each. The
    selection is the one-node round's."""
    calm = calm_round(2)         # in the session's Ray, before any cluster of this test's
    labeled_ids = calm_pool[3]
    boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").create_bucket(Bucket="bucket-1")
    pool, labeled, out = (s3_uri(s3_endpoint, key) for key in ("pool", "labeled.parquet", "out"))
    make_raw_pool(pool, 256)                              # the same seeded images as the local pool
    write_manifest(labeled, labeled_ids)
    trained_on, scored_on = tmp_path / "trained-on", tmp_path / "scored-on"
    trained_on.mkdir(), scored_on.mkdir()

    def note_the_node(epoch: int, rank: int) -> None:
        (trained_on / ray.get_runtime_context().get_node_id()).touch()

    monkeypatch.setattr(round_inputs, "train_loop_per_worker", _vaal_loop_calling(note_the_node))
    monkeypatch.setattr(vaal_strategy, "VAALScorer", _scorer_recording_its_node(scored_on))
    with loopback_cluster(0, 2, 2) as cluster:
        assert os.environ["RAY_AUTH_MODE"] == "token"
        run_round(calm_config(pool, labeled, out, 2, cpus_per_worker=2.0))
        workers = {n.node_id for n in cluster.worker_nodes}
        # one try: a refused client tries again once a second for 20 s by default, all refused alike
        wrong_token = {"RAY_AUTH_TOKEN": "0" * 32, "RAY_gcs_server_port_wait_time_s": "1"}
        stranger = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r})"],
                                  env={**os.environ, **wrong_token}, capture_output=True, text=True)
    assert stranger.returncode != 0 and "InvalidAuthToken" in stranger.stderr       # a wrong token is refused
    assert {p.name for p in trained_on.iterdir()} == workers
    assert {p.name for p in scored_on.iterdir()} == workers
    fs, path = resolve(join(out, "selection.parquet"))
    assert pq.read_table(path, filesystem=fs).to_pydict() == read_selection(calm.out)


# --- storage every node must share ----------------------------------------------------------------------------

@pytest.mark.slow
def test_local_paths_on_several_nodes_are_used_where_every_node_sees_them_and_refused_where_not(tmp_path,
                                                                                               monkeypatch):
    """On two nodes of one machine a local pool and --out are the same files everywhere: accepted, and the
    check leaves no --out behind. /proc/self/cwd/... names each process's own working folder: the driver's is
    moved away from the one every node's processes started in, so each node sees other files there, as
    nodes without a shared mount would, and both paths are refused, naming the nodes, and a round given them
    stops before it writes anything. Object storage is one store for every node: accepted without a look."""
    ids = make_raw_pool(tmp_path / "pool", 16, shards=2)
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:2])

    def config(pool: str, out: str) -> RoundConfig:
        return RoundConfig(pool=pool, labeled=str(tmp_path / "labeled.parquet"), out=out, budget=1,
                           strategy="random")

    with loopback_cluster(0, 1):
        nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
        assert shared_storage_problem(config(str(tmp_path / "pool"), str(tmp_path / "new" / "out"))) is None
        assert not (tmp_path / "new").exists()
        monkeypatch.chdir(tmp_path)
        problem = shared_storage_problem(config("/proc/self/cwd/pool", "/proc/self/cwd/out"))
        assert problem.startswith("this Ray cluster has 2 nodes and every one of them must see the same pool and "
                                  "--out, but the pool '/proc/self/cwd/pool' is not the files the driver lists on ")
        assert ". And --out '/proc/self/cwd/out' is not the folder the driver writes on " in problem
        assert {name for name in nodes if problem.count(f"node {name} (127.0.0.1): ") == 2} == nodes
        assert not (tmp_path / "out").exists()
        with pytest.raises(InputError) as refused:
            run_round(config("/proc/self/cwd/pool", "/proc/self/cwd/out"))
        assert str(refused.value).startswith(problem.split(" on ")[0])
        assert not (tmp_path / "out").exists()
        assert shared_storage_problem(config("s3://bucket/pool", "gs://bucket/out")) is None


# --- object-store pressure ----------------------------------------------------------------------------------

def _small_vaal_checkpoint(directory: Path, channels: int) -> ray.train.Checkpoint:
    """An untrained VAAL of 8-channel convs: scoring 32k images with it takes seconds; the data is what is
    tested here, not the model."""
    cfg = preset("cpu", vaal={"channels": (8, 8, 8, 8), "latent_dim": 8, "disc_hidden": 16}).vaal
    torch.manual_seed(0)
    vae, disc = build_models(cfg, channels)
    opt = torch.optim.Adam(vae.parameters())
    directory.mkdir()
    save_checkpoint(str(directory / CHECKPOINT_FILE), vae, disc, opt, opt, 1, cfg, channels)
    return ray.train.Checkpoint.from_directory(str(directory))


@pytest.mark.slow
def test_a_pool_larger_than_the_object_store_selects_what_a_roomy_store_selects(ray_local, tmp_path, monkeypatch):
    """A 96 MiB pool (32,768 random 32x32 RGB images) scored on a node whose object store holds 75 MiB, the
    least Ray allows: the stream keeps in flight only what the store can hold (Ray Data holds the reads back at
    its capacity), and the round selects what the same round selects on the session's Ray, whose store holds
    the pool many times over.
    Training is replaced by a checkpoint: it reads the pool's shards itself, not through the object store."""
    ids = make_raw_pool(tmp_path / "pool", 32768, channels=3, shards=8)
    write_manifest(str(tmp_path / "labeled.parquet"), ids[np.random.default_rng(1).choice(len(ids), 32, replace=False)])
    pool_bytes = 32768 * 32 * 32 * 3
    vaal_trained_as(monkeypatch, _small_vaal_checkpoint(tmp_path / "ckpt", channels=3))

    def config(out: str) -> RoundConfig:
        return round_config(str(tmp_path / "pool"), str(tmp_path / "labeled.parquet"), out,
                            scoring=ScoringConfig(batch_size=512, num_actors=2))

    assert ray.cluster_resources()["object_store_memory"] > 4 * pool_bytes
    run_round(config(str(tmp_path / "roomy")))
    with loopback_cluster(2, object_store_mib=75):
        assert ray.cluster_resources()["object_store_memory"] < pool_bytes
        run_round(config(str(tmp_path / "pressed")))
    assert read_selection(tmp_path / "pressed") == read_selection(tmp_path / "roomy")
