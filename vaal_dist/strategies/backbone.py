"""Embedding with a user's torchvision backbone (``--embedding``) in place of a strategy's own model."""
from __future__ import annotations

import numpy as np
import torch

from vaal_dist.models.backbone import BackboneWeights, backbone_input, build_backbone
from vaal_dist.pool.io import PoolMeta
from vaal_dist.scoring.spec import scorer_device


class BackboneScorer:
    """The backbone's penultimate features of each image, loaded once per scoring actor."""

    def __init__(self, backbone: BackboneWeights, meta: PoolMeta, use_gpu: bool = False):
        self.device = scorer_device(use_gpu)
        self.net, self.embedding_dim = build_backbone(backbone, self.device)
        self.meta, self.size = meta, backbone.config.image_size

    @torch.inference_mode()
    def features(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return self.net(backbone_input(batch, self.meta, self.size, self.device)).flatten(1)

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.features(batch).float().cpu().numpy()
