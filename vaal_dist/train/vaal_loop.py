"""VAAL training: plain-torch steps and epochs, and the thin Ray Train (DDP) shell around them.

One VAE step (Eqs. 1, 2 and 4 of the paper, as in the authors' solver):
    recon MSE(L) + recon MSE(U) + beta * KL(L + U, summed) + lambda_2 * [BCE(D(mu_L), 1) + BCE(D(mu_U), 1)]
One discriminator step (Eq. 3): BCE(D(mu_L), 1) + BCE(D(mu_U), 0), with mu recomputed without gradient.
``vae_steps`` VAE steps (each on a fresh pair of batches) are followed by one D step on the last pair.
Steps return their losses as tensors on the device; an epoch reads them once at its end, so a GPU step
never waits for the host.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaal_dist.config import VAALConfig
from vaal_dist.models.vaal import VAE, Discriminator, pixels_to_input
from vaal_dist.train.common import adversarial_epochs, labeled_cycle, random_hflip, save_state, unwrap, worker_epoch_seed
from vaal_dist.train.pool_batches import PoolSource

CHECKPOINT_FILE = "vaal.pt"


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else torch.cat([a, b])


def vae_step(vae: nn.Module, disc: nn.Module, opt: torch.optim.Optimizer, x_l: torch.Tensor,
             x_u: torch.Tensor, cfg: VAALConfig, r_l: torch.Tensor | None = None,
             r_u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One VAE update on float inputs (B, C, S, S); D's gradients are left for the D step to zero.

    TA-VAAL: ``r_l``/``r_u`` (B,) are the ranker's outputs; the decoder gets sigmoid(r), D gets r.
    """
    n_l = x_l.shape[0]
    x = torch.cat([x_l, x_u])               # one forward: BatchNorm runs once per step (DDP-safe)
    r = _cat(r_l, r_u)
    recon, mu, logvar = vae(x, None if r is None else torch.sigmoid(r))
    mse = F.mse_loss(recon[:n_l], x_l) + F.mse_loss(recon[n_l:], x_u)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())   # summed, as in the authors' code
    no_sync = disc.no_sync() if hasattr(disc, "no_sync") else contextlib.nullcontext()
    with no_sync:                            # D's gradients here are discarded: don't all-reduce them
        logits = disc(mu, r)
        ones = torch.ones_like(logits)
        adv = (F.binary_cross_entropy_with_logits(logits[:n_l], ones[:n_l])
               + F.binary_cross_entropy_with_logits(logits[n_l:], ones[n_l:]))
        loss = mse + cfg.beta * kl + cfg.adversary_weight * adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
    opt.step()
    return {"recon": mse.detach(), "kl": kl.detach(), "vae_adv": adv.detach()}


