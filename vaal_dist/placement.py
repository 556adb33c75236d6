"""Where a round's work can run on the cluster: its files where every node sees them, and its workers and actors
on resources the cluster has.

Every node may read the pool (Ray Data's read tasks, VAAL's training workers) and Ray Train's workers write
their checkpoints under --out from whichever node they run on. An object-store URI (s3://, gs://, ...) names
the same objects from every node. A local path names the files of the machine that opens it: the same files
only on a mount that every node shares (NFS, a cluster file system) or on nodes of one machine. So with
several nodes a local pool or --out is checked, not assumed: every node must list the pool as the driver does
(pool.json and each shard's name, size and modification time) and read a token the driver writes under --out
and write its own beside it. A path that fails is refused before anything trains, where it would otherwise fail a worker
mid-run or scatter checkpoints over the nodes' disks (a resumed run would then not find them).

Ray waits for the resources that training workers and scoring actors ask, without a word and for as long as it
takes: right where an autoscaler adds nodes for them, a hang where none will come (a node lost for good, a GPU
asked of a CPU cluster). A ``Demand`` that does not fit the free resources is named once in the log while Ray
waits, and after ``--placement-timeout`` seconds (0: wait forever) the round stops with a ``PlacementError``
naming the shortfall.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import threading
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs
import ray
from ray.util.placement_group import placement_group_table
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vaal_dist.config import RoundConfig, ScoringConfig
from vaal_dist.errors import VaalDistError
from vaal_dist.pool.io import pool_state
from vaal_dist.pool.storage import resolve

log = logging.getLogger(__name__)

ANSWER_SECONDS = 120        # how long the check waits for a node's answer (a task that starts a worker there)
_PROBE = ".shared-storage-check-"


def shared_storage_problem(cfg: RoundConfig) -> str | None:
    """Why the pool or --out cannot be used on this cluster, as a message to raise; None when they can
    (one node, object storage, or local paths every alive node was seen to share)."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return None
    problems = []
    if is_local(cfg.pool):
        problems += _pool_problems(cfg.pool, nodes)
    if is_local(cfg.out):
        problems += _out_problems(cfg.out, nodes)
    if not problems:
        return None
    return (f"this Ray cluster has {len(nodes)} nodes and every one of them must see the same pool and --out, "
            f"but {'. And '.join(problems)}. Put them on storage every node shares: object storage (s3://..., "
            f"gs://...) or a path mounted on every node")


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a path on the machine that opens it (no scheme, or file://)."""
    scheme, sep, _ = uri.partition("://")
    return not sep or scheme.lower() == "file"


def _pool_problems(pool: str, nodes: dict[str, str]) -> list[str]:
    path = resolve(pool)[1]                  # a relative path is the driver's: nodes are sent it absolute
    expected = pool_listing(path)
    differing = {n: "other files" if got.startswith("sha256:") else got
                 for n, got in _on_every_node(pool_listing, nodes, path).items() if got != expected}
    if not differing:
        return []
    return [f"the pool {pool!r} is not the files the driver lists on {_named(differing, nodes)}"]


def pool_listing(path: str) -> str:
    """'sha256:' and a digest of what ``path`` holds for the pool (``pool_state``: pool.json and each shard's
    path, size and modification time; no pixels read); or why it could not be listed."""
    try:
        state = pool_state(path)
    except Exception as e:                    # on a node: reported as its answer
        return f"cannot be listed: {e}"
    return "sha256:" + hashlib.sha256(state.encode()).hexdigest()


def _out_problems(out: str, nodes: dict[str, str]) -> list[str]:
    fs, path = resolve(out)
    created = _first_missing(path)
    token = uuid.uuid4().hex
    probe = posixpath.join(path, _PROBE + token)
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(token.encode())
        answers = _on_every_node(answer_probe, nodes, probe, token)
        unseen = {n: a for n, a in answers.items()
                  if a != "ok" or fs.get_file_info(f"{probe}.{n}").type != pafs.FileType.File}
    finally:
        if created and os.path.exists(created):
            fs.delete_dir(created)            # the check leaves no --out that was not there before it
        else:
            for info in fs.get_file_info(pafs.FileSelector(path)):
                if info.base_name.startswith(_PROBE + token):
                    fs.delete_file(info.path)
    if not unseen:
        return []
    return [f"--out {out!r} is not the folder the driver writes on {_named(unseen, nodes)}"]


def answer_probe(probe: str, token: str) -> str:
    """On one node: 'ok' if ``probe`` holds ``token`` and ``probe.<node id>`` could be written, else why not."""
    node = ray.get_runtime_context().get_node_id()
    try:
        with open(probe) as f:
            if f.read() != token:
                return "another token there"
        with open(f"{probe}.{node}", "w") as f:
            f.write(token)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror}"
    return "ok"


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, posixpath.dirname(path)
    return missing


