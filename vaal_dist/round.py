"""One selection round: validate the inputs, train the strategy, stream-score the pool, write the selection.

Outputs under ``out``: ``train/`` (checkpoints), ``selection.parquet`` (id, score, rank), ``report.html``
(``report.pages``, with ``scores-sample.parquet`` where the strategy streams scores) and ``run.json``
(config, versions, sizes, timings); their names are ``round_files``'. Every file is written atomically and
run.json last, so a round whose run.json exists is complete; rerunning it is a no-op (but for writing its report
where it has none), and rerunning an interrupted one resumes training from its latest checkpoint.
One round at a time per ``out``: a second is refused naming the first (``folder_lock.writer_lock``).
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import platform
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from vaal_dist import version
from vaal_dist.config import RoundConfig
from vaal_dist.errors import InputError, StorageError
from vaal_dist.fingerprint import inputs_fingerprint
from vaal_dist.folder_lock import writer_lock
from vaal_dist.placement import shared_storage_problem
from vaal_dist.pool.embeddings import EmbeddingsFiles, embeddings_files
from vaal_dist.pool.io import read_pool_ids, read_pool_meta
from vaal_dist.pool.manifests import read_manifest
from vaal_dist.pool.shards import PAGE_CRC_FAILURE, SHARD_READ_FAILED, write_parquet
from vaal_dist.pool.storage import STORAGE_KEPT_FAILING, beside, exists, join, lies_within, read_json, \
    remove_stale_temporaries, write_json
from vaal_dist.redaction import redact, redact_all
from vaal_dist.report.pages import write_missing_round_report, write_round_report
from vaal_dist.round_files import CHECKPOINTS, INPUTS, RECORD, REPORT, SELECTION
from vaal_dist.round_inputs import RoundInputs, Trained
from vaal_dist.scoring.topk import Selection
from vaal_dist.strategies import get_strategy, models_trained

log = logging.getLogger(__name__)

NEAR_MISSES = 3            # ids not in the pool for which an error looks up the closest pool id


@dataclass(frozen=True)
class RoundResult:
    selection: str          # URI of selection.parquet
    record: dict            # the contents of run.json

    @property
    def per_100_seconds(self) -> float:
        return self.record["per_100_query_seconds"]

    @property
    def report(self) -> str:
        """URI of report.html, beside selection.parquet."""
        return beside(self.selection, REPORT)


@dataclass(frozen=True)
class _Sizes:
    pool: int
    labeled: int
    holdout: int = 0

    @property
    def unlabeled(self) -> int:
        return self.pool - self.labeled - self.holdout


def _ids_in_pool(uri: str, what: str, pool_ids) -> pa.Array:
    ids = read_manifest(uri)
    unknown = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=pool_ids)))
    if len(unknown):
        raise InputError(f"{what} manifest {uri!r} names {len(unknown)} ids that are not in the pool, "
                         f"e.g. {unknown[:5].to_pylist()}{_closest_hint(unknown[:NEAR_MISSES], pool_ids)}")
    return ids


def _closest_hint(missing: pa.Array, pool_ids) -> str:
    """The closest pool id of each missing id, in ascii() so that what differs shows: ids are compared as
    written, and 'caf\\xe9' and 'cafe\\u0301' (the same word, NFC and NFD) are two ids."""
    pairs = [(name, match) for name in missing.to_pylist() for match in _closest(name, pool_ids)]
    if not pairs:
        return ""
    return ("; closest pool ids (compared as written, no Unicode normalisation): "
            + ", ".join(f"{ascii(name)} ~ {ascii(match)}" for name, match in pairs))


def _closest(name: str, pool_ids, at_most: int = 1000) -> list[str]:
    """[the pool id most like ``name``] by difflib, or []. Only ids sharing ``name``'s longest prefix found in
    the pool are compared, at most ``at_most`` of them: difflib over a 1M-id pool took 107 s per id here."""
    shared, longest = 0, len(name)          # binary search: the prefix of length ``shared`` starts some pool id
    while shared < longest:
        mid = (shared + longest + 1) // 2
        if pc.any(pc.starts_with(pool_ids, name[:mid])).as_py():
            shared = mid
        else:
            longest = mid - 1
    candidates = pc.filter(pool_ids, pc.starts_with(pool_ids, name[:shared]))[:at_most]
    return difflib.get_close_matches(name, candidates.to_pylist(), n=1)


def validate_inputs(cfg: RoundConfig, needs_labeled: bool, embeddings: EmbeddingsFiles | None = None
                    ) -> tuple[_Sizes, pa.Array, pa.Array | None, str]:
    """Check pool, labeled (and held-out) manifests and numbers before any work. ``embeddings``: the
    ``--embeddings`` files as the round listed them (listed here when not given).

    Returns the sizes, the labeled ids, the held-out ids (or None) and a fingerprint of the inputs
    (config, pool ids, labeled ids, held-out ids, the pool's files, imported labels and this package's version).
    """
    for name, value in (("budget", cfg.budget), ("scoring batch size", cfg.scoring.batch_size)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if cfg.workers < 0:
        raise InputError(f"workers must be at least 0 (0: train in the driver process), got {cfg.workers}")
    if cfg.workers == 0 and cfg.use_gpu:
        raise InputError("workers=0 trains in the driver process, which holds no GPU of the cluster: "
                         "train on GPUs with workers >= 1")
    _check_apart(cfg.pool, cfg.out)
    pool_ids = read_pool_ids(cfg.pool)
    labeled = _ids_in_pool(cfg.labeled, "labeled", pool_ids)
    holdout = None if cfg.holdout is None else _ids_in_pool(cfg.holdout, "held-out", pool_ids)
    if holdout is not None:
        both = pc.filter(holdout, pc.is_in(holdout, value_set=labeled))
        if len(both):
            raise InputError(f"{len(both)} ids are both labeled and held out, e.g. {both[:5].to_pylist()}")
    sizes = _Sizes(pool=len(pool_ids), labeled=len(labeled), holdout=0 if holdout is None else len(holdout))
    if cfg.budget > sizes.unlabeled:
        raise InputError(f"budget {cfg.budget} is larger than the unlabeled pool ({sizes.unlabeled} of "
                         f"{sizes.pool} images are unlabeled and not held out)")
    if needs_labeled and min(sizes.labeled, sizes.unlabeled) < max(cfg.workers, 1):
        raise InputError(f"{cfg.strategy} trains on both pools and each of the {cfg.workers} training "
                         f"workers needs some of each: {sizes.labeled} labeled, {sizes.unlabeled} unlabeled")
    return sizes, labeled, holdout, inputs_fingerprint(cfg, pool_ids, labeled, holdout, embeddings)


def _check_apart(pool: str, out: str) -> None:
    """The pool's shards are listed recursively: a round's Parquet files written inside it would become shards."""
    if lies_within(out, pool):
        raise InputError(f"--out {out!r} lies inside --pool {pool!r}: the round's files would be read as the "
                         f"pool's shards; choose an --out outside the pool")
    if lies_within(pool, out):
        raise InputError(f"--pool {pool!r} lies inside --out {out!r}: the round writes and cleans up there; "
                         f"choose an --out outside the pool")


def run_round(cfg: RoundConfig) -> RoundResult:
    """Run (or resume, or find complete) one selection round; Ray must be initialised."""
    start = time.perf_counter()
    strategy = get_strategy(cfg.strategy)
    trains = models_trained(strategy, cfg.acquisition)
    embeddings = None if cfg.acquisition.embeddings is None else embeddings_files(cfg.acquisition.embeddings)
    sizes, labeled_ids, holdout_ids, fingerprint = validate_inputs(cfg, needs_labeled=bool(trains),
                                                                   embeddings=embeddings)
    meta = read_pool_meta(cfg.pool)
    inputs = RoundInputs(cfg, meta, labeled_ids, join(cfg.out, CHECKPOINTS), holdout_ids, embeddings)
    with _damage_named(cfg.pool):
        inputs.check(trains)                 # refused input leaves nothing behind, not even inputs.json
    problem = shared_storage_problem(cfg)    # a path only some nodes see would fail late, on a worker
    if problem:
        raise InputError(problem)
    # Held from the checks of what --out holds to the last write: a run that passed the checks before another
    # started could otherwise write over it (docs/reliability.md).
    with writer_lock(cfg.out) as lock:
        remove_stale_temporaries(cfg.out)    # half-written files of a killed run; never a live writer's
        record_uri = join(cfg.out, RECORD)
        if _claim(cfg.out, fingerprint):
            log.info("round in %s is already complete; nothing to do", redact(cfg.out))
            if write_missing_round_report(cfg.out, cfg.pool, meta):
                log.info("wrote its missing %s", REPORT)
            return RoundResult(join(cfg.out, SELECTION), read_json(record_uri))
        log.info("round: %s on %d images (%d labeled), budget %d", cfg.strategy, sizes.pool, sizes.labeled,
                 cfg.budget)
        t = time.perf_counter()
        with _damage_named(cfg.pool):
            trained = strategy.train(inputs)
            train_seconds = time.perf_counter() - t
            top = strategy.select(inputs, trained)
        if len(top.ids) != cfg.budget:
            raise RuntimeError(f"scoring returned {len(top.ids)} ids for budget {cfg.budget}")
        lock.check_held()                    # a run that took --out over while this one trained owns it now
        selection_uri = _write_selection(cfg.out, top)
        record = _record(inputs, sizes, fingerprint, trained, top, selection_uri,
                         {"train_seconds": train_seconds, "total_seconds": time.perf_counter() - start})
        # Before run.json: a complete round always has its report. Its cost is not in the query time.
        write_round_report(cfg.out, cfg.pool, meta, record, top.ids, top.scores, top.sample)
        lock.check_held()
        write_json(record_uri, record)
        return RoundResult(selection_uri, record)


def _claim(out: str, fingerprint: str) -> bool:
    """Whether ``out`` holds this round complete; else make it this round's (refusing another round's)."""
    inputs_uri = join(out, INPUTS)
    if exists(inputs_uri) and read_json(inputs_uri)["fingerprint"] != fingerprint:
        raise InputError(f"{out!r} holds a round started with another config, pool (ids or files), "
                         f"labeled set or vaal_dist version; choose a new --out")
    if exists(join(out, RECORD)):
        return True
    write_json(inputs_uri, {"fingerprint": fingerprint})
    return False


def _write_selection(out: str, top: Selection) -> str:
    """id, score, rank and, where the strategy has a task model, its guess: predicted (class), confidence."""
    uri = join(out, SELECTION)
    columns = {
        "id": pa.array(top.ids, pa.string()),
        "score": pa.array(top.scores, pa.float64()),
        "rank": pa.array(np.arange(1, len(top.ids) + 1), pa.int64()),
    }
    if top.predicted is not None:
        columns["predicted"] = pa.array(top.predicted, pa.int64())
        columns["confidence"] = pa.array(top.confidence, pa.float64())
    write_parquet(uri, pa.table(columns))
    return uri


def _record(inputs: RoundInputs, sizes: _Sizes, fingerprint: str, trained: Trained, top: Selection,
            selection_uri: str, seconds: dict) -> dict:
    """run.json: what ran, on what, what it trained and what it cost."""
    cfg = inputs.config
    return {
        "config": redact_all(cfg.to_dict()),
        "versions": _versions(),
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        "pool": {"uri": redact(cfg.pool), "images": sizes.pool, "labeled": sizes.labeled,
                 "unlabeled": sizes.unlabeled, "held_out": sizes.holdout, "encoding": inputs.meta.encoding},
        "selection": redact(selection_uri),
        "inputs_fingerprint": fingerprint,
        "budget": cfg.budget,
        "train": redact_all(trained.record()),
        "timings": {"train_seconds": seconds["train_seconds"], "score_seconds": top.seconds - top.merge_seconds,
                    "merge_seconds": top.merge_seconds, "total_seconds": seconds["total_seconds"]},
        "scoring": {"candidates_folded": top.candidates, "throughput_images_per_second":
                    sizes.unlabeled / top.seconds if top.seconds else None},
        "per_100_query_seconds": seconds["total_seconds"] / cfg.budget * 100,
        "predictions": top.predicted is not None or f"none: {cfg.strategy} has no task model's class guess",
    }


@contextlib.contextmanager
def _damage_named(pool: str):
    """A shard that could not be read on a Ray worker (a page failing its CRC, a damaged page header,
    storage gone) becomes one InputError naming the pool and the shard."""
    try:
        yield
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if SHARD_READ_FAILED in line]
        if not lines:
            raise
        where = lines[0][lines[0].index(SHARD_READ_FAILED):]
        if STORAGE_KEPT_FAILING in where:
            raise StorageError(f"pool {pool!r}: {where}; rerun when the storage recovers") from e
        why = ("a Parquet page failed its checksum: re-create or restore the pool" if PAGE_CRC_FAILURE in str(e)
               else "damaged, or its storage could not be read: check that it is reachable, else re-create or "
                    "restore the pool")
        raise InputError(f"pool {pool!r} has a shard that cannot be read ({where}); {why}") from e


def _versions() -> dict:
    import pyarrow
    import torch

    return {"vaal_dist": version.__version__, "ray": ray.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "pyarrow": pyarrow.__version__, "python": platform.python_version()}
