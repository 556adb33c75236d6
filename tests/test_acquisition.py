"""Acquisition rules on hand-made model outputs: values computed by hand, and the order they pick in."""
import math

import pytest
import torch

from vaal_dist.acquisition import (entropy, least_discriminated, margin, predictive_entropy, variation_ratio,
                                   w2_to_centroid)

H = lambda *p: -sum(x * math.log(x) for x in p if x)      # noqa: E731  entropy by hand


def test_entropy_by_hand():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]], dtype=torch.float64)
    assert entropy(probs).tolist() == pytest.approx([0.0, math.log(2), H(0.25, 0.75)])


def test_variation_ratio_by_hand():
    votes = torch.tensor([[0, 1, 2], [0, 1, 1], [0, 2, 0], [0, 1, 1]])   # (T=4, B=3)
    # image 0: 4/4 agree -> 0; image 1: class 1 three times -> 1 - 3/4; image 2: 2,1,0,1 -> mode 1 twice
    assert variation_ratio(votes, 3).tolist() == pytest.approx([0.0, 0.25, 0.5])


# Two passes (T=2) over three images (B=3) of two classes:
#   image 0: both passes sure of class 0        -> no uncertainty at all
#   image 1: both passes say 50/50              -> high predictive entropy, the passes agreeing
#   image 2: the passes are sure and disagree   -> the same predictive entropy, all of it disagreement
PASSES = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]],
                       [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]], dtype=torch.float64)


def test_predictive_entropy_is_the_entropy_of_the_mean_pass():
    assert predictive_entropy(PASSES).tolist() == pytest.approx([0.0, math.log(2), math.log(2)])


def test_margin_ranks_the_closest_top_two_first():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1]], dtype=torch.float64)
    assert margin(probs).tolist() == pytest.approx([-0.85, -0.05, -0.3])
    assert margin(probs).argsort(descending=True).tolist() == [1, 2, 0]


def test_least_discriminated_ranks_the_lowest_d_first_even_where_sigmoid_saturates():
    logits = torch.tensor([30.0, -2.0, 0.5, 18.0])            # sigmoid(30) == sigmoid(18) == 1 in float32
    assert torch.sigmoid(logits)[0] == torch.sigmoid(logits)[3]
    assert least_discriminated(logits).argsort(descending=True).tolist() == [1, 2, 3, 0]


def test_w2_to_centroid_by_hand():
    gaussians = torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 3.0]],
                             dtype=torch.float64)             # [mu (z=2), sigma (z=2)]
    centroid = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert w2_to_centroid(gaussians, centroid).tolist() == pytest.approx([0.0, 3.0, 2.0])
