"""AALU's networks (Zhu & Wang, ICIP 2020, Sec. 3): 3-layer MLPs for the feature VAE and the assistant A."""
from __future__ import annotations

import torch
from torch import nn

from vaal_dist.config import AALUConfig


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(True), nn.Linear(hidden, hidden), nn.ReLU(True),
                         nn.Linear(hidden, d_out))


class FeatureVAE(nn.Module):
    """A VAE on task-model features f (B, D): encoder f -> (mu, logvar), decoder z -> f."""

    def __init__(self, cfg: AALUConfig, feature_dim: int):
        super().__init__()
        self.encoder = _mlp(feature_dim, cfg.hidden, 2 * cfg.latent_dim)
        self.decoder = _mlp(cfg.latent_dim, cfg.hidden, feature_dim)

    def encode(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(f).chunk(2, dim=-1)
        return mu, logvar                                          # (B, z) each

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(f)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


class Assistant(nn.Module):
    """A: the logit of "unlabeled" from m = [z, softmax prediction] (or z alone in the advVAE ablations)."""

    def __init__(self, cfg: AALUConfig, num_classes: int):
        super().__init__()
        self.use_prediction = cfg.use_prediction
        self.net = _mlp(cfg.latent_dim + (num_classes if cfg.use_prediction else 0), cfg.hidden, 1)

    def forward(self, z: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        m = torch.cat([z, probs], 1) if self.use_prediction else z
        return self.net(m).squeeze(-1)                             # (B,) logits; sigmoid gives A(m)
