"""Task-model training: plain-torch steps and epochs, and the thin Ray Train shell around them.

One step: cross-entropy of the classifier, plus ``loss_weight`` x a ranking loss of the loss-prediction
module against the detached per-sample cross-entropies (Learning Loss: margin loss; TA-VAAL: Eq. (1)).
After ``loss_detach_epoch`` the module's input features are detached, so the ranking loss stops shaping
the backbone (both authors' codes: ``if epoch > epoch_loss``).

Two ways to use the workers:
- ``members == 0``: one model, DDP over the workers, each worker on its shard of the labeled set;
- ``members == M``: an ensemble, no DDP; worker r of W trains members r, r + W, ... (member m seeded
  seed + m), each on the whole labeled set.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaal_dist.config import TaskConfig
from vaal_dist.models.task import TaskModel
from vaal_dist.models.vaal import pixels_to_input
from vaal_dist.train.common import handed_back, mean_metrics, print_epoch, random_hflip, resume_into, \
    save_state, worker_epoch_seed
from vaal_dist.train.losses import margin_ranking_loss, ranking_bce_loss
from vaal_dist.train.trainer import report


_MEMBER_FILE = re.compile(r"task(?:-(\d+))?\.pt")


def member_file(member: int | None) -> str:
    """The checkpoint file of the one model (None) or of ensemble member ``member``."""
    return "task.pt" if member is None else f"task-{member}.pt"


def member_files(names: Iterable[str]) -> list[str]:
    """The task models' files among ``names`` (a checkpoint folder's listing), in member order."""
    found = {name: _MEMBER_FILE.fullmatch(name) for name in names}
    return sorted((name for name, match in found.items() if match), key=lambda name: int(found[name][1] or 0))


def augment(x: torch.Tensor, cfg: TaskConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image and horizontal flip, per sample; x is float (B, C, S, S)."""
    b, _, s, _ = x.shape
    if cfg.crop_padding:
        p = cfg.crop_padding
        padded = F.pad(x, (p, p, p, p), value=-1.0)            # black, as the papers' RandomCrop pads
        dy, dx = (torch.randint(0, 2 * p + 1, (b,), generator=generator) for _ in range(2))
        rows = (dy[:, None] + torch.arange(s))[:, None, :, None].to(x.device)    # (B, 1, S, 1)
        cols = (dx[:, None] + torch.arange(s))[:, None, None, :].to(x.device)    # (B, 1, 1, S)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        x = padded[batch, torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    return random_hflip(x, generator) if cfg.hflip else x


def task_step(model, opt, x: torch.Tensor, y: torch.Tensor, cfg: TaskConfig, rank_loss: str | None,
              detach: bool) -> dict[str, float]:
    """One SGD step on float inputs (B, C, S, S) and labels (B,)."""
    out, predicted_loss = model(x, detach_stages=detach)
    per_sample = F.cross_entropy(out.logits, y, reduction="none")
    loss = per_sample.mean()
    metrics = {"task_loss": loss.item(), "train_accuracy": (out.logits.argmax(1) == y).float().mean().item()}
    if rank_loss and x.shape[0] >= 2:
        ranking = (margin_ranking_loss(predicted_loss, per_sample, cfg.loss_margin) if rank_loss == "margin"
                   else ranking_bce_loss(predicted_loss, per_sample))
        loss = loss + cfg.loss_weight * ranking
        metrics["rank_loss"] = ranking.item()
    elif rank_loss:     # a 1-image batch has no pair: keep the module in the graph (DDP wants every gradient)
        loss = loss + 0.0 * predicted_loss.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return metrics


def train_task_epoch(model, opt, batches: Iterable[dict], cfg: TaskConfig, epoch: int, rank_loss: str | None,
                     generator: torch.Generator) -> dict[str, float]:
    """One pass over uint8 ``{'pixels', 'label'}`` batches; returns the mean of each metric and the number of
    images."""
    model.train()
    sums: dict[str, float] = {}
    steps = images = 0
    for batch in batches:
        images += len(batch["label"])
        x = augment(pixels_to_input(batch["pixels"]), cfg, generator)
        metrics = task_step(model, opt, x, batch["label"].long(), cfg, rank_loss,
                            detach=epoch > cfg.loss_detach_epoch)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
    if steps == 0:
        raise ValueError("this worker's labeled shard is empty: use fewer workers or label more")
    return {**{k: v / steps for k, v in sums.items()}, "images": images}


