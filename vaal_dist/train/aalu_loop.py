"""AALU training: the feature VAE and the assistant A, adversarially, plus A's ranking loss (Eqs. 1-9).

VAE step (Eq. 6):  MSE(recon f) + KL  +  beta * [BCE(A(m_L), 0) + BCE(A(m_U), 0)]
A step   (Eq. 9):  BCE(A(m_L), 0) + BCE(A(m_U), 1)  +  lambda * Eq. (8) on the labeled half-batches

m = [mu, softmax prediction]; A's ranking loss compares sigmoid(A(m_L)) with the task model's losses on
the labeled images. The ablations switch off the prediction, the adversarial terms or the ranking loss.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaal_dist.config import AALUConfig
from vaal_dist.models.aalu import Assistant, FeatureVAE
from vaal_dist.train.common import adversarial_epochs, labeled_cycle, unwrap
from vaal_dist.train.losses import hinge_rank_loss
from vaal_dist.train.vaal_loop import separation_auc

CHECKPOINT_FILE = "aalu.pt"


def aalu_step(vae, assistant, opt_vae, opt_a, lab: dict, unl: dict, cfg: AALUConfig) -> dict[str, float]:
    """One VAE update then one A update on a labeled and an unlabeled batch of features."""
    n_l = lab["features"].shape[0]
    f = torch.cat([lab["features"], unl["features"]])
    probs = torch.cat([lab["probs"], unl["probs"]])
    recon, mu, logvar = vae(f)
    # Eq. (1) per image: Gaussian reconstruction error summed over the feature dimensions, plus KL.
    rep = ((recon - f).pow(2).sum(1) + (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1)).mean()
    loss = rep
    metrics = {"recon_kl": rep.item()}
    if cfg.adversarial:
        no_sync = assistant.no_sync() if hasattr(assistant, "no_sync") else contextlib.nullcontext()
        with no_sync:                       # A's gradients from this step are discarded
            logits = assistant(mu, probs)
            adv = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
            loss = rep + cfg.beta * (adv[:n_l].mean() + adv[n_l:].mean())
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
    else:
        opt_vae.zero_grad(set_to_none=True)
        loss.backward()
    opt_vae.step()

    with torch.no_grad():                   # A learns from the VAE as it is after its step (as VAAL's D)
        mu, _ = unwrap(vae).encode(f)
    logits = assistant(mu, probs)
    a_loss = torch.zeros((), device=logits.device)
    if cfg.adversarial:
        target = torch.cat([torch.zeros(n_l), torch.ones(len(logits) - n_l)]).to(logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        a_loss = bce[:n_l].mean() + bce[n_l:].mean()
        metrics["a_adv"] = a_loss.item()
    if cfg.rank_weight and n_l >= 2:
        rank = hinge_rank_loss(torch.sigmoid(logits[:n_l]), lab["loss"], cfg.margin)
        a_loss = a_loss + cfg.rank_weight * rank
        metrics["a_rank"] = rank.item()
    if a_loss.requires_grad:                # lossLearn on a 1-image labeled batch has nothing to learn
        opt_a.zero_grad(set_to_none=True)
        a_loss.backward()
        opt_a.step()
    prob = torch.sigmoid(logits.detach())
    metrics.update(a_labeled=prob[:n_l].mean().item(), a_unlabeled=prob[n_l:].mean().item(),
                   a_auc=separation_auc(prob[n_l:], prob[:n_l]))       # A: unlabeled high, labeled low
    return metrics


def train_aalu_epoch(vae, assistant, opt_vae, opt_a, labeled: Iterator[dict], unlabeled: Iterable[dict],
                     cfg: AALUConfig) -> dict[str, float]:
    vae.train()
    assistant.train()
    sums: dict[str, float] = {}
    steps = images = 0
    for unl in unlabeled:
        for k, v in aalu_step(vae, assistant, opt_vae, opt_a, next(labeled), unl, cfg).items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        images += len(unl["features"])
    return {**{k: v / steps for k, v in sums.items()}, "unlabeled_images": images}


def build_aalu(cfg: AALUConfig, feature_dim: int, num_classes: int) -> tuple[FeatureVAE, Assistant]:
    return FeatureVAE(cfg, feature_dim), Assistant(cfg, num_classes)


@dataclass(frozen=True)
class AALULoopConfig:
    """What each AALU training worker is given: the assistant's config and what its models are built for."""

    aalu: AALUConfig
    seed: int
    feature_dim: int      # the task model's penultimate features
    num_classes: int      # the task model's classes (its softmax, A's other input)


def aalu_from_state(state: dict) -> tuple[FeatureVAE, Assistant]:
    vae, assistant = build_aalu(AALUConfig(**state["config"]), state["feature_dim"], state["num_classes"])
    vae.load_state_dict(state["vae"])
    assistant.load_state_dict(state["assistant"])
    return vae.eval(), assistant.eval()


def aalu_train_loop_per_worker(loop: AALULoopConfig) -> None:
    """Ray Train entry: DDP feature VAE + assistant over this worker's labeled/unlabeled column shards."""
    import ray.train
    import ray.train.torch

    cfg = loop.aalu
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(loop.seed)
    ddp = {"broadcast_buffers": False}
    vae, assistant = (ray.train.torch.prepare_model(m, parallel_strategy_kwargs=ddp)
                      for m in build_aalu(cfg, loop.feature_dim, loop.num_classes))
    opt_vae = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    opt_a = torch.optim.Adam(assistant.parameters(), lr=cfg.lr)

    def train_one(epoch: int, epoch_seed: int) -> dict[str, float]:
        labeled = labeled_cycle(ray.train.get_dataset_shard("labeled"), cfg.batch_size, epoch_seed)
        unlabeled = ray.train.get_dataset_shard("unlabeled").iter_torch_batches(
            batch_size=cfg.batch_size, local_shuffle_seed=epoch_seed, local_shuffle_buffer_size=4 * cfg.batch_size)
        with contextlib.closing(labeled):
            return train_aalu_epoch(vae, assistant, opt_vae, opt_a, labeled, unlabeled, cfg)

    adversarial_epochs({"vae": vae, "assistant": assistant, "opt_vae": opt_vae, "opt_a": opt_a}, CHECKPOINT_FILE,
                       {"config": dataclasses.asdict(cfg), "feature_dim": loop.feature_dim,
                        "num_classes": loop.num_classes}, cfg.epochs, loop.seed, rank, train_one)
