"""The papers' ranking losses and D's separation AUC against values computed by hand."""
import math

import pytest
import torch

from vaal_dist.train.losses import hinge_rank_loss, margin_ranking_loss, ranking_bce_loss
from vaal_dist.train.vaal_loop import separation_auc

# B = 4: Learning Loss / TA-VAAL pair (0, 3) and (1, 2).
PRED = torch.tensor([0.5, 2.0, 1.0, 0.0])
TRUE = torch.tensor([3.0, 1.0, 2.0, 1.0])   # l0 > l3 (sign +1), l1 < l2 (sign -1)


def test_margin_ranking_loss_by_hand():
    # pair (0,3): p diff 0.5, s=+1 -> max(0, 1 - 0.5) = 0.5; pair (1,2): diff 1.0, s=-1 -> max(0, 1 + 1) = 2
    assert margin_ranking_loss(PRED, TRUE, margin=1.0).item() == pytest.approx((0.5 + 2.0) / 2)


def test_margin_ranking_loss_counts_ties_as_minus_one():
    # equal losses: s = -1, as in the authors' LossPredLoss; diff -1 -> max(0, 1 + (-1)) = 0
    assert margin_ranking_loss(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0])).item() == 0.0


def test_ranking_bce_loss_is_eq_1_by_hand():
    # pair (0,3): I=1, d=0.5 -> -log sigmoid(0.5); pair (1,2): I=0, d=1.0 -> -log(1 - sigmoid(1.0))
    sig = lambda v: 1 / (1 + math.exp(-v))
    want = (-math.log(sig(0.5)) - math.log(1 - sig(1.0))) / 2
    assert ranking_bce_loss(PRED, TRUE).item() == pytest.approx(want, rel=1e-6)


def test_hinge_rank_loss_is_aalu_eq_8_by_hand():
    # n = 2: pairs (0, 2) and (1, 3). sgn(3-2)=+1, A diff 0.5-1.0=-0.5 -> max(0, 0.5+0.1) = 0.6;
    # sgn(1-1)=0 -> max(0, 0.1) = 0.1
    assert hinge_rank_loss(PRED, TRUE, margin=0.1).item() == pytest.approx((0.6 + 0.1) / 2)


def test_ranking_losses_only_train_the_prediction():
    pred = PRED.clone().requires_grad_()
    target = TRUE.clone().requires_grad_()
    (margin_ranking_loss(pred, target) + ranking_bce_loss(pred, target) + hinge_rank_loss(pred, target)).backward()
    assert target.grad is None and pred.grad is not None


@pytest.mark.parametrize("loss", [margin_ranking_loss, ranking_bce_loss, hinge_rank_loss])
def test_ranking_losses_need_a_pair(loss):
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.tensor([1.0]), torch.tensor([1.0]))


def test_separation_auc_by_hand_and_against_sklearn():
    high, low = torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.8])
    assert separation_auc(high, low) == pytest.approx(3.5 / 4)       # 3 pairs ordered, 1 tie counts half
    assert separation_auc(low, high) == pytest.approx(1 - 3.5 / 4)
    assert separation_auc(torch.full((5,), 0.5), torch.full((7,), 0.5)) == 0.5     # D stuck at 0.5
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(64, generator=g).round(decimals=1), torch.rand(48, generator=g).round(decimals=1) - 0.1
    expected = roc_auc_score([1] * 64 + [0] * 48, torch.cat([a, b]).numpy())
    assert separation_auc(a, b) == pytest.approx(expected, abs=1e-6)
