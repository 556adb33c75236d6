"""What a strategy may use, and the one way it reaches the cluster.

A strategy is its method only: it asks ``RoundInputs`` for the round's config and ids, to train models on
Ray Train (``train_task``, ``train_vaal``, ``fit``), to turn model outputs into training columns or
embeddings through Ray Data actors (``columns``, ``embeddings``), and for the exact top-b of a scorer over
the unlabeled pool (``top_k``). Strategy modules import no Ray: the plumbing is here and below.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.train import Checkpoint

from vaal_dist.config import AALUConfig, RoundConfig, VAALConfig
from vaal_dist.labeling.labels import LABELS, add_labels, check_labels, labels_beside, pool_has_label_column
from vaal_dist.models.backbone import BackboneWeights, read_backbone
from vaal_dist.pool.dataset import DecodeForTraining, filter_ids, labeled_datasets, read_pool
from vaal_dist.pool.embeddings import EmbeddingsFiles, Vectors, cache_uri, embeddings_files, read_vectors, \
    write_vectors
from vaal_dist.pool.images import check_image_size
from vaal_dist.pool.io import PoolMeta, pool_state, read_pool_ids
from vaal_dist.pool.storage import beside, exists, join
from vaal_dist.redaction import redact
from vaal_dist.scoring.ids import random_subset
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import stream_columns, stream_embeddings, stream_top_k
from vaal_dist.scoring.topk import Selection
from vaal_dist.train.pool_batches import pool_source
from vaal_dist.train.aalu_loop import AALULoopConfig, aalu_train_loop_per_worker
from vaal_dist.train.task_loop import TaskLoopConfig, scheduled, task_train_loop_per_worker
from vaal_dist.train.trainer import fit
from vaal_dist.train.vaal_loop import VAALLoopConfig, train_loop_per_worker

log = logging.getLogger(__name__)

Side = Literal["labeled", "unlabeled"]
EMBEDDINGS_CACHE = "embeddings-cache"     # in a round's out, unless its config names a folder


class CheckpointFiles(Protocol):
    """What a scorer loads a trained model from, without naming Ray: a folder of its files (``TrainedModel``'s
    checkpoint, Ray Train's ``Checkpoint``, is one)."""

    def as_directory(self) -> AbstractContextManager[str]:
        """The checkpoint's files as a local folder, while the context lasts."""


@dataclass(frozen=True)
class TrainedModel:
    """A model trained on Ray Train: its latest checkpoint and the metrics its last epoch reported."""

    name: str                        # its role: "task", "vaal" (VAE + D) or "aalu" (VAE + assistant)
    checkpoint: Checkpoint
    last_epoch: dict
    num_classes: int | None = None   # task models: the classes they predict
    settings: dict | None = None     # task models: train_task's rank_loss, dropout and members

    def record(self) -> dict:
        facts = {"checkpoint": self.checkpoint.path, "last_epoch": self.last_epoch}
        if self.num_classes is None:
            return facts
        return {**facts, "num_classes": self.num_classes, "settings": self.settings}


@dataclass(frozen=True)
class Trained:
    """What a strategy's training leaves for its selection: the scorer to build and the models behind it."""

    scorer: ScorerSpec | None           # None: the strategy's vectors come from a file (``RoundInputs.vectors``)
    models: tuple[TrainedModel, ...] = ()

    def record(self) -> dict:
        """run.json's ``train``: {model name: {checkpoint, last_epoch[, num_classes]}}, one schema for all."""
        return {m.name: m.record() for m in self.models}


@dataclass(frozen=True)
class RoundInputs:
    """The round's config, the pool's layout, the labeled (and held-out) ids, and the Ray work on them."""

    config: RoundConfig
    meta: PoolMeta
    labeled_ids: pa.Array
    train_dir: str            # checkpoint storage for this round (local path or URI)
    holdout_ids: pa.Array | None = None   # never trained on, never selected; task models evaluate on them
    given_embeddings: EmbeddingsFiles | None = None   # the --embeddings files as the round listed them

    @property
    def not_unlabeled(self) -> pa.Array:
        """Ids outside the unlabeled pool: the labeled ones and the held-out ones."""
        if self.holdout_ids is None:
            return self.labeled_ids
        return pa.concat_arrays([self.labeled_ids, self.holdout_ids])

    @cached_property
    def unlabeled_ids(self) -> pa.Array:
        ids = read_pool_ids(self.config.pool)
        return pc.filter(ids, pc.invert(pc.is_in(ids, value_set=self.not_unlabeled))).combine_chunks()

    @cached_property
    def round_seed(self) -> int:
        """The config's seed mixed with the labeled set: a fresh draw each round, the same on a rerun."""
        digest = hashlib.sha256(str(self.config.seed).encode())
        for i in sorted(self.labeled_ids.to_pylist()):
            digest.update(b"\x00" + i.encode())
        return int.from_bytes(digest.digest()[:8], "little", signed=True)

    @cached_property
    def imported_labels(self) -> pa.Table | None:
        """(id, label) of labels.parquet beside the labeled manifest when the pool has no ``label`` column
        (people's answers, ``vaal-dist import-labels``); None when the pool's column holds the labels."""
        if pool_has_label_column(self.config.pool):
            if exists(beside(self.config.labeled, LABELS)):
                log.warning("%s beside the labeled manifest is not used: pool %s has a label column, and its "
                            "labels are the ones trained on", LABELS, redact(self.config.pool))
            return None
        return labels_beside(self.config.labeled)

    @cached_property
    def backbone(self) -> BackboneWeights | None:
        """The ``--embedding`` backbone's weights, read once and checked; None: strategies embed with their own
        models."""
        config = self.config.acquisition.embedding
        return None if config is None else read_backbone(config)

    @cached_property
    def vectors(self) -> Vectors | None:
        """The labeled and unlabeled images' vectors from a file: the ``--embeddings`` file's, or the ``--embedding``
        backbone's (``backbone_vectors_file``); None: strategies embed with their own models."""
        acquisition, embedded = self.config.acquisition, pa.concat_arrays([self.labeled_ids, self.unlabeled_ids])
        if acquisition.embeddings is not None:
            return read_vectors(self.given_embeddings or embeddings_files(acquisition.embeddings), embedded)
        if acquisition.embedding is not None:
            uri, key = self.backbone_vectors_file()
            return read_vectors(embeddings_files(uri), embedded, key)
        return None

    @property
    def embeddings_cache(self) -> str:
        """The folder of what is computed once per pool and embedding: the config's (``--embeddings-cache``, which
        rounds share), else one in ``out``: a round writes nowhere the user did not name."""
        return self.config.embeddings_cache or join(self.config.out, EMBEDDINGS_CACHE)

    def backbone_vectors_file(self) -> tuple[str, str]:
        """(the ``--embedding`` backbone's embeddings of the whole pool, held out too, in the cache; its key), the
        file written first if it is not there. The key hashes the weights' bytes, the backbone's settings and the
        pool's listing: every round on that pool with those weights reads the same file."""
        from vaal_dist.strategies.backbone import BackboneScorer     # strategies import this module

        cfg, backbone = self.config, self.backbone
        key = hashlib.sha256(backbone.data)
        key.update(json.dumps([backbone.config.arch, backbone.config.image_size, pool_state(cfg.pool)]).encode())
        uri = cache_uri(self.embeddings_cache, key.hexdigest())
        if not exists(uri):
            log.info("embedding the pool with %s into %s", backbone.config.arch, redact(uri))
            ids, x = stream_embeddings(read_pool(cfg.pool, ("id", "image")),
                                       self.scorer_spec(BackboneScorer, backbone=backbone), cfg.scoring, cfg.use_gpu,
                                       placement_timeout=cfg.placement_timeout)
            write_vectors(uri, ids, x)
        return uri, key.hexdigest()

    def features(self, spec: ScorerSpec | None, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), vectors (N, d) float32) of ``side``'s images: from ``vectors`` when there are, else
        ``spec``'s embeddings streamed."""
        if self.vectors is None:
            return self.embeddings(spec, side)
        labeled = len(self.labeled_ids)                     # vectors holds the labeled ids', then the unlabeled
        part = slice(None, labeled) if side == "labeled" else slice(labeled, None)
        return self.vectors.ids[part], self.vectors.x[part]

    def _pool(self, with_labels: bool) -> ray.data.Dataset:
        if with_labels and self.imported_labels is not None:
            return read_pool(self.config.pool, ("id", "image")).map_batches(
                add_labels, batch_format="pyarrow", batch_size=None, fn_kwargs={"labels": self.imported_labels})
        return read_pool(self.config.pool, ("id", "image", "label") if with_labels else ("id", "image"))

    def images(self, side: Side, with_labels: bool = False) -> ray.data.Dataset:
        """The labeled images, or the unlabeled ones (neither labeled nor held out), read lazily."""
        pool = self._pool(with_labels)
        if side == "labeled":
            return filter_ids(pool, self.labeled_ids)
        return filter_ids(pool, self.not_unlabeled, keep=False)

    def check(self, models: tuple[str, ...]) -> None:
        """What training ``models`` needs of the pool, checked before anything is written: images the models
        can take, a label for every labeled (and held-out) image a task model trains (and is tested) on, and
        the ``--embedding`` backbone's weights."""
        cfg = self.config
        self.backbone               # the weights are read and checked now, not first in a scoring actor
        if cfg.acquisition.embeddings is not None:
            self.vectors            # so is the --embeddings file
        if "vaal" in models:
            check_image_size(self.meta, cfg.vaal.image_size)
        if "task" in models:
            check_image_size(self.meta, cfg.task.image_size)
            for ids in (self.labeled_ids, self.holdout_ids):
                if ids is not None:
                    check_labels(cfg.pool, ids, self.imported_labels)

    def scorer_spec(self, cls: type, **kwargs) -> ScorerSpec:
        """A scorer of this pool's images, on the round's device: ``cls(meta=..., use_gpu=..., **kwargs)``."""
        return ScorerSpec(cls, {"meta": self.meta, "use_gpu": self.config.use_gpu, **kwargs})

    # Ray Train

    def _fit(self, train_loop, loop_config, datasets: dict[str, ray.data.Dataset], name: str,
             workers: int | None = None, split: list[str] | None = None) -> TrainedModel:
        """``train.trainer.fit`` under this round's checkpoint folder (``name`` inside it), workers, devices
        and failure budget."""
        cfg = self.config
        result = fit(train_loop, loop_config, datasets, storage_path=self.train_dir, name=name,
                     workers=workers or cfg.workers, use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker,
                     seed=cfg.seed, max_failures=cfg.max_failures, split=split,
                     placement_timeout=cfg.placement_timeout)
        return TrainedModel(name, result.checkpoint, result.metrics)

    def train_task(self, *, rank_loss: str | None = None, dropout: float | None = None,
                   members: int = 0) -> TrainedModel:
        """The task model (or ``members`` of them in parallel, each on every labeled image), trained on the
        labeled images and evaluated on the held-out ones.

        ``rank_loss`` ("margin" or "bce") adds the loss-prediction module; ``dropout`` overrides the
        preset's dropout before the classifier.
        """
        cfg = self.config
        check_image_size(self.meta, cfg.task.image_size)
        num_classes = check_labels(cfg.pool, self.labeled_ids, self.imported_labels)
        splits = {"train": self.labeled_ids}
        if self.holdout_ids is not None:
            check_labels(cfg.pool, self.holdout_ids, self.imported_labels)   # evaluating needs their labels too
            splits["eval"] = self.holdout_ids
        if self.imported_labels is None:
            datasets = labeled_datasets(cfg.pool, splits, self.meta, cfg.task.image_size)
        else:
            decode = DecodeForTraining(self.meta, cfg.task.image_size)
            datasets = {name: filter_ids(self._pool(with_labels=True), ids).map_batches(decode, batch_format="numpy")
                        for name, ids in splits.items()}
        model_args = {"num_classes": num_classes, "in_channels": self.meta.channels, "rank_loss": rank_loss,
                      "dropout": dropout}
        per_worker = len(self.labeled_ids) if members else math.ceil(len(self.labeled_ids) / max(1, cfg.workers))
        task = scheduled(cfg.task, per_worker)
        loop = TaskLoopConfig(task, cfg.seed, members, model_args, evaluates="eval" in datasets)
        trained = self._fit(task_train_loop_per_worker, loop, datasets, name="ensemble" if members else "task",
                            workers=min(cfg.workers, members) if members else None,
                            split=[] if members else ["train"])
        return dataclasses.replace(trained, name="task", num_classes=num_classes,
                                   settings={"rank_loss": rank_loss, "dropout": dropout, "members": members})

    def train_vaal(self, vaal: VAALConfig | None = None, columns: dict[str, ray.data.Dataset] | None = None
                   ) -> TrainedModel:
        """VAAL's VAE + D (``vaal``: the round's VAALConfig unless given): over the pool streamed from its
        shards, or (TA-VAAL) conditioned on a rank, over ``columns`` = {'labeled', 'unlabeled'} datasets of
        pixels and rank."""
        cfg = self.config
        vaal = vaal or cfg.vaal
        check_image_size(self.meta, vaal.image_size)
        source = None if columns else pool_source(cfg.pool, self.labeled_ids, self.not_unlabeled, self.meta,
                                                  join(self.train_dir, "labeled-images"), cfg.workers)
        loop = VAALLoopConfig(vaal, cfg.seed, self.meta.channels, conditioned=columns is not None, source=source)
        return self._fit(train_loop_per_worker, loop, columns or {}, name="vaal")

    def train_aalu(self, aalu: AALUConfig, columns: dict[str, ray.data.Dataset], num_classes: int) -> TrainedModel:
        """AALU's feature VAE + assistant over ``columns`` = {'labeled', 'unlabeled'} datasets of a task model's
        features and softmax over ``num_classes`` (and the labeled images' losses)."""
        feature_dim = columns["labeled"].take(1)[0]["features"].shape[0]
        loop = AALULoopConfig(aalu, self.config.seed, feature_dim, num_classes)
        return self._fit(aalu_train_loop_per_worker, loop, columns, name="aalu")

    # Ray Data

    def columns(self, spec: ScorerSpec, side: Side, with_labels: bool = False) -> ray.data.Dataset:
        """``side``'s images mapped through the scorer's ``columns`` (a ColumnMaker), as a training set."""
        cfg = self.config
        return stream_columns(self.images(side, with_labels), spec, cfg.scoring, cfg.use_gpu,
                              placement_timeout=cfg.placement_timeout)

    def embeddings(self, spec: ScorerSpec, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), embeddings (N, d) float32) of every one of ``side``'s images, on the driver."""
        cfg = self.config
        return stream_embeddings(self.images(side), spec, cfg.scoring, cfg.use_gpu,
                                 placement_timeout=cfg.placement_timeout)

    def top_k(self, spec: ScorerSpec, subset_factor: int | None = None) -> Selection:
        """The exact top-b of the scorer over the unlabeled images, or over a seeded uniform subset of
        ``subset_factor`` x b of them (the subset method). ``AcquisitionConfig.subset_factor`` overrides
        the strategy's factor (0: the whole pool)."""
        cfg = self.config
        if cfg.acquisition.subset_factor is not None:
            subset_factor = cfg.acquisition.subset_factor
        images = self.images("unlabeled")
        if subset_factor:
            images = filter_ids(images, random_subset(self.unlabeled_ids, subset_factor * cfg.budget,
                                                      self.round_seed))
        return stream_top_k(images, spec, cfg.budget, cfg.scoring, cfg.use_gpu,
                            placement_timeout=cfg.placement_timeout)
