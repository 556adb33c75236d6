"""Streaming scoring: the pool flows through stateful Ray Data actors; the driver keeps the exact top-b.

A strategy's scorer (``scoring.spec``) is built once per actor (it loads the model there) and called on
batch dicts of numpy arrays; it returns one float per row, higher meaning "label this" (with, from a task
model, its class guess beside: ``spec.Guess``, carried with the top-b). ``BatchTopK``
wraps it so that each batch leaves the actor as its own top-b only, and ``RunningTopK`` folds those on
the driver; beside them go the rows entering the actor's sample of the scores (``RunningSample``, a bounded
uniform sample by a hash of the id), folded on the driver into the pool's score distribution.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn, TypeVar

import numpy as np
import ray
import ray.data

from vaal_dist.config import ScoringConfig
from vaal_dist.errors import DivergedModelError, InputError, ScoringFailedError, raise_if_input_error, \
    raise_if_remote
from vaal_dist.placement import Demand, actor_layout, alive_nodes, all_answer, log_if_unplaceable, \
    placement_error, total_per_node
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.ids import sample_priorities
from vaal_dist.scoring.topk import SAMPLE_SIZE, RunningSample, RunningTopK, Selection, top_rows

log = logging.getLogger(__name__)
T = TypeVar("T")
NO_GUESS = -1      # ``predicted`` of a row whose scorer gives no class guess


class _ScorerActor:
    """Builds the strategy's scorer once per Ray Data actor; ``amp``: run it under bfloat16 autocast.

    Each batch runs in the actor's one worker thread, so that a batch still running after ``timeout_s``
    (a decoder or model call that hangs) fails the stream instead of hanging it. ``stage`` names the
    stream in that error."""

    stage = ""

    def __init__(self, spec: ScorerSpec, threads: int | None = None, amp: bool = False,
                 timeout_s: float | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True     # fixed batch shapes: pick the fastest conv kernels once
        self.scorer = spec.build()
        self.amp, self.timeout_s = amp, timeout_s
        # torch's thread count is per thread under OpenMP: the worker thread sets it again
        self.worker = ThreadPoolExecutor(1, initializer=torch.set_num_threads if threads else None,
                                         initargs=(threads,) if threads else ())

    def precision(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def timed(self, work: Callable[[dict[str, np.ndarray]], T], batch: dict[str, np.ndarray]) -> T:
        """``work(batch)`` under the scorer's precision, in the worker thread; ScoringFailedError if it runs past
        ``timeout_s``. The thread cannot be stopped: the error fails the stream, whose actors Ray Data then ends."""
        future = self.worker.submit(self._under_precision, work, batch)
        try:
            # past TIMEOUT_MAX (~292 years) a wait overflows: that long is waiting for good
            return future.result(timeout=self.timeout_s if (self.timeout_s or 0) < threading.TIMEOUT_MAX else None)
        except TimeoutError:
            raise ScoringFailedError(
                f"the {self.stage} stage stalled: a batch of {len(batch['id'])} images starting with id "
                f"{str(batch['id'][0])!r} was not done after {self.timeout_s:g} s (--score-timeout); nothing was "
                f"selected. An image whose decoding hangs does this, or a model call that never returns; if "
                f"batches are just this slow, raise --score-timeout") from None

    def _under_precision(self, work, batch):
        with self.precision():        # autocast is per thread too
            return work(batch)


class BatchTopK(_ScorerActor):
    """Ray Data actor: score a batch with the strategy's scorer, emit the batch's top-k (id, score, top=True)
    and the rows that enter this actor's sample of the scores (sampled=True, with their priority)."""

    stage = "scoring"

    def __init__(self, spec: ScorerSpec, k: int, threads: int | None = None, amp: bool = False,
                 timeout_s: float | None = None, sample_size: int = SAMPLE_SIZE):
        super().__init__(spec, threads, amp, timeout_s)
        self.k = k
        self.sample = RunningSample(sample_size, fold_at=0)     # folds as soon as it is full: a tight threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        try:
            scored = _as_scored(self.timed(getattr(self.scorer, "scored", self.scorer), batch), len(ids))
        except InputError as e:   # a bad image: hand it to the driver, which raises it by name
            return _scored_rows(ids[:1], _as_scored(np.array([np.nan]), 1), error=str(e))
        scores = scored["score"]
        if scores.shape != ids.shape:
            raise ValueError(f"scorer returned shape {scores.shape} for {len(ids)} rows")
        bad = ~np.isfinite(scores)
        if bad.any():             # a diverged model: the driver raises DivergedModelError
            return _scored_rows(ids[bad], {name: values[bad] for name, values in scored.items()})
        top = np.zeros(len(ids), bool)
        top[top_rows(ids.astype(str), scores, self.k)] = True
        priorities = sample_priorities(ids)
        sampled = self.sample.add(ids, priorities, scores)
        sent = top | sampled
        return _scored_rows(ids[sent], {name: values[sent] for name, values in scored.items()}, top=top[sent],
                            sampled=sampled[sent], priority=priorities[sent])


