"""Task models (the classifiers being labeled for) and the loss-prediction module that rides on them.

Every task model is a stem, four stages, global average pooling, dropout and a linear classifier, so that
strategies can read the same three things from any architecture: logits, the penultimate features
(Core-set, AALU) and the four stage outputs (the loss-prediction module of Learning Loss and TA-VAAL).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vaal_dist.config import TaskConfig

ARCHS = ("resnet18", "vgg16_bn", "cnn")


class TaskOutput(NamedTuple):
    logits: torch.Tensor                 # (B, classes)
    features: torch.Tensor               # (B, D) penultimate: pooled last stage, before dropout
    stages: tuple[torch.Tensor, ...]     # four (B, C_i, H_i, W_i) maps


def _resnet18(in_channels: int) -> tuple[nn.Module, list[nn.Module], int]:
    # The small-image stem of the CIFAR ResNets (Learning Loss / TA-VAAL code): a 3x3 stride-1 conv,
    # no max-pool, so 32x32 inputs keep their resolution into layer1.
    import torchvision     # here, not at the top: its import costs every scoring actor ~1 s (torch._dynamo)

    net = torchvision.models.resnet18()
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), net.bn1, net.relu)
    return stem, [net.layer1, net.layer2, net.layer3, net.layer4], 512


def _vgg16_bn(in_channels: int) -> tuple[nn.Module, list[nn.Module], int]:
    # torchvision's VGG16-BN convolutions; its five max-pooled blocks become a stem (block 1) and four
    # stages. The CIFAR VGG of the VAAL/Core-set code classifies the pooled 512 features with one linear.
    import torchvision

    layers = list(torchvision.models.vgg16_bn().features)
    layers[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    bounds = [0] + [p + 1 for p in pools]
    blocks = [nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:])]
    return blocks[0], blocks[1:], 512


def _cnn(in_channels: int) -> tuple[nn.Module, list[nn.Module], int]:
    def block(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(inplace=True))
    widths = (16, 32, 64, 128)
    stem = block(in_channels, widths[0], 1)
    stages = [block(c_in, c_out, 1 if i == 0 else 2)
              for i, (c_in, c_out) in enumerate(zip((widths[0],) + widths[:-1], widths))]
    return stem, stages, widths[-1]


_BUILDERS = {"resnet18": _resnet18, "vgg16_bn": _vgg16_bn, "cnn": _cnn}


class TaskNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, in_channels: int, dropout: float = 0.0):
        super().__init__()
        if arch not in _BUILDERS:
            raise ValueError(f"unknown task architecture {arch!r}; choose one of {ARCHS}")
        stem, stages, self.feature_dim = _BUILDERS[arch](in_channels)
        self.stem, self.stages = stem, nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.stage_channels = tuple(_out_channels(s) for s in stages)

    def forward(self, x: torch.Tensor) -> TaskOutput:
        h = self.stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)   # (B, D)
        return TaskOutput(self.fc(self.dropout(features)), features, tuple(maps))


def _out_channels(stage: nn.Module) -> int:
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class LossNet(nn.Module):
    """Loss-prediction module (Yoo & Kweon 2019, Fig. 3): per stage GAP -> linear -> ReLU, concat -> linear.

    TA-VAAL's "ranker" is the same module trained with a different loss; its output is a score whose
    order, not value, carries the information.
    """

    def __init__(self, stage_channels: tuple[int, ...], hidden: int = 128):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, hidden) for c in stage_channels)
        self.out = nn.Linear(hidden * len(stage_channels), 1)

    def forward(self, stages: tuple[torch.Tensor, ...]) -> torch.Tensor:
        pooled = (torch.flatten(nn.functional.adaptive_avg_pool2d(s, 1), 1) for s in stages)
        return self.out(torch.cat([torch.relu(h(p)) for h, p in zip(self.heads, pooled)], 1)).squeeze(-1)  # (B,)


class TaskModel(nn.Module):
    """The classifier and, for the loss-learning strategies, its loss-prediction module: one DDP unit."""

    def __init__(self, cfg: TaskConfig, num_classes: int, in_channels: int, with_loss_module: bool,
                 dropout: float | None = None):
        super().__init__()
        self.net = TaskNet(cfg.arch, num_classes, in_channels, cfg.dropout if dropout is None else dropout)
        self.loss_module = LossNet(self.net.stage_channels, cfg.loss_hidden) if with_loss_module else None

    def forward(self, x: torch.Tensor, detach_stages: bool = False) -> tuple[TaskOutput, torch.Tensor | None]:
        """(task outputs, predicted loss (B,) or None); ``detach_stages`` stops the module's gradient."""
        out = self.net(x)
        if self.loss_module is None:
            return out, None
        stages = tuple(s.detach() for s in out.stages) if detach_stages else out.stages
        return out, self.loss_module(stages)
