"""Configs for a VAAL round: frozen dataclasses, one source of defaults, the papers' presets by name.

Where a number comes from the VAAL paper (Sinha et al., ICCV 2019, Table/hyperparameter list) or the
authors' public code (github.com/sinhasam/vaal), the comment says so; choices the papers leave open are
listed in docs/design-choices.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VAALConfig:
    """The VAE + discriminator and how they are trained."""

    image_size: int = 32                   # VAE input side; 32x32 for CIFAR (paper Table)
    channels: tuple[int, ...] = (128, 256, 512, 1024)  # 4 stride-2 convs (authors' code)
    latent_dim: int = 32                   # d in the paper's table
    disc_hidden: int = 512                 # authors' code
    disc_layers: int = 5                   # paper: "5-layer MLP" (authors' code has 3)
    beta: float = 1.0                      # beta-VAE weight on KL
    adversary_weight: float = 1.0          # lambda_2 (1 for CIFAR, 10 for ImageNet/Caltech)
    vae_lr: float = 5e-4                   # alpha_1, Adam
    disc_lr: float = 5e-4                  # alpha_2, Adam
    vae_steps: int = 2                     # VAE steps per discriminator step (authors' code)
    batch_size: int = 64                   # per pool per step, per worker
    epochs: int = 100                      # one epoch = one pass over the unlabeled shard
    hflip: bool = True                     # authors' CIFAR transform: RandomHorizontalFlip


@dataclass(frozen=True)
class ScoringConfig:
    """How the unlabeled pool is streamed through the scoring actors."""

    batch_size: int = 256
    num_actors: int | None = None          # None: one per GPU, else one per CPU
    cpus_per_actor: float = 0.5            # fractional: 1 CPU/actor on a 2-CPU node starves the reads
    threads_per_actor: int | None = None   # torch intra-op threads; None: Ray's default
    block_bytes: int = 8 * 1024 ** 2       # Ray Data block size for the scoring read


@dataclass(frozen=True)
class RoundConfig:
    """One selection round: where the data is, how much to select, how to train and score."""

    pool: str
    labeled: str
    out: str
    budget: int
    strategy: str = "vaal"
    preset: str = "cifar10"
    vaal: VAALConfig = field(default_factory=VAALConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, VAALConfig] = {
    # VAAL paper, CIFAR-10/100 row: d=32, lr 5e-4, lambda_2=1, beta=1, batch 64, 100 epochs.
    "cifar10": VAALConfig(),
    "cifar100": VAALConfig(),
    # ImageNet row: d=64, lambda_2=10, batch 64, 100 epochs, D lr 1e-3. The row's alpha_1=0.1 cannot be an
    # Adam rate for the VAE (it diverges); the authors' code uses 5e-4 for the VAE everywhere.
    # Images are downsampled to 64x64 for the VAE (the authors' ImageNet VAE takes 64x64 as well).
    "imagenet": VAALConfig(image_size=64, latent_dim=64, adversary_weight=10.0, disc_lr=1e-3),
    # Same algorithm, small enough for a 2-core CPU: quarter-width convs, 2 epochs, no flips (digits).
    "cpu": VAALConfig(channels=(32, 64, 128, 256), disc_hidden=128, epochs=2, hflip=False),
}


def preset(name: str, **overrides) -> VAALConfig:
    """The named paper preset, with field overrides (e.g. ``epochs=1``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
