"""Acquisition rules: pure functions from model outputs to scores, higher meaning "label this first".

Scorers (the strategies' model-loading classes) compute the outputs; these turn them into scores. Each
works on torch tensors on any device and returns one value per image.
"""
from __future__ import annotations

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of (B, C) probabilities; 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Max entropy over T stochastic passes: the entropy of the mean of (T, B, C) probabilities."""
    return entropy(probs.mean(0))


def variation_ratio(votes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - (count of the modal class) / T for (T, B) class votes."""
    counts = torch.nn.functional.one_hot(votes, num_classes).sum(0)       # (B, C)
    return 1.0 - counts.max(-1).values.double() / votes.shape[0]


def margin(probs: torch.Tensor) -> torch.Tensor:
    """Minus the gap between the two largest of each row of (B, C) probabilities: smallest gap first."""
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 1] - top2[..., 0]


def least_discriminated(logits: torch.Tensor) -> torch.Tensor:
    """VAAL's rule on a discriminator's logits (B,): the lowest D = sigmoid(logit) first.

    Minus the logit orders exactly as minus D does, without sigmoid's float32 saturation turning distinct
    confidences into ties."""
    return -logits


def w2_to_centroid(gaussians: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """2-Wasserstein distance from each diagonal Gaussian [mu, sigma] (B, 2z) to the centroid [mu_c, sigma_c]:
    sqrt(|mu - mu_c|^2 + |sigma - sigma_c|^2) in closed form."""
    return (gaussians - centroid).pow(2).sum(-1).sqrt()