def _as_scored(output, rows: int) -> dict[str, np.ndarray]:
    """A scorer's output as {score, predicted, confidence}: scores alone (a scorer without a class guess) get
    predicted NO_GUESS and confidence NaN."""
    if not isinstance(output, dict):
        output = {"score": output, "predicted": np.full(rows, NO_GUESS), "confidence": np.full(rows, np.nan)}
    return {"score": np.asarray(output["score"], np.float64), "predicted": np.asarray(output["predicted"], np.int64),
            "confidence": np.asarray(output["confidence"], np.float64)}


def _scored_rows(ids: np.ndarray, scored: dict[str, np.ndarray], error: str = "", top=None, sampled=None,
                 priority=None) -> dict[str, np.ndarray]:
    """BatchTopK's rows; every block has the same columns (error rows: neither top nor sampled)."""
    nowhere = np.zeros(len(ids), bool)
    return _rows(ids, error=error, **scored, top=nowhere if top is None else top,
                 sampled=nowhere if sampled is None else sampled,
                 priority=np.full(len(ids), np.nan) if priority is None else priority)


class BatchEmbed(_ScorerActor):
    """Ray Data actor: the scorer's embedding of every row, (B, scorer.embedding_dim) float32 (an Embedder)."""

    stage = "embedding"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        try:
            embedding = np.asarray(self.timed(self.scorer.embed, batch), dtype=np.float32)
        except InputError as e:
            return _rows(ids[:1], error=str(e), embedding=np.full((1, self.scorer.embedding_dim), np.nan, np.float32))
        return _rows(ids, embedding=embedding)


class BatchColumns(_ScorerActor):
    """Ray Data actor: the training columns the scorer's ``columns`` derives from each batch (a ColumnMaker)."""

    stage = "model outputs for training"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.timed(self.scorer.columns, batch)


def _rows(ids: np.ndarray, error: str = "", **columns: np.ndarray) -> dict[str, np.ndarray]:
    # Errors travel as data: an exception raised in a Ray Data actor reaches the driver as a
    # UserCodeException that no longer carries its type.
    return {"id": ids, **columns, "error": np.full(len(ids), error, dtype=object)}


def _raise_on_bad_rows(batch: dict[str, np.ndarray], values: str = "score") -> None:
    errors = batch["error"][batch["error"] != ""]
    if len(errors):
        raise InputError(errors[0])
    finite = np.isfinite(batch[values])
    bad = np.flatnonzero(~(finite.all(axis=1) if finite.ndim == 2 else finite))
    if len(bad):
        raise DivergedModelError(
            f"the model gave non-finite {values}s, e.g. for id {str(batch['id'][bad[0]])!r}; the trained model "
            f"has diverged and nothing was selected. Rerun with a new --out (its checkpoints would resume the "
            f"diverged model), e.g. at a lower learning rate")


