"""What every task-aware strategy shares: train the task model on Ray Train, load it in scoring actors."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import ray.train
import torch

from vaal_dist.config import TaskConfig
from vaal_dist.models.task import TaskModel
from vaal_dist.pool.dataset import labeled_datasets
from vaal_dist.pool.images import check_image_size
from vaal_dist.pool.io import PoolMeta, check_labels
from vaal_dist.strategies.base import RoundInputs, model_input, scorer_device
from vaal_dist.train.common import load_checkpoint
from vaal_dist.train.task_loop import task_config, task_model_from_state, task_train_loop_per_worker


def train_task_model(inputs: RoundInputs, *, rank_loss: str | None = None, dropout: float | None = None,
                     members: int = 0) -> tuple[dict, dict]:
    """Train the task model (or ``members`` of them in parallel) on the labeled images.

    Returns (scorer kwargs, run-record facts). ``rank_loss`` ("margin" or "bce") adds the loss-prediction
    module; ``dropout`` overrides the preset's dropout before the classifier.
    """
    cfg = inputs.config
    check_image_size(inputs.meta, cfg.task.image_size)
    num_classes = check_labels(cfg.pool, inputs.labeled_ids)
    splits = {"train": inputs.labeled_ids}
    if inputs.holdout_ids is not None:
        check_labels(cfg.pool, inputs.holdout_ids)          # evaluating needs their labels too
        splits["eval"] = inputs.holdout_ids
    datasets = labeled_datasets(cfg.pool, splits, inputs.meta, cfg.task.image_size)
    model_args = {"num_classes": num_classes, "in_channels": inputs.meta.channels, "rank_loss": rank_loss,
                  "dropout": dropout}
    loop_config = {"task": dataclasses.asdict(cfg.task), "seed": cfg.seed, "members": members,
                   "model_args": model_args, "datasets": list(datasets)}
    result = inputs.fit(task_train_loop_per_worker, loop_config, datasets, name="ensemble" if members else "task",
                        workers=min(cfg.workers, members) if members else None,
                        split=[] if members else ["train"])     # each ensemble member sees every labeled image
    return ({"checkpoint": result.checkpoint, "meta": inputs.meta, "use_gpu": cfg.use_gpu},
            {"task_checkpoint": result.checkpoint.path, "task_last_epoch": result.metrics, "num_classes": num_classes})


def load_task_models(checkpoint: ray.train.Checkpoint, device: torch.device) -> tuple[list[TaskModel], TaskConfig]:
    """The task model(s) of a checkpoint in eval mode on ``device`` (one, or every ensemble member), and
    the config they were trained with."""
    with checkpoint.as_directory() as d:
        files = sorted((f for f in os.listdir(d) if re.fullmatch(r"task(-\d+)?\.pt", f)),
                       key=lambda f: int(re.sub(r"\D", "", f) or 0))
        states = [load_checkpoint(os.path.join(d, f)) for f in files]
    return [task_model_from_state(s).to(device) for s in states], task_config(states[0]["config"])


class TaskScorer:
    """Loads the task model(s) once per scoring actor; subclasses turn its outputs into scores."""

    def __init__(self, checkpoint: ray.train.Checkpoint, meta: PoolMeta, use_gpu: bool = False):
        self.device = scorer_device(use_gpu)
        self.models, task_cfg = load_task_models(checkpoint, self.device)
        self.model = self.models[0]
        self.meta, self.size = meta, task_cfg.image_size
        self.embedding_dim = self.model.net.feature_dim

    def inputs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return model_input(batch, self.meta, self.size, self.device)

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Penultimate features (B, D): Core-set's embedding."""
        return self.model.net(self.inputs(batch)).features.float().cpu().numpy()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of (B, C) probabilities; 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def variation_ratio(votes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - (count of the modal class) / T for (T, B) class votes."""
    counts = torch.nn.functional.one_hot(votes, num_classes).sum(0)       # (B, C)
    return 1.0 - counts.max(-1).values.double() / votes.shape[0]
