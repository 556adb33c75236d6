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
import os
import reprlib
import time
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vaal_dist.config import VAALConfig
from vaal_dist.errors import InputError
from vaal_dist.models.vaal import VAE, Discriminator, pixels_to_input
from vaal_dist.train.trainer import latest_checkpoint, report

CHECKPOINT_FILE = "vaal.pt"


def _flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5    # (B,) on CPU for reproducibility
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


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
            seen = _unwrap(vae).encode_mean(x)
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
            x_l, x_u = _flip(x_l, generator), _flip(x_u, generator)
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
    torch.save({"vae": vae.state_dict(), "disc": disc.state_dict(),
                "opt_vae": opt_vae.state_dict(), "opt_disc": opt_disc.state_dict(),
                "epoch": epoch, "config": dataclasses.asdict(cfg), "in_channels": in_channels,
                "conditioned": conditioned},
               path)


def load_checkpoint(path: str, expected: dict | None = None, free: tuple[str, ...] = ()) -> dict:
    """A checkpoint's state, loaded weights-only (no arbitrary unpickling) and memory-mapped (its tensors
    are read from the file as they are used, not allocated first).

    ``expected``: the entries models are built from (``{"config": ..., "in_channels": ...}``). A checkpoint
    holding other values is refused, naming it and the fields, before anything is built from it: its
    config could ask for any model size. ``free``: the fields that may differ (``"config.epochs"``).
    """
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    differing = [f"{field}: {values}" for field, values in _differing(state, expected or {}) if field not in free]
    if differing:
        raise InputError(f"checkpoint {path} is not this round's: {'; '.join(differing)}")
    return state


def _differing(state: dict, expected: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(field, 'checkpoint X, round Y') for each field of ``expected`` (nested dicts field by field) that
    ``state`` lacks or holds otherwise; fields only ``state`` has count too."""
    out = []
    for key in sorted(expected.keys() | (state.keys() if prefix else set()), key=str):
        have, want = state.get(key), expected.get(key)
        if isinstance(have, dict) and isinstance(want, dict):
            out += _differing(have, want, f"{prefix}{key}.")
        elif _plain(have) != _plain(want):
            out.append((f"{prefix}{key}", f"checkpoint {reprlib.repr(have)}, round {reprlib.repr(want)}"))
    return out


def _plain(value):
    return tuple(value) if isinstance(value, list) else value     # a tuple field may come back a list


def config_from_state(state: dict) -> VAALConfig:
    cfg = dict(state["config"])
    cfg["channels"] = tuple(cfg["channels"])
    return VAALConfig(**cfg)


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) * 1009 + rank


def _labeled_cycle(shard, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless labeled batches, reshuffled on every pass."""
    for cycle in range(1 << 62):
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, local_shuffle_seed=seed + cycle,
                                              local_shuffle_buffer_size=4 * batch_size):
            empty = False
            yield batch
        if empty:
            raise ValueError("this worker's labeled shard is empty: use fewer workers or label more")


@contextlib.contextmanager
def _epoch_batches(config: dict, cfg: VAALConfig, epoch: int, ctx):
    """(labeled, unlabeled) batches of one epoch: streamed from the pool's shards (``config["source"]``,
    a ``PoolSource``), or, for TA-VAAL's model-output columns, from Ray Train's dataset shards."""
    import ray.train
    import ray.train.torch

    rank, seed = ctx.get_world_rank(), config["seed"]
    source = config.get("source")
    if source is not None:
        labeled, unlabeled = source.epoch(cfg.image_size, cfg.batch_size, rank=rank, workers=ctx.get_world_size(),
                                          seed=_epoch_seed(seed, 0, epoch), limit=cfg.epoch_images,
                                          pin=ray.train.torch.get_device().type == "cuda")
    else:
        epoch_seed = _epoch_seed(seed, rank, epoch)
        labeled = _labeled_cycle(ray.train.get_dataset_shard("labeled"), cfg.batch_size, epoch_seed)
        unlabeled = ray.train.get_dataset_shard("unlabeled").iter_torch_batches(
            batch_size=cfg.batch_size, local_shuffle_seed=epoch_seed, local_shuffle_buffer_size=4 * cfg.batch_size)
    try:
        yield labeled, unlabeled
    finally:
        for batches in (labeled, unlabeled):
            if hasattr(batches, "close"):
                batches.close()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: DDP VAE + D over this worker's labeled/unlabeled shards, checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    cfg = VAALConfig(**config["vaal"])
    seed, in_channels, conditioned = config["seed"], config["in_channels"], config["conditioned"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(seed)                  # identical initial weights on every rank
    ddp = {"broadcast_buffers": False}
    vae, disc = (ray.train.torch.prepare_model(m, parallel_strategy_kwargs=ddp)
                 for m in build_models(cfg, in_channels, conditioned))
    # Optimizers after prepare_model: their state must live on the parameters' device.
    opt_vae = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr)
    start_epoch = resume_into(CHECKPOINT_FILE, {"config": dataclasses.asdict(cfg), "in_channels": in_channels,
                                                "conditioned": conditioned},
                              vae=vae, disc=disc, opt_vae=opt_vae, opt_disc=opt_disc)
    if handed_back(start_epoch, cfg.epochs, rank):
        return
    for epoch in range(start_epoch, cfg.epochs):
        epoch_seed = _epoch_seed(seed, rank, epoch)
        torch.manual_seed(epoch_seed)        # reparameterisation noise: a function of (seed, rank, epoch)
        flips = torch.Generator().manual_seed(epoch_seed)
        started = time.perf_counter()
        with _epoch_batches(config, cfg, epoch, ctx) as (labeled, unlabeled):
            metrics = train_epoch(vae, disc, opt_vae, opt_disc, labeled, unlabeled, cfg, flips)
        metrics.update(epoch=epoch + 1, resumed_from_epoch=start_epoch, epoch_seconds=time.perf_counter() - started)
        report(metrics, (lambda d: save_checkpoint(os.path.join(d, CHECKPOINT_FILE), _unwrap(vae), _unwrap(disc),
                                                   opt_vae, opt_disc, epoch + 1, cfg, in_channels, conditioned))
               if rank == 0 else None)


def resume_into(file: str, expected: dict, **parts) -> int:
    """Load ``file`` of the run's latest checkpoint, if any, into ``parts`` (state key -> module, optimizer
    or scheduler; DDP wrappers are looked through). Returns the epoch it reached, 0 for a fresh run.

    The checkpoint must hold ``expected`` (the run's config and model arguments, see ``load_checkpoint``),
    but for the epoch count, which a resumed run may raise:
    every checkpoint a round meets on disk comes through here, so the scorers, which build their models
    from the checkpoint the run reports, only ever see this round's config. Every rank loads the same
    state, so no broadcast is needed.
    """
    resumed = latest_checkpoint()
    if not resumed:
        return 0
    with resumed.as_directory() as d:
        state = load_checkpoint(os.path.join(d, file), expected, free=("config.epochs",))
    for key, part in parts.items():
        _unwrap(part).load_state_dict(state[key])
    return state["epoch"]


def handed_back(start_epoch: int, epochs: int, rank: int) -> bool:
    """Whether the run had finished before this (re)start; if so its checkpoint is reported again."""
    import ray.train

    if start_epoch < epochs:
        return False
    ray.train.report({"epoch": start_epoch, "resumed_from_epoch": start_epoch},
                     checkpoint=latest_checkpoint() if rank == 0 else None)
    return True


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