# Errors a lost node gives (besides an actor that died), and how long the cluster may take to declare the
# node dead once they are seen (Ray's health checks: 5 missed, 3 s apart, by default). An actor process that
# dies on a live node (a poison input) gives the first of them too: a task that reaches every node within
# PROBE_SECONDS tells it apart (a task starts a worker process there: ~1-2 s on a busy 2-core node).
_NODE_LOSS_ERRORS = (ray.exceptions.ActorUnavailableError, ray.exceptions.ObjectLostError,
                     ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError)
NODE_DEATH_SECONDS = 60
PROBE_SECONDS = 10


def _gpus_per_actor(actors: int) -> float:
    """A whole GPU each, or a share of one when asked for more actors than there are GPUs: several
    actors on one GPU overlap one's decoding with another's model."""
    gpus = ray.cluster_resources().get("GPU", 0)
    return min(1.0, gpus / actors) if gpus else 1.0    # none yet: an autoscaler may add GPU nodes


def stream_top_k(ds: ray.data.Dataset, spec: ScorerSpec, k: int, cfg: ScoringConfig,
                 use_gpu: bool = False, sample_size: int = SAMPLE_SIZE, placement_timeout: float = 0) -> Selection:
    """Exact top-k of the scorer's scores over ``ds`` (columns id, image, ...), ties by smallest id, and a
    uniform sample of ``sample_size`` of the scores. Actors the cluster has no room for for ``placement_timeout``
    seconds (0: wait forever) end the stream with a PlacementError, here and in the other streams."""
    start = time.perf_counter()

    def fold(actors: Demand) -> tuple[RunningTopK, RunningSample, float]:
        scored = _through_actors(ds, BatchTopK, {"spec": spec, "k": k, "sample_size": sample_size}, cfg,
                                 actors, placement_timeout)
        best, sample, merge_seconds = RunningTopK(k), RunningSample(sample_size), 0.0
        for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
            _raise_on_bad_rows(batch)
            t = time.perf_counter()
            top, sampled = batch["top"], batch["sampled"]
            best.add(batch["id"][top], batch["score"][top],
                     {"predicted": batch["predicted"][top], "confidence": batch["confidence"][top]})
            sample.add(batch["id"][sampled], batch["priority"][sampled], batch["score"][sampled])
            merge_seconds += time.perf_counter() - t
        return best, sample, merge_seconds

    best, sample, merge_seconds = _streamed(fold, cfg, use_gpu, placement_timeout)
    t = time.perf_counter()
    ids, scores = best.result()
    scores_sample = sample.result()
    merge_seconds += time.perf_counter() - t
    seconds = time.perf_counter() - start
    log.info("scored; folded %d candidate rows in %.2f s of %.1f s", best.rows_seen, merge_seconds, seconds)
    predicted, confidence = best.columns.get("predicted"), best.columns.get("confidence")
    if predicted is None or (predicted == NO_GUESS).any():
        predicted = confidence = None
    return Selection(ids, scores, best.rows_seen, seconds, merge_seconds, scores_sample, predicted, confidence)