def disc_step(vae: nn.Module, disc: nn.Module, opt: torch.optim.Optimizer, x_l: torch.Tensor,
              x_u: torch.Tensor, r_l: torch.Tensor | None = None, r_u: torch.Tensor | None = None,
              on_pixels: bool = False) -> dict[str, torch.Tensor]:
    """One discriminator update: labeled -> 1, unlabeled -> 0; D sees mu, or the pixels (``on_pixels``)."""
    n_l = x_l.shape[0]
    r = _cat(r_l, r_u)
    x = torch.cat([x_l, x_u])
    if on_pixels:
        seen = x.flatten(1)
    else:
        with torch.no_grad():       # the encoder alone: the authors' full forward also decodes, unused here
            seen = unwrap(vae).encode_mean(x)
    logits = disc(seen, r)
    target = torch.cat([torch.ones(n_l), torch.zeros(x_u.shape[0])]).to(logits.device)
    loss = (F.binary_cross_entropy_with_logits(logits[:n_l], target[:n_l])
            + F.binary_cross_entropy_with_logits(logits[n_l:], target[n_l:]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    prob = torch.sigmoid(logits.detach())       # before this step's update: D on a pair it has not learned
    return {"disc_loss": loss.detach(), "d_labeled": prob[:n_l].mean(), "d_unlabeled": prob[n_l:].mean(),
            "d_auc": _auc(prob[:n_l], prob[n_l:])}


def separation_auc(high: torch.Tensor, low: torch.Tensor) -> float:
    """ROC AUC of telling ``high`` from ``low`` by their values: P(h > l) + P(h = l) / 2 over all pairs.
    0.5: the two sets look alike (an adversary that is not playing); 1: perfectly told apart."""
    return _auc(high, low).item()


def _auc(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    h, lo = high.float().flatten()[:, None], low.float().flatten()[None, :]
    return (h > lo).float().mean() + 0.5 * (h == lo).float().mean()


def train_epoch(vae, disc, opt_vae, opt_disc, labeled: Iterator[dict], unlabeled: Iterable[dict],
                cfg: VAALConfig, generator: torch.Generator | None = None) -> dict[str, float]:
    """One pass over ``unlabeled`` batches, drawing labeled batches from ``labeled``; the epoch's mean losses
    and the number of unlabeled images it visited.

    Batches are dicts: ``pixels`` (B, C, S, S) uint8 and, for TA-VAAL, ``rank`` (B,) float, on any device:
    they move to the models' device here (asynchronously from pinned memory) and become floats there.
    """
    vae.train()
    disc.train()
    device = next(vae.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(metrics):
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1

    def on_device(batch, key):
        return None if key not in batch else batch[key].to(device, non_blocking=True)

    images = 0
    for step, u in enumerate(unlabeled, start=1):
        lab = next(labeled)
        images += len(u["pixels"])
        x_l, x_u = pixels_to_input(on_device(lab, "pixels")), pixels_to_input(on_device(u, "pixels"))
        r_l, r_u = on_device(lab, "rank"), on_device(u, "rank")
        if cfg.hflip:
            x_l, x_u = random_hflip(x_l, generator), random_hflip(x_u, generator)
        if cfg.train_vae:
            add(vae_step(vae, disc, opt_vae, x_l, x_u, cfg, r_l, r_u))
        if not cfg.train_vae or step % cfg.vae_steps == 0:     # no VAE step to wait for: D sees every pair
            add(disc_step(vae, disc, opt_disc, x_l, x_u, r_l, r_u, cfg.disc_on_pixels))
    return {**{k: (sums[k] / counts[k]).item() for k in sums}, "unlabeled_images": images}


def build_models(cfg: VAALConfig, in_channels: int, conditioned: bool = False) -> tuple[VAE, Discriminator]:
    """VAAL's VAE and D; ``conditioned``: TA-VAAL's, whose decoder and D also take the rank r.

    With ``cfg.disc_on_pixels`` D reads the flattened (C, S, S) image instead of mu.
    """
    cond = 1 if conditioned else 0
    disc_in = in_channels * cfg.image_size ** 2 if cfg.disc_on_pixels else None
    return VAE(cfg, in_channels, cond), Discriminator(cfg, cond, disc_in)


def save_checkpoint(path: str, vae, disc, opt_vae, opt_disc, epoch: int, cfg: VAALConfig,
                    in_channels: int, conditioned: bool = False) -> None:
    save_state(path, {"vae": vae, "disc": disc, "opt_vae": opt_vae, "opt_disc": opt_disc}, epoch,
               _model_args(cfg, in_channels, conditioned))


@dataclass(frozen=True)
class VAALLoopConfig:
    """What each VAAL training worker is given."""

    vaal: VAALConfig
    seed: int
    in_channels: int
    conditioned: bool            # TA-VAAL: on the ranker's output, over Ray Train's dataset shards of columns
    source: PoolSource | None    # VAAL: the pool's shards to stream (None when conditioned)


def _model_args(cfg: VAALConfig, in_channels: int, conditioned: bool) -> dict:
    """What VAAL's models are built from, as a checkpoint holds it."""
    return {"config": dataclasses.asdict(cfg), "in_channels": in_channels, "conditioned": conditioned}


def config_from_state(state: dict) -> VAALConfig:
    cfg = dict(state["config"])
    cfg["channels"] = tuple(cfg["channels"])
    return VAALConfig(**cfg)


@contextlib.contextmanager
def _epoch_batches(loop: VAALLoopConfig, epoch: int, ctx):
    """(labeled, unlabeled) batches of one epoch: streamed from the pool's shards (``loop.source``), or, for
    TA-VAAL's model-output columns, from Ray Train's dataset shards."""
    import ray.train
    import ray.train.torch

    rank, seed, source, cfg = ctx.get_world_rank(), loop.seed, loop.source, loop.vaal
    if source is not None:
        labeled, unlabeled = source.epoch(cfg.image_size, cfg.batch_size, rank=rank, workers=ctx.get_world_size(),
                                          seed=worker_epoch_seed(seed, 0, epoch), limit=cfg.epoch_images,
                                          pin=ray.train.torch.get_device().type == "cuda")
    else:
        epoch_seed = worker_epoch_seed(seed, rank, epoch)
        labeled = labeled_cycle(ray.train.get_dataset_shard("labeled"), cfg.batch_size, epoch_seed)
        unlabeled = ray.train.get_dataset_shard("unlabeled").iter_torch_batches(
            batch_size=cfg.batch_size, local_shuffle_seed=epoch_seed, local_shuffle_buffer_size=4 * cfg.batch_size)
    try:
        yield labeled, unlabeled
    finally:
        for batches in (labeled, unlabeled):
            if hasattr(batches, "close"):
                batches.close()


def train_loop_per_worker(loop: VAALLoopConfig) -> None:
    """Ray Train entry: DDP VAE + D over this worker's labeled/unlabeled shards, checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    cfg, seed, in_channels, conditioned = loop.vaal, loop.seed, loop.in_channels, loop.conditioned
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(seed)                  # identical initial weights on every rank
    ddp = {"broadcast_buffers": False}
    vae, disc = (ray.train.torch.prepare_model(m, parallel_strategy_kwargs=ddp)
                 for m in build_models(cfg, in_channels, conditioned))
    # Optimizers after prepare_model: their state must live on the parameters' device.
    opt_vae = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr)

    def train_one(epoch: int, epoch_seed: int) -> dict[str, float]:
        flips = torch.Generator().manual_seed(epoch_seed)
        with _epoch_batches(loop, epoch, ctx) as (labeled, unlabeled):
            return train_epoch(vae, disc, opt_vae, opt_disc, labeled, unlabeled, cfg, flips)

    adversarial_epochs({"vae": vae, "disc": disc, "opt_vae": opt_vae, "opt_disc": opt_disc}, CHECKPOINT_FILE,
                       _model_args(cfg, in_channels, conditioned), cfg.epochs, seed, rank, train_one)
