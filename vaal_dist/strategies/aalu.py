"""AALU (Zhu & Wang, ICIP 2020): an assistant A on [VAE latent of task features, task prediction].

1. The task model trains on the labeled images (Ray Train).
2. Its penultimate features, softmax predictions and (labeled images only) cross-entropies are computed
   once for the pool (Ray Data actors).
3. The feature VAE and A train adversarially on Ray Train, A also with the ranking loss of Eq. (8).
4. Selection: the b unlabeled images with the **highest** A -- A(z_L) -> 0, A(z_U) -> 1, so the sign is the
   opposite of VAAL's discriminator.

The paper's ablations (Table 1) are the same pipeline with parts switched off:
``aalu_advvae`` (A on z, adversarial only), ``aalu_advvae_pred`` (A on [z, p], adversarial only),
``aalu_losslearn`` (A on [z, p], ranking loss only), ``aalu_advvae_losslearn`` (A on z, both losses).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F

from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.scoring.spec import Guess
from vaal_dist.strategies.base import TopKStrategy
from vaal_dist.strategies.task import GuessingScorer, TaskScorer, guess
from vaal_dist.train.aalu_loop import CHECKPOINT_FILE, aalu_from_state
from vaal_dist.train.common import load_checkpoint


class FeatureColumns(TaskScorer):
    """Training columns from the task model: features, softmax and, where labels come along, the loss."""

    @torch.inference_mode()
    def columns(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.net(self.inputs(batch))
        cols = {"features": out.features.float().cpu().numpy(),
                "probs": torch.softmax(out.logits.float(), -1).cpu().numpy()}
        if "label" in batch:
            labels = torch.from_numpy(np.asarray(batch["label"], np.int64)).to(out.logits.device)
            cols["loss"] = F.cross_entropy(out.logits.float(), labels, reduction="none").cpu().numpy()
        return cols


class AALUScorer(GuessingScorer):
    """score = logit A([mu(f), softmax]): the highest A first."""

    def __init__(self, checkpoint: CheckpointFiles, aalu_checkpoint: CheckpointFiles, meta: PoolMeta,
                 use_gpu: bool = False):
        super().__init__(checkpoint, meta, use_gpu)
        with aalu_checkpoint.as_directory() as d:
            vae, assistant = aalu_from_state(load_checkpoint(os.path.join(d, CHECKPOINT_FILE)))
        self.vae, self.assistant = vae.to(self.device), assistant.to(self.device)

    @torch.inference_mode()
    def scored(self, batch: dict[str, np.ndarray]) -> Guess:
        out = self.model.net(self.inputs(batch))
        mu, _ = self.vae.encode(out.features)
        return guess(self.assistant(mu, torch.softmax(out.logits, -1)), torch.softmax(out.logits.double(), -1))


class AALU(TopKStrategy):
    name = "aalu"
    trains = ("task", "aalu")
    ablation: dict = {}

    def train(self, inputs: RoundInputs) -> Trained:
        cfg = inputs.config
        aalu = dataclasses.replace(cfg.aalu, **self.ablation)
        if not aalu.adversarial and not aalu.rank_weight:
            raise ValueError("AALU's assistant needs the adversarial loss, the ranking loss, or both")
        task = inputs.train_task()
        features = inputs.scorer_spec(FeatureColumns, checkpoint=task.checkpoint)
        columns = {"labeled": inputs.columns(features, "labeled", with_labels=True),
                   "unlabeled": inputs.columns(features, "unlabeled")}
        assistant = inputs.train_aalu(aalu, columns, task.num_classes)
        scorer = inputs.scorer_spec(AALUScorer, checkpoint=task.checkpoint, aalu_checkpoint=assistant.checkpoint)
        return Trained(scorer, (task, assistant))


class AdvVAE(AALU):
    name = "aalu_advvae"
    ablation = {"use_prediction": False, "rank_weight": 0.0}


class AdvVAEPrediction(AALU):
    name = "aalu_advvae_pred"
    ablation = {"rank_weight": 0.0}


class LossLearn(AALU):
    name = "aalu_losslearn"
    ablation = {"adversarial": False}


class AdvVAELossLearn(AALU):
    name = "aalu_advvae_losslearn"
    ablation = {"use_prediction": False}


STRATEGIES = (AALU, AdvVAE, AdvVAEPrediction, LossLearn, AdvVAELossLearn)
