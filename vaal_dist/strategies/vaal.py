"""VAAL: pick the unlabeled images the discriminator is most sure are unlabeled (lowest D(mu))."""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
import torch

from vaal_dist.acquisition import least_discriminated
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.scoring.spec import scorer_device
from vaal_dist.strategies.base import TopKStrategy, model_input
from vaal_dist.train.common import load_checkpoint
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, config_from_state


class VAALScorer:
    """Encoder mean + discriminator in eval mode; score = -logit D(mu), so the lowest D ranks first."""

    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, use_gpu: bool = False):
        with checkpoint.as_directory() as d:
            state = load_checkpoint(os.path.join(d, CHECKPOINT_FILE))
        cfg = config_from_state(state)
        self.device = scorer_device(use_gpu)
        vae, disc = build_models(cfg, state["in_channels"], state["conditioned"])
        vae.load_state_dict(state["vae"])
        disc.load_state_dict(state["disc"])
        self.vae = vae.to(self.device).eval()
        self.disc = disc.to(self.device).eval()
        self.meta, self.size, self.embedding_dim = meta, cfg.image_size, cfg.latent_dim
        self.disc_on_pixels = cfg.disc_on_pixels

    def inputs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return model_input(batch, self.meta, self.size, self.device)

    def mu(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return self.vae.encode_mean(self.inputs(batch))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        seen = self.inputs(batch).flatten(1) if self.disc_on_pixels else self.mu(batch)
        return least_discriminated(self.disc(seen)).double().cpu().numpy()

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder mean mu, (B, z): the VAE embedding Core-set can use."""
        return self.mu(batch).float().cpu().numpy()


class VAAL(TopKStrategy):
    name = "vaal"
    trains = ("vaal",)
    vaal_overrides: ClassVar[dict] = {}      # VAALConfig fields an ablation changes

    def train(self, inputs: RoundInputs) -> Trained:
        vaal = inputs.train_vaal(dataclasses.replace(inputs.config.vaal, **self.vaal_overrides))
        return Trained(inputs.scorer_spec(VAALScorer, checkpoint=vaal.checkpoint), (vaal,))


STRATEGIES = (VAAL,)