def stream_embeddings(ds: ray.data.Dataset, spec: ScorerSpec, cfg: ScoringConfig,
                      use_gpu: bool = False, placement_timeout: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), embeddings (N, d) float32) of every row of ``ds``, via the scorer's ``embed``, in id order.

    For strategies that need a global view (Core-set): the driver holds all N embeddings. Id order, not the order
    the actors finish in: k-means (TypiClust, Cluster-Margin) samples its training points by row position.
    """
    def gather(actors: Demand) -> tuple[list[np.ndarray], list[np.ndarray]]:
        ids, embeddings = [], []
        for batch in _through_actors(ds, BatchEmbed, {"spec": spec}, cfg, actors, placement_timeout).iter_batches(
                batch_format="numpy", batch_size=None):
            _raise_on_bad_rows(batch, values="embedding")
            ids.append(batch["id"].astype(str))
            embeddings.append(batch["embedding"])
        return ids, embeddings

    id_parts, parts = _streamed(gather, cfg, use_gpu, placement_timeout)
    if not id_parts:
        return np.array([], dtype=str), np.zeros((0, 0), np.float32)
    ids = np.concatenate(id_parts)
    order = np.argsort(ids, kind="stable")
    embeddings = np.concatenate(parts)
    del parts                               # the driver holds the matrix twice at most, not three times
    return ids[order], embeddings[order]


def stream_columns(ds: ray.data.Dataset, spec: ScorerSpec, cfg: ScoringConfig,
                   use_gpu: bool = False, placement_timeout: float = 0) -> ray.data.Dataset:
    """``ds`` mapped through ``scorer.columns`` in actors, materialized: model outputs as a training set."""
    def materialize(actors: Demand) -> ray.data.Dataset:
        mapped = _through_actors(ds, BatchColumns, {"spec": spec}, cfg, actors, placement_timeout)
        # Rows in pool order, whichever actor finishes first: training on them must not depend on timing.
        mapped.context.execution_options.preserve_order = True
        return mapped.materialize()

    return _streamed(materialize, cfg, use_gpu, placement_timeout)


def _streamed(stream: Callable[[Demand], T], cfg: ScoringConfig, use_gpu: bool, placement_timeout: float) -> T:
    """``stream(actors)``, run again from the start on the nodes left when a node of the cluster was lost while it
    ran (at most ``batch_retries`` times); Ray's errors for what ended it named. ``actors``: the scoring actors
    to ask for on the nodes alive when it starts.

    Ray retries an actor's batch on the restarted actor, but a lost node's actors stay unreachable until the
    cluster declares the node dead (missed health checks, ~15 s by Ray's defaults) and the retries run out
    before that (seen here: ActorUnavailableError, "connection refused", right after the kill). Whole-stream
    restarts rescore what the lost node had scored; a node loss is rare, and the top-b stays exact.

    An InputError raised in an actor reaches the driver as text inside Ray's wrapper (a failed batch, or
    a scorer that refused to start, whose actor dies): it is raised again by its own message."""
    restarts = 0
    while True:
        nodes = alive_nodes()
        actors = _actors(cfg, use_gpu)
        try:
            return stream(actors)
        except Exception as e:
            raise_if_input_error(e)
            raise_if_remote(e, ScoringFailedError)    # a stalled batch
            _raise_if_unplaced(e, actors, placement_timeout)
            lost = _lost_nodes(nodes, e)
            if not lost or restarts == cfg.batch_retries:
                _raise_named(e, lost, cfg)
            _forget_locals(e)
        restarts += 1
        log.warning("scoring lost %s; starting the stream again on the nodes left (restart %d of %d)",
                    lost, restarts, cfg.batch_retries)
        _release_failed_stream()        # out of the except block: the exception holds the failed stream


def _actors(cfg: ScoringConfig, use_gpu: bool) -> Demand:
    """The scoring actors to ask for: ``actor_layout``'s count, each asking its CPUs and a GPU or a share of one."""
    size, cpus_each = actor_layout(cfg, use_gpu)
    each = {"CPU": cpus_each, "GPU": _gpus_per_actor(size) if use_gpu else 0.0}
    return Demand("scoring", size, "actor", {r: amount for r, amount in each.items() if amount})


# Ray Data's error when the actors of a pool did not all start within its wait_for_min_actors_s.
_ACTORS_NOT_STARTED = "Timed out while starting actors"


def _raise_if_unplaced(error: Exception, actors: Demand, timeout: float) -> None:
    """A PlacementError naming the shortfall, if ``error`` is Ray Data giving up on starting the actors."""
    if _ACTORS_NOT_STARTED not in str(error):
        return
    # All the nodes' resources: the actors that did start hold some of the free ones.
    raise placement_error(actors, total_per_node(), False, timeout, "--actors") from error


