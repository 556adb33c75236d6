"""Streaming scoring: the pool flows through stateful Ray Data actors; the driver keeps the exact top-b.

A strategy's scorer (``scoring.spec``) is built once per actor (it loads the model there) and called on
batch dicts of numpy arrays; it returns one float per row, higher meaning "label this". ``BatchTopK``
wraps it so that each batch leaves the actor as its own top-b only, and ``RunningTopK`` folds those on
the driver.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import ray
import ray.data

from vaal_dist.config import ScoringConfig
from vaal_dist.errors import DivergedModelError, InputError, ScoringFailedError, raise_if_input_error
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.topk import RunningTopK, Selection, top_k

log = logging.getLogger(__name__)


class _ScorerActor:
    """Builds the strategy's scorer once per Ray Data actor; ``amp``: run it under bfloat16 autocast."""

    def __init__(self, spec: ScorerSpec, threads: int | None = None, amp: bool = False):
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True     # fixed batch shapes: pick the fastest conv kernels once
        self.scorer = spec.build()
        self.amp = amp

    def precision(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()


class BatchTopK(_ScorerActor):
    """Ray Data actor: score a batch with the strategy's scorer, emit the batch's top-k (id, score)."""

    def __init__(self, spec: ScorerSpec, k: int, threads: int | None = None, amp: bool = False):
        super().__init__(spec, threads, amp)
        self.k = k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        try:
            with self.precision():
                scores = np.asarray(self.scorer(batch), dtype=np.float64)
        except InputError as e:   # a bad image: hand it to the driver, which raises it by name
            return _rows(ids[:1], error=str(e), score=np.array([np.nan]))
        if scores.shape != ids.shape:
            raise ValueError(f"scorer returned shape {scores.shape} for {len(ids)} rows")
        bad = ~np.isfinite(scores)
        if bad.any():             # a diverged model: the driver raises DivergedModelError
            return _rows(ids[bad], score=scores[bad])
        top_ids, top_scores = top_k(ids, scores, self.k)
        return _rows(top_ids, score=top_scores)


class BatchEmbed(_ScorerActor):
    """Ray Data actor: the scorer's embedding of every row, (B, scorer.embedding_dim) float32 (an Embedder)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        try:
            with self.precision():
                embedding = np.asarray(self.scorer.embed(batch), dtype=np.float32)
        except InputError as e:
            return _rows(ids[:1], error=str(e), embedding=np.full((1, self.scorer.embedding_dim), np.nan, np.float32))
        return _rows(ids, embedding=embedding)


class BatchColumns(_ScorerActor):
    """Ray Data actor: the training columns the scorer's ``columns`` derives from each batch (a ColumnMaker)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.precision():
            return self.scorer.columns(batch)


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



def actor_pool_size(cfg: ScoringConfig, use_gpu: bool) -> int:
    """One actor per GPU with GPUs; otherwise one per CPU (each asking a fraction of one)."""
    if cfg.num_actors:
        return cfg.num_actors
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU" if use_gpu else "CPU", 1)))


def _gpus_per_actor(actors: int) -> float:
    """A whole GPU each, or a share of one when asked for more actors than there are GPUs: several
    actors on one GPU overlap one's decoding with another's model."""
    gpus = ray.cluster_resources().get("GPU", 0)
    return min(1.0, gpus / actors) if gpus else 1.0    # none yet: an autoscaler may add GPU nodes


def stream_top_k(ds: ray.data.Dataset, spec: ScorerSpec, k: int, cfg: ScoringConfig,
                 use_gpu: bool = False) -> Selection:
    """Exact top-k of the scorer's scores over ``ds`` (columns id, image, ...), ties by smallest id."""
    start = time.perf_counter()
    scored = _through_actors(ds, BatchTopK, {"spec": spec, "k": k}, cfg, use_gpu)
    best = RunningTopK(k)
    merge_seconds = 0.0
    with _actor_deaths_named(cfg):
        for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
            _raise_on_bad_rows(batch)
            t = time.perf_counter()
            best.add(batch["id"], batch["score"])
            merge_seconds += time.perf_counter() - t
    t = time.perf_counter()
    ids, scores = best.result()
    merge_seconds += time.perf_counter() - t
    seconds = time.perf_counter() - start
    log.info("scored; folded %d candidate rows in %.2f s of %.1f s", best.rows_seen, merge_seconds, seconds)
    return Selection(ids, scores, best.rows_seen, seconds, merge_seconds)


@contextlib.contextmanager
def _actor_deaths_named(cfg: ScoringConfig):
    """Ray's error for an actor that died on every retry names only an actor id; say what happened.

    An InputError raised in an actor reaches the driver as text inside Ray's wrapper (a failed batch, or
    a scorer that refused to start, whose actor dies): it is raised again by its own message."""
    try:
        yield
    except ray.exceptions.RayActorError as e:
        raise_if_input_error(e)
        raise ScoringFailedError(
            f"a scoring actor process died on the same batch {cfg.batch_retries + 1} times (the first try "
            f"and ScoringConfig.batch_retries={cfg.batch_retries} retries), so nothing was selected; the "
            f"actor's log (ray logs, or the dashboard) says why: often out of memory (lower the batch size) "
            f"or an input that crashes a native decoder") from e
    except Exception as e:
        raise_if_input_error(e)
        raise


def stream_embeddings(ds: ray.data.Dataset, spec: ScorerSpec, cfg: ScoringConfig,
                      use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), embeddings (N, d) float32) of every row of ``ds``, via the scorer's ``embed``.

    For strategies that need a global view (Core-set): the driver holds all N embeddings.
    """
    embedded = _through_actors(ds, BatchEmbed, {"spec": spec}, cfg, use_gpu)
    ids, embeddings = [], []
    with _actor_deaths_named(cfg):
        for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
            _raise_on_bad_rows(batch, values="embedding")
            ids.append(batch["id"].astype(str))
            embeddings.append(batch["embedding"])
    if not ids:
        return np.array([], dtype=str), np.zeros((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(embeddings)


def stream_columns(ds: ray.data.Dataset, spec: ScorerSpec, cfg: ScoringConfig,
                   use_gpu: bool = False) -> ray.data.Dataset:
    """``ds`` mapped through ``scorer.columns`` in actors, materialized: model outputs as a training set."""
    mapped = _through_actors(ds, BatchColumns, {"spec": spec}, cfg, use_gpu)
    # Rows in pool order, whichever actor finishes first: training on them must not depend on timing.
    mapped.context.execution_options.preserve_order = True
    with _actor_deaths_named(cfg):
        return mapped.materialize()


def _through_actors(ds: ray.data.Dataset, actor_cls, kwargs: dict, cfg: ScoringConfig,
                    use_gpu: bool) -> ray.data.Dataset:
    if cfg.amp and not use_gpu:
        raise InputError("bfloat16 scoring (amp) runs on GPUs only: add use_gpu (--use-gpu) or drop --amp")
    # Small blocks (a few batches each) keep every actor busy; Ray's 128 MiB default would hand a
    # 20k-image pool to one actor as a single block.
    ds.context.target_max_block_size = cfg.block_bytes
    size = actor_pool_size(cfg, use_gpu)
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(
        object_store_memory=cfg.read_ahead_blocks * size * cfg.block_bytes)
    return ds.map_batches(
        actor_cls, fn_constructor_kwargs={**kwargs, "threads": cfg.threads_per_actor, "amp": cfg.amp},
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=cfg.batch_size, batch_format="numpy",
        num_gpus=_gpus_per_actor(size) if use_gpu else 0, num_cpus=0 if use_gpu else cfg.cpus_per_actor,
        max_restarts=-1, max_task_retries=cfg.batch_retries)
