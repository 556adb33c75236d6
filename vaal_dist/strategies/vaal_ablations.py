"""VAAL's ablations (Sinha et al., ICCV 2019, Sec. "Ablation"), selectable by name.

- ``vaal_disc_only``: "only a discriminator trained on the image space" -- VAAL's 5-layer D on the
  flattened image in [-1, 1] (C x S x S inputs), no VAE; selection as VAAL's, the lowest D.
- ``vaal_frozen_vae``: "frozen VAE with D" -- D is trained on the means of a VAE that is never trained
  (it keeps its seeded initial weights); selection as VAAL's, the lowest D.
- ``vaal_vae_w2``: "VAE only" -- the VAE trains without the adversarial term (lambda = 0); each
  unlabeled image is scored by the 2-Wasserstein distance between its posterior N(mu, diag sigma^2) and
  the labeled set's centroid, the largest first. For diagonal Gaussians the W2 distance has the closed
  form sqrt(|mu - mu_c|^2 + |sigma - sigma_c|^2), and the W2 barycenter of the labeled posteriors is
  N(mean mu, diag(mean sigma)^2): that is the centroid used.
"""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.acquisition import w2_to_centroid
from vaal_dist.pool.io import PoolMeta
from vaal_dist.round_inputs import CheckpointFiles, RoundInputs, Trained
from vaal_dist.strategies.vaal import VAAL, VAALScorer


class VAALDiscOnly(VAAL):
    name = "vaal_disc_only"
    vaal_overrides = {"train_vae": False, "disc_on_pixels": True}


class VAALFrozenVAE(VAAL):
    name = "vaal_frozen_vae"
    vaal_overrides = {"train_vae": False}


class W2Scorer(VAALScorer):
    """score = W2(N(mu, sigma^2), N(mu_c, sigma_c^2)); ``embed`` gives [mu, sigma] for the centroid."""

    def __init__(self, checkpoint: CheckpointFiles, meta: PoolMeta, use_gpu: bool = False,
                 centroid: list[float] | None = None):
        super().__init__(checkpoint, meta, use_gpu)
        self.centroid = None if centroid is None else torch.tensor(centroid, dtype=torch.float64, device=self.device)
        self.embedding_dim = 2 * self.embedding_dim

    def _gaussian(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        h = self.vae.encoder(self.inputs(batch))
        return torch.cat([self.vae.fc_mu(h), torch.exp(0.5 * self.vae.fc_logvar(h))], 1)   # (B, 2z)

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._gaussian(batch).float().cpu().numpy()

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.centroid is None:
            raise ValueError("W2Scorer needs the labeled centroid to score")
        return w2_to_centroid(self._gaussian(batch).double(), self.centroid).cpu().numpy()


class VAEOnlyW2(VAAL):
    name = "vaal_vae_w2"
    vaal_overrides = {"adversary_weight": 0.0}

    def train(self, inputs: RoundInputs) -> Trained:
        (vae,) = super().train(inputs).models
        gaussians = inputs.scorer_spec(W2Scorer, checkpoint=vae.checkpoint)
        _, labeled = inputs.embeddings(gaussians, "labeled")
        return Trained(gaussians.with_kwargs(centroid=labeled.astype(np.float64).mean(0).tolist()), (vae,))


STRATEGIES = (VAALDiscOnly, VAALFrozenVAE, VAEOnlyW2)