@torch.no_grad()
def evaluate(model, batches: Iterable[dict]) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on uint8 ``{'pixels', 'label'}`` batches."""
    model.eval()
    correct = total = 0
    loss = 0.0
    for batch in batches:
        out, _ = model(pixels_to_input(batch["pixels"]))
        y = batch["label"].long()
        correct += (out.logits.argmax(1) == y).sum().item()
        loss += F.cross_entropy(out.logits, y, reduction="sum").item()
        total += len(y)
    return {"eval_accuracy": correct / total, "eval_loss": loss / total} if total else {}


def scheduled(cfg: TaskConfig, images: int) -> TaskConfig:
    """``cfg`` for ``images`` labeled images per worker: at least ``cfg.min_steps`` optimizer steps, so a small
    labeled set is not a few dozen steps. Epochs grow to cover them, and the lr milestones and the loss module's
    detach epoch keep their place in the schedule. A schedule that already has the steps is unchanged."""
    steps_per_epoch = max(1, math.ceil(images / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    if epochs == cfg.epochs:
        return cfg
    stretch = epochs / cfg.epochs
    return dataclasses.replace(cfg, epochs=epochs, milestones=tuple(round(m * stretch) for m in cfg.milestones),
                               loss_detach_epoch=round(cfg.loss_detach_epoch * stretch))


def build_task_model(cfg: TaskConfig, num_classes: int, in_channels: int, rank_loss: str | None,
                     dropout: float | None = None) -> TaskModel:
    return TaskModel(cfg, num_classes, in_channels, with_loss_module=rank_loss is not None, dropout=dropout)


def build_optimizer(model, cfg: TaskConfig):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


def save_task_checkpoint(path: str, model, opt, sched, epoch: int, cfg: TaskConfig, model_args: dict) -> None:
    save_state(path, {"model": model, "opt": opt, "sched": sched}, epoch, _built_from(cfg, model_args))


def _built_from(cfg: TaskConfig, model_args: dict) -> dict:
    """What a task model is built from, as its checkpoint holds it."""
    return {"config": dataclasses.asdict(cfg), "model_args": model_args}


def task_config(d: dict) -> TaskConfig:
    return TaskConfig(**{**d, "milestones": tuple(d["milestones"])})


def task_model_from_state(state: dict) -> TaskModel:
    """The trained model of a checkpoint's state, in eval mode on the CPU."""
    model = build_task_model(task_config(state["config"]), **state["model_args"])
    model.load_state_dict(state["model"])
    return model.eval()


@dataclass(frozen=True)
class TaskLoopConfig:
    """What each task-training worker is given."""

    task: TaskConfig       # scheduled for this run's labeled set (``scheduled``)
    seed: int
    members: int           # 0: one model under DDP; M: an ensemble of M, each on the whole labeled set
    model_args: dict       # build_task_model's num_classes, in_channels, rank_loss, dropout
    evaluates: bool        # a held-out "eval" dataset comes along, scored after the last epoch


def members_of(rank: int, world: int, members: int) -> list[int | None]:
    """The ensemble members worker ``rank`` trains (round-robin), or [None]: one model shared by DDP."""
    return list(range(rank, members, world)) if members else [None]


def task_train_loop_per_worker(loop: TaskLoopConfig) -> None:
    """Ray Train entry: this worker's member(s) trained epoch by epoch, a checkpoint reported after each."""
    import ray.train
    import ray.train.torch

    cfg = loop.task
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    members = members_of(rank, ctx.get_world_size(), loop.members)
    trained = [_ModelInTraining(loop, m) for m in members]
    start_epoch = min(t.epoch for t in trained)    # the driver gives every worker at least one member

    def batches(name, shuffle_seed=None):
        kwargs = ({"local_shuffle_seed": shuffle_seed, "local_shuffle_buffer_size": 4 * cfg.batch_size}
                  if shuffle_seed is not None else {})
        yield from ray.train.get_dataset_shard(name).iter_torch_batches(batch_size=cfg.batch_size, **kwargs)

    if handed_back(start_epoch, cfg.epochs, rank):
        return
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        per_model = []
        for t in trained:
            # An ensemble member's randomness is its own (seed + m), whichever worker trains it.
            epoch_seed = worker_epoch_seed(t.seed, rank if t.member is None else 0, epoch)
            torch.manual_seed(epoch_seed)
            metrics = train_task_epoch(t.model, t.opt, batches("train", epoch_seed), cfg, epoch,
                                       loop.model_args["rank_loss"], torch.Generator().manual_seed(epoch_seed))
            t.sched.step()
            if epoch + 1 == cfg.epochs and loop.evaluates:
                metrics.update(evaluate(t.model, batches("eval")))
            per_model.append(metrics)
        metrics = mean_metrics(per_model)
        if loop.members:                            # and each of this worker's members on its own
            metrics.update({f"member_{t.member}/{k}": v for t, m in zip(trained, per_model) for k, v in m.items()})
        metrics.update(epoch=epoch + 1, resumed_from_epoch=start_epoch, lr=trained[0].sched.get_last_lr()[0],
                       epoch_seconds=time.perf_counter() - started)
        # The models train side by side: DDP's replicas on equal shards, or every member on the whole set.
        models = loop.members or ctx.get_world_size()
        print_epoch(epoch + 1, cfg.epochs, metrics["epoch_seconds"], round(metrics["images"] * models), metrics)
        writers = trained if (rank == 0 or loop.members) else []   # ensembles: a file per member

        def write(d, epoch=epoch + 1):
            for t in writers:
                save_task_checkpoint(os.path.join(d, member_file(t.member)), t.model, t.opt, t.sched,
                                     epoch, cfg, loop.model_args)
        report(metrics, write if writers else None)


class _ModelInTraining:
    """One model on this worker (an ensemble member, or the DDP replica) with its optimizer and schedule."""

    def __init__(self, loop: TaskLoopConfig, member: int | None):
        import ray.train.torch

        self.member = member
        cfg = loop.task
        self.seed = loop.seed + (member or 0)
        torch.manual_seed(self.seed)                 # DDP: identical initial weights on every rank
        ddp = member is None
        self.model = ray.train.torch.prepare_model(
            build_task_model(cfg, **loop.model_args), parallel_strategy="ddp" if ddp else None,
            parallel_strategy_kwargs={"broadcast_buffers": False} if ddp else None)
        self.opt, self.sched = build_optimizer(self.model, cfg)   # after prepare_model: on the params' device
        self.epoch = resume_into(member_file(member), _built_from(cfg, loop.model_args),
                                 model=self.model, opt=self.opt, sched=self.sched)
