"""A user's torchvision classifier as an embedding (``--embedding``): its penultimate features.

The weights are read once, on the driver, and checked there (before a round writes anything); the scoring
actors get their bytes with the scorer's arguments, so a local weights file need not be on every node.
``torch.load(weights_only=True)`` unpickles tensors and containers only: a weights file cannot run code.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vaal_dist.config import Backbone
from vaal_dist.errors import InputError
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import PoolMeta
from vaal_dist.pool.storage import read_bytes

# the mean and std of the images torchvision's classification weights were trained on
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneWeights:
    """A checked backbone: its config and the bytes of its weights file."""

    config: Backbone
    data: bytes


def read_backbone(config: Backbone) -> BackboneWeights:
    """The weights file of ``config``, read and checked: InputError naming what does not fit."""
    try:
        data = read_bytes(config.weights)
    except FileNotFoundError:
        raise InputError(f"--embedding-weights {config.weights!r} does not exist") from None
    weights = BackboneWeights(config, data)
    build_backbone(weights, torch.device("cpu"))
    return weights


def build_backbone(weights: BackboneWeights, device: torch.device) -> tuple[torch.nn.Module, int]:
    """(the network up to its last linear layer, in eval mode on ``device``; the width of its features)."""
    arch, size = weights.config.arch, weights.config.image_size
    import torchvision     # here, not at the top: every scoring and training actor imports this module (~1.5 s)

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"--embedding {arch!r} is not a torchvision classification model; choose one of "
                         f"{torchvision.models.list_models(module=torchvision.models)}")
    net = torchvision.models.get_model(arch, weights=None)
    head = _drop_classifier(net, arch)
    try:
        net.load_state_dict(_state_without(head, _state_dict(weights)))
    except RuntimeError as e:        # keys missing or unexpected, tensors of other shapes: other weights
        raise InputError(f"--embedding-weights {weights.config.weights!r} are not {arch}'s: "
                         f"{' '.join(str(e).split())[:300]}") from None
    net.eval().to(device)
    try:
        with torch.inference_mode():
            dim = net(torch.zeros(1, 3, size, size, device=device)).flatten(1).shape[1]
    except RuntimeError as e:
        raise InputError(f"--embedding {arch} cannot take {size}x{size} images (--embedding-image-size): "
                         f"{str(e).splitlines()[0]}") from None
    return net, dim


def _drop_classifier(net: torch.nn.Module, arch: str) -> str:
    """Replace the model's last linear layer (its classifier, whatever the family calls it) by the identity,
    so the model returns that layer's input; return the layer's name."""
    linears = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError(f"--embedding {arch} has no linear classifier to take the features before")
    parent, _, child = linears[-1].rpartition(".")
    setattr(net.get_submodule(parent), child, torch.nn.Identity())
    return linears[-1]


def _state_dict(weights: BackboneWeights) -> dict:
    """The state dict in the weights file: saved bare, or as torchvision's reference scripts save it (under
    ``model``)."""
    uri = weights.config.weights
    try:
        state = torch.load(io.BytesIO(weights.data), map_location="cpu", weights_only=True)
    except Exception as e:           # torch raises many kinds on a file that is not its own
        raise InputError(f"--embedding-weights {uri!r} is not a torch state dict that "
                         f"torch.load(weights_only=True) reads: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"--embedding-weights {uri!r} holds a {type(state).__name__}, not a state dict")
    return state


def _state_without(head: str, state: dict) -> dict:
    """``state`` less the classifier's tensors: features do not need them, and a fine-tuned model's head has
    its own number of classes."""
    return {k: v for k, v in state.items() if not k.startswith(f"{head}.")}


def backbone_input(batch: dict[str, np.ndarray], meta: PoolMeta, size: int, device: torch.device) -> torch.Tensor:
    """A batch's images as torchvision's classifiers take them: RGB (grey repeated), ``size`` x ``size``,
    normalised with ImageNet's mean and std. (B, 3, size, size) float."""
    decoded_side = meta.image_shape[0] if meta.encoding == "raw" else size
    pixels = torch.from_numpy(decode_images(batch["id"], batch["image"], meta, decoded_side)).to(device)
    x = pixels.float().div_(255).expand(-1, 3, -1, -1)
    if decoded_side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return (x - mean) / std