def _on_every_node(fn, nodes: dict[str, str], *args, timeout: float = ANSWER_SECONDS) -> dict[str, str]:
    """{node id: ``fn(*args)`` run on that node, or why there is no answer from it}."""
    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {n: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(*args)
            for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    answers = {}
    for node, ref in refs.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            answers[node] = f"no answer in {timeout:g} s"
            continue
        try:
            answers[node] = ray.get(ref)
        except ray.exceptions.RayError as e:
            answers[node] = f"the check failed there: {type(e).__name__}"
    return answers


def all_answer(nodes: dict[str, str], timeout: float) -> bool:
    """Whether a task runs on each of ``nodes`` and returns within ``timeout`` seconds: then none of them is lost,
    whatever the cluster has declared so far (it declares a node dead only after missed health checks)."""
    return all(answer == _HERE for answer in _on_every_node(_here, nodes, timeout=timeout).values())


_HERE = "here"


def _here() -> str:
    return _HERE


def _named(answers: dict[str, str], nodes: dict[str, str]) -> str:
    """'node 1a2b3c4d (10.0.0.7): why' for each node, '; '-joined."""
    return "; ".join(f"node {n[:8]} ({nodes[n]}): {why}" for n, why in answers.items())


# --- workers and actors the cluster has no room for ------------------------------------------------------------

RESOURCE_UNITS = 10_000     # Ray counts resources in 1/10,000ths: what fits is exact in them
_WAITING = ("PENDING", "RESCHEDULING")


class PlacementError(VaalDistError, RuntimeError):
    """Training workers or scoring actors that the cluster could not place within --placement-timeout."""


@dataclass(frozen=True)
class Demand:
    """``count`` alike ``unit``s of a round's ``stage`` (2 training workers, ...), each asking ``each`` resources
    of one node ({"CPU": 1.0}; resources asked as 0 are left out)."""

    stage: str
    count: int
    unit: str
    each: dict[str, float]


def shortfall(demand: Demand, nodes: list[dict[str, float]], free: bool = True) -> str | None:
    """Why ``demand`` cannot be placed on ``nodes`` (the resources of each alive node: free ones, or all of
    them), or None if it can: 'training needs 2 workers × 1 CPU, the cluster has 1 CPU free on 1 alive node
    (room for 1)'. Alike units fit independently on each node, so room is counted node by node, exactly."""
    room = sum(_room(demand.each, node) for node in nodes)
    if room >= demand.count:
        return None
    totals = {r: sum(node.get(r, 0.0) for node in nodes) for r in demand.each}
    return (f"{demand.stage} needs {_count(demand.count, demand.unit)} × {_amounts(demand.each)}, the cluster has "
            f"{_amounts(totals)}{' free' if free else ''} on {_count(len(nodes), 'alive node')} (room for {room})")


def placement_error(demand: Demand, nodes: list[dict[str, float]], free: bool, timeout: float,
                    flags: str) -> PlacementError:
    """The error that ends a round whose ``demand`` found no room on ``nodes`` in ``timeout`` seconds; ``flags``:
    those that ask less."""
    missing = shortfall(demand, nodes, free) or f"{demand.stage}'s {_count(demand.count, demand.unit)} were not placed"
    return PlacementError(f"{missing}; waited {timeout:g} s (--placement-timeout) for resources or nodes to join. "
                          f"Add nodes, ask less ({flags}), or where an autoscaler adds nodes wait longer (0: as long "
                          f"as it takes)")


def _room(each: dict[str, float], node: dict[str, float]) -> int:
    """How many units asking ``each`` fit on a node with ``node`` free."""
    asked = {r: round(amount * RESOURCE_UNITS) for r, amount in each.items()}
    fits = [round(node.get(r, 0.0) * RESOURCE_UNITS) // amount for r, amount in asked.items() if amount > 0]
    return min(fits) if fits else 1 << 62


def _amounts(resources: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {name}" for name, amount in resources.items())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def free_per_node() -> list[dict[str, float]]:
    """The free resources of each alive node (Ray's developer API: the public one sums them over the nodes,
    and a worker asks them of one node)."""
    from ray._private.state import available_resources_per_node

    return list(available_resources_per_node().values())


def total_per_node() -> list[dict[str, float]]:
    """All the resources of each alive node."""
    return [n["Resources"] for n in _alive()]


def alive_nodes() -> dict[str, str]:
    """{node id: address} of the cluster's alive nodes."""
    return {n["NodeID"]: n["NodeManagerAddress"] for n in _alive()}


def _alive() -> list[dict]:
    """Ray's record of each alive node (it keeps dead ones in ``ray.nodes()`` too)."""
    return [n for n in ray.nodes() if n["Alive"]]


# --- scoring actors on CPU nodes -------------------------------------------------------------------------------

READ_TASK_CPUS = 1.0


def actor_layout(cfg: ScoringConfig, use_gpu: bool) -> tuple[int, float]:
    """(actors, CPUs each actor asks). With GPUs: one per GPU asking no CPU; otherwise ``cpu_actor_layout``
    on the alive nodes' CPUs."""
    if use_gpu:
        return cfg.num_actors or max(1, int(ray.cluster_resources().get("GPU", 1))), 0.0
    node_cpus = [node.get("CPU", 0.0) for node in total_per_node()]
    actors, cpus = cpu_actor_layout(node_cpus, cfg.cpus_per_actor, cfg.num_actors)
    wanted = cfg.num_actors or int(sum(node_cpus))
    if actors < wanted or cpus != cfg.cpus_per_actor:
        log.warning("scoring with %d actor(s) asking %g CPU each, not %d asking %g: on nodes of %s CPUs more "
                    "could leave no node the %g CPU a shard read asks, and the stream would wait forever",
                    actors, cpus, wanted, cfg.cpus_per_actor, node_cpus, READ_TASK_CPUS)
    return actors, cpus


def cpu_actor_layout(node_cpus: list[float], cpus_per_actor: float, wanted: int | None) -> tuple[int, float]:
    """(actors, CPUs each) for scoring on CPU nodes of ``node_cpus``: ``wanted`` actors (None: one per CPU)
    asking ``cpus_per_actor`` each, or fewer if that many could leave no node the READ_TASK_CPUS a read
    task asks. The reads feed the actors, so that would hang the stream with no error (three 1-CPU nodes,
    one 0.5-CPU actor on each: 1.5 CPUs free in all, 0.5 on every node).

    Ray, not this function, places the actors (Ray Data spreads them), so the bound holds for any
    placement: node i keeps a read's CPU until it holds ``(cpus_i - READ) // each + 1`` actors, and fewer
    actors than those counts added up cannot fill every node. Where not even one actor fits beside a read
    (a lone 1-CPU node), one actor asks no CPU and shares the node's cores with the reads. A cluster with
    no CPU yet (an autoscaler's) gets ``wanted`` actors as asked: asking is what adds nodes.
    """
    cpus = [round(c * RESOURCE_UNITS) for c in node_cpus]
    each, read = round(cpus_per_actor * RESOURCE_UNITS), round(READ_TASK_CPUS * RESOURCE_UNITS)
    wanted = max(1, wanted or sum(cpus) // RESOURCE_UNITS)
    if not sum(cpus) or not each:
        return wanted, cpus_per_actor
    readers = [c for c in cpus if c >= read]
    fill = [(c - read) // each + 1 for c in readers]
    if any(f > c // each for f, c in zip(fill, readers)):     # a node that never fills: reads always fit
        safe = sum(c // each for c in cpus)
    else:
        safe = min(sum(c // each for c in cpus), sum(fill) - 1)
    if safe < 1:
        return 1, 0.0
    return min(wanted, safe), cpus_per_actor


def waiting_message(problem: str, timeout: float) -> str:
    """The log line of a placement that waits: what is missing and for how long it is awaited."""
    until = f"for up to {timeout:g} s" if timeout else "for as long as it takes"
    return f"{problem}; waiting {until} (--placement-timeout) for resources or nodes to join"


def log_if_unplaceable(demand: Demand, timeout: float, free: bool = True) -> None:
    """Log the shortfall if ``demand`` does not fit the alive nodes' free resources now (or all their
    resources: ``free=False``)."""
    problem = shortfall(demand, free_per_node() if free else total_per_node(), free)
    if problem:
        log.warning(waiting_message(problem, timeout))


@contextlib.contextmanager
def named_while_waiting(demand: Demand, timeout: float, poll_seconds: float = 1.0):
    """While the block runs, log the shortfall once when a placement group of ``demand``'s bundles waits for
    resources that the free ones cannot give: Ray Train asks its worker group as one placement group, at the
    start and again after a lost worker. Seen on two polls in a row: a restarted group may wait a moment for the
    resources its predecessor still holds."""
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.wait(poll_seconds):
            problem = _group_waiting(demand) and shortfall(demand, free_per_node())
            seen = seen + 1 if problem else 0
            if seen == 2:
                log.warning(waiting_message(problem, timeout))
                return

    watcher = threading.Thread(target=watch, name="placement-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _group_waiting(demand: Demand) -> bool:
    """Whether a placement group of ``demand.count`` bundles of ``demand.each`` is waiting to be placed."""
    for group in placement_group_table().values():
        bundles = [{r: a for r, a in b.items() if a} for b in group["bundles"].values()]
        if group["state"] in _WAITING and bundles == [demand.each] * demand.count:
            return True
    return False
