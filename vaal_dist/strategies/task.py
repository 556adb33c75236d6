"""What every task-aware scorer shares: the task model(s) of a checkpoint, loaded once per scoring actor."""
from __future__ import annotations

import os

import numpy as np
import torch

from vaal_dist.config import TaskConfig
from vaal_dist.models.task import TaskModel
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles
from vaal_dist.scoring.spec import Guess, scorer_device
from vaal_dist.strategies.base import model_input
from vaal_dist.train.common import load_checkpoint
from vaal_dist.train.task_loop import member_files, task_config, task_model_from_state


def load_task_models(checkpoint: CheckpointFiles, device: torch.device) -> tuple[list[TaskModel], TaskConfig]:
    """The task model(s) of a checkpoint in eval mode on ``device`` (one, or every ensemble member), and
    the config they were trained with."""
    with checkpoint.as_directory() as d:
        states = [load_checkpoint(os.path.join(d, f)) for f in member_files(os.listdir(d))]
    return [task_model_from_state(s).to(device) for s in states], task_config(states[0]["config"])


def guess(scores: torch.Tensor, probs: torch.Tensor) -> Guess:
    """``scores`` (B,) with the likeliest class of each row of ``probs`` (B, C) and the probability of it."""
    confidence, predicted = probs.max(-1)
    return {"score": scores.double().cpu().numpy(), "predicted": predicted.cpu().numpy(),
            "confidence": confidence.double().cpu().numpy()}


class TaskScorer:
    """Loads the task model(s) once per scoring actor; subclasses turn its outputs into scores."""

    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, use_gpu: bool = False):
        self.device = scorer_device(use_gpu)
        self.models, task_cfg = load_task_models(checkpoint, self.device)
        self.model = self.models[0]
        self.meta, self.size = meta, task_cfg.image_size
        self.embedding_dim = self.model.net.feature_dim

    def inputs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return model_input(batch, self.meta, self.size, self.device)

    def probs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """The task model's softmax, (B, C) float64."""
        return torch.softmax(self.model.net(self.inputs(batch)).logits.double(), -1)

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Penultimate features (B, D): Core-set's embedding."""
        return self.model.net(self.inputs(batch)).features.float().cpu().numpy()


class GuessingScorer(TaskScorer):
    """A task scorer whose ``scored`` gives each image's score and the model's guess from one forward pass."""

    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The scores alone."""
        return self.scored(batch)["score"]
