"""The ranking losses of the papers, on a mini-batch of predicted scores and true per-sample losses.

Learning Loss and TA-VAAL pair sample i with sample B-1-i (the authors' ``x - x.flip(0)``); AALU's Eq. (8)
pairs sample i with sample n+i. Each pair is scored by the order of its true losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _mirror_pairs(x: torch.Tensor) -> torch.Tensor:
    """x_i - x_{B-1-i} for the first B//2 rows (an odd middle row is left out)."""
    if x.shape[0] < 2:
        raise ValueError(f"a ranking loss needs at least 2 samples, got {x.shape[0]}")
    return (x - x.flip(0))[: x.shape[0] // 2]


def margin_ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Learning Loss (Yoo & Kweon 2019, Eq. 2): mean over pairs of max(0, -s (p_i - p_j) + margin).

    s = +1 if l_i > l_j else -1 (ties count as -1, as in the authors' LossPredLoss).
    """
    p, t = _mirror_pairs(predicted), _mirror_pairs(target.detach())
    sign = torch.where(t > 0, 1.0, -1.0)
    return torch.clamp(margin - sign * p, min=0).mean()


def ranking_bce_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TA-VAAL Eq. (1): mean over pairs of BCE(sigmoid(p_i - p_j), I[l_i > l_j])."""
    p, t = _mirror_pairs(predicted), _mirror_pairs(target.detach())
    return F.binary_cross_entropy_with_logits(p, (t > 0).to(p.dtype))


def hinge_rank_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """AALU Eq. (8): (1/n) sum_i max(0, -sgn(l_i - l_{n+i}) (A_i - A_{n+i}) + xi), i = 1..n, 2n = B."""
    n = predicted.shape[0] // 2
    if n < 1:
        raise ValueError(f"a ranking loss needs at least 2 samples, got {predicted.shape[0]}")
    diff = predicted[:n] - predicted[n:2 * n]
    sign = torch.sign(target[:n] - target[n:2 * n]).detach()
    return torch.clamp(-sign * diff + margin, min=0).mean()

