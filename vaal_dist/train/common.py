"""What the training loops share: per-epoch seeds, random flips, labeled batches on a loop, metric means,
checkpoints (loading one safely, resuming a run from its latest, handing a finished run back), the epochs
of an adversarial pair (VAAL's and TA-VAAL's VAE and D, AALU's VAE and assistant) and the one line rank 0
prints per epoch.
"""
from __future__ import annotations

import os
import reprlib
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from vaal_dist.errors import InputError
from vaal_dist.train.trainer import latest_checkpoint, report


def worker_epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one epoch on one worker: a function of (seed, rank, epoch) alone, so a resumed run draws
    what an uninterrupted one did."""
    return (seed * 1_000_003 + epoch) * 1009 + rank


def random_hflip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` (B, C, S, S) with each image flipped left-right with probability 1/2, drawn from ``generator``."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5    # (B,) on CPU for reproducibility
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def labeled_cycle(shard, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless labeled batches, reshuffled on every pass."""
    for cycle in range(1 << 62):
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, local_shuffle_seed=seed + cycle,
                                              local_shuffle_buffer_size=4 * batch_size):
            empty = False
            yield batch
        if empty:
            raise ValueError("this worker's labeled shard is empty: use fewer workers or label more")


def mean_metrics(per_model: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the dicts (every dict holds the keys of the first)."""
    return {k: sum(m[k] for m in per_model) / len(per_model) for k in per_model[0]}


# What an epoch's line shows, in this order: (metric key, label). A loop reports only some of them.
EPOCH_FIELDS = (("recon", "recon"), ("kl", "KL"), ("vae_adv", "VAE adv"), ("disc_loss", "D loss"), ("d_auc", "D AUC"),
                ("recon_kl", "recon+KL"), ("a_adv", "A adv"), ("a_rank", "A rank"), ("a_auc", "A AUC"),
                ("task_loss", "loss"), ("rank_loss", "rank loss"), ("train_accuracy", "train acc"),
                ("eval_accuracy", "held-out acc"))


EPOCH_LINE_SECONDS = 10.0
_last_epoch_line = float("-inf")      # time.monotonic() of this process's last epoch line


def epoch_line(name: str, epoch: int, epochs: int, seconds: float, images: int, metrics: dict) -> str:
    """One line for one epoch: ``vaal epoch 2/10: 31.4 s, 152 images/s, recon 0.0612, ..., D AUC 0.553``."""
    rate = f"{images / seconds:,.0f} images/s" if seconds > 0 else "- images/s"
    shown = [f"{label} {metrics[key]:.4g}" for key, label in EPOCH_FIELDS if key in metrics]
    return f"{name} epoch {epoch}/{epochs}: " + ", ".join([f"{seconds:.1f} s", rate, *shown])


def print_epoch(epoch: int, epochs: int, seconds: float, images: int, metrics: dict) -> None:
    """Rank 0 prints the epoch's line (Ray forwards a worker's output to the driver's console); ``images``:
    what all the workers trained on in the epoch. Epochs shorter than ``EPOCH_LINE_SECONDS`` are thinned to
    one line per that many seconds, the first and last always shown (an experiment's small task models run
    50 one-second epochs a round)."""
    import ray.train

    global _last_epoch_line
    ctx = ray.train.get_context()
    now = time.monotonic()
    if ctx.get_world_rank() == 0 and (epoch in (1, epochs) or now - _last_epoch_line >= EPOCH_LINE_SECONDS):
        _last_epoch_line = now
        # Not print(): Ray Train patches it in its workers to log through the root logger too (printed twice).
        sys.stdout.write(epoch_line(ctx.get_experiment_name(), epoch, epochs, seconds, images, metrics) + "\n")
        sys.stdout.flush()


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


def adversarial_epochs(parts: dict, file: str, expected: dict, epochs: int, seed: int, rank: int,
                       train_one: Callable[[int, int], dict[str, float]]) -> None:
    """The epochs of an adversarial pair on one Ray Train worker. ``parts`` (state key -> model or
    optimizer) resume from the run's latest checkpoint; then each epoch left seeds torch from (seed, rank,
    epoch), runs ``train_one(epoch, epoch_seed)`` and reports its metrics, rank 0 with a checkpoint
    ``file`` (``save_state``: the parts, the epoch reached and ``expected``)."""
    start_epoch = resume_into(file, expected, **parts)
    if handed_back(start_epoch, epochs, rank):
        return
    for epoch in range(start_epoch, epochs):
        epoch_seed = worker_epoch_seed(seed, rank, epoch)
        torch.manual_seed(epoch_seed)        # reparameterisation noise: a function of (seed, rank, epoch)
        started = time.perf_counter()
        metrics = train_one(epoch, epoch_seed)
        metrics.update(epoch=epoch + 1, resumed_from_epoch=start_epoch, epoch_seconds=time.perf_counter() - started)
        # DDP steps in lockstep, so every worker visits as many unlabeled images as rank 0 (to the last batch).
        print_epoch(epoch + 1, epochs, metrics["epoch_seconds"], metrics["unlabeled_images"] * world_size(), metrics)
        report(metrics, (lambda d: save_state(os.path.join(d, file), parts, epoch + 1, expected)) if rank == 0 else None)


def world_size() -> int:
    import ray.train

    return ray.train.get_context().get_world_size()


def save_state(path: str, parts: dict, epoch: int, expected: dict) -> None:
    """A checkpoint ``resume_into`` reads back: each part's state (DDP wrappers looked through), the epoch
    reached, and ``expected`` (the config and model arguments the models are built from)."""
    torch.save({**{key: unwrap(part).state_dict() for key, part in parts.items()}, "epoch": epoch, **expected}, path)


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
        unwrap(part).load_state_dict(state[key])
    return state["epoch"]


def handed_back(start_epoch: int, epochs: int, rank: int) -> bool:
    """Whether the run had finished before this (re)start; if so its checkpoint is reported again."""
    import ray.train

    if start_epoch < epochs:
        return False
    ray.train.report({"epoch": start_epoch, "resumed_from_epoch": start_epoch},
                     checkpoint=latest_checkpoint() if rank == 0 else None)
    return True


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model