def _raise_named(error: Exception, lost: str, cfg: ScoringConfig) -> NoReturn:
    """Raise ``error`` as what a user can act on: a lost node, an actor that died on every retry, or as is."""
    if lost:
        raise ScoringFailedError(
            f"scoring lost {lost} while it ran, and the actors and data there with it; nothing was selected "
            f"(streams started again after a lost node: ScoringConfig.batch_retries={cfg.batch_retries}). Rerun "
            f"the same command: training resumes from its checkpoints under --out") from error
    if isinstance(error, ray.exceptions.RayActorError):
        raise ScoringFailedError(
            f"a scoring actor process died on the same batch {cfg.batch_retries + 1} times (the first try and "
            f"ScoringConfig.batch_retries={cfg.batch_retries} retries), so nothing was selected; the actor's log "
            f"(ray logs, or the dashboard) says why: often out of memory (lower the batch size) or an input that "
            f"crashes a native decoder") from error
    raise error


def _forget_locals(error: BaseException) -> None:
    """Clear the frames of ``error``'s traceback (and of the errors it chains): Ray Data logs the error with
    its traceback, and a log handler that keeps records (pytest's does) would otherwise keep the failed
    stream's executor, and so its actors, alive through those frames' locals."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _release_failed_stream(wait_seconds: float = NODE_DEATH_SECONDS) -> None:
    """Let the failed stream's actors go before the next one asks for CPUs. Ray Data drops a failed stream's
    actors by reference only (they stay alive while anything holds them), and its objects sit in reference
    cycles until a garbage collection. An actor of the lost node that is still held is restarted on a node
    left (max_restarts=-1) and keeps its CPU: seen here to leave no node a read's CPU, and the next stream
    waited forever. Then, for up to ``wait_seconds``, until the cluster's CPUs are all free again (another
    job's may never be)."""
    gc.collect()
    deadline = time.monotonic() + wait_seconds
    while (time.monotonic() < deadline
           and ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0)):
        time.sleep(0.5)


def _lost_nodes(before: dict[str, str], error: Exception) -> str:
    """'node 1a2b3c4d (10.0.0.7)' for each node alive in ``before`` and dead now, '' if none. After an error
    that a lost node gives (an unreachable actor, lost objects) while no node is dead yet: none was lost if
    every node answers a task; else the cluster is asked again for up to NODE_DEATH_SECONDS, since it declares
    a node dead only after missed health checks."""
    node_loss = isinstance(error, _NODE_LOSS_ERRORS)
    if node_loss and before.keys() <= alive_nodes().keys() and all_answer(before, PROBE_SECONDS):
        return ""
    deadline = time.monotonic() + (NODE_DEATH_SECONDS if node_loss else 0)
    while True:
        gone = before.keys() - alive_nodes().keys()
        if gone or time.monotonic() >= deadline:
            return ", ".join(f"node {n[:8]} ({before[n]})" for n in sorted(gone))
        time.sleep(1)


def _through_actors(ds: ray.data.Dataset, actor_cls, kwargs: dict, cfg: ScoringConfig, actors: Demand,
                    placement_timeout: float) -> ray.data.Dataset:
    use_gpu = "GPU" in actors.each
    if cfg.amp and not use_gpu:
        raise InputError("bfloat16 scoring (amp) runs on GPUs only: add use_gpu (--use-gpu) or drop --amp")
    # Small blocks (a few batches each) keep every actor busy; Ray's 128 MiB default would hand a
    # 20k-image pool to one actor as a single block.
    ds.context.target_max_block_size = cfg.block_bytes
    size = actors.count
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(
        object_store_memory=cfg.read_ahead_blocks * size * cfg.block_bytes)
    # All the nodes' resources, not the free ones: those of the training just ended may not all be back yet.
    log_if_unplaceable(actors, placement_timeout, free=False)
    ds.context.wait_for_min_actors_s = math.ceil(placement_timeout) or -1     # Ray Data's -1: wait forever
    return ds.map_batches(
        actor_cls, fn_constructor_kwargs={**kwargs, "threads": cfg.threads_per_actor, "amp": cfg.amp,
                                          "timeout_s": cfg.batch_timeout_s},
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=cfg.batch_size, batch_format="numpy",
        num_gpus=actors.each.get("GPU", 0.0), num_cpus=actors.each.get("CPU", 0.0),
        max_restarts=-1, max_task_retries=cfg.batch_retries)
