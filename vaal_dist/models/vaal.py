"""VAAL's beta-VAE and discriminator (Sinha et al., ICCV 2019; layer shapes from the authors' code)."""
from __future__ import annotations

import torch
from torch import nn

from vaal_dist.config import VAALConfig


def _kaiming_init(module: nn.Module) -> None:
    # The authors' code initialises every conv/linear with kaiming-normal and zero bias.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _conv_block(c_in: int, c_out: int, transpose: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    return [conv(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


class VAE(nn.Module):
    """Four stride-2 convs down to (C4, S/16, S/16), a Gaussian latent, and the mirror image up."""

    def __init__(self, cfg: VAALConfig, in_channels: int, cond_dim: int = 0):
        super().__init__()
        if cfg.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {cfg.image_size}")
        c1, c2, c3, c4 = cfg.channels
        self.bottom = cfg.image_size // 16   # encoder output side (2 for 32x32)
        self.top = cfg.image_size // 8       # decoder input side (4 for 32x32)
        self.c4 = c4
        self.encoder = nn.Sequential(
            *_conv_block(in_channels, c1), *_conv_block(c1, c2),
            *_conv_block(c2, c3), *_conv_block(c3, c4), nn.Flatten(),
        )
        flat = c4 * self.bottom ** 2
        self.fc_mu = nn.Linear(flat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(flat, cfg.latent_dim)
        self.fc_up = nn.Linear(cfg.latent_dim + cond_dim, c4 * self.top ** 2)   # TA-VAAL decodes [z, r]
        self.decoder = nn.Sequential(
            *_conv_block(c4, c3, transpose=True), *_conv_block(c3, c2, transpose=True),
            *_conv_block(c2, c1, transpose=True), nn.ConvTranspose2d(c1, in_channels, 1),
        )
        self.apply(_kaiming_init)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """mu only: all that selection needs."""
        return self.fc_mu(self.encoder(x))  # (B, z)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recon, mu, logvar); ``cond`` (B,) is appended to z before decoding (TA-VAAL's sigmoid(r))."""
        h = self.encoder(x)                                   # (B, C4 * bottom^2)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)         # (B, z) each
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        if cond is not None:
            z = torch.cat([z, cond[:, None]], 1)
        up = self.fc_up(z).view(-1, self.c4, self.top, self.top)
        return self.decoder(up), mu, logvar                    # recon (B, C, S, S)


class Discriminator(nn.Module):
    """MLP on the latent mean (TA-VAAL: on [mu, r]; the "D only" ablation: on pixels); the logit of P(labeled)."""

    def __init__(self, cfg: VAALConfig, cond_dim: int = 0, in_dim: int | None = None):
        super().__init__()
        if cfg.disc_layers < 2:
            raise ValueError(f"disc_layers must be >= 2, got {cfg.disc_layers}")
        dims = [(in_dim or cfg.latent_dim) + cond_dim] + [cfg.disc_hidden] * (cfg.disc_layers - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(True)]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)
        self.apply(_kaiming_init)

    def forward(self, mu: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            mu = torch.cat([mu, cond[:, None]], 1)
        return self.net(mu).squeeze(-1)  # (B,) logits; sigmoid gives D(mu)


def pixels_to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float in [-1, 1], the authors' Normalize(0.5, 0.5); runs on pixels' device."""
    return pixels.float().div_(127.5).sub_(1.0)
