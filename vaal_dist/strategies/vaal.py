"""VAAL: pick the unlabeled images the discriminator is most sure are unlabeled (lowest D(mu))."""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
import ray.train
import torch

from vaal_dist.config import VAALConfig
from vaal_dist.pool.images import check_image_size
from vaal_dist.pool.io import PoolMeta, join
from vaal_dist.strategies.base import RoundInputs, TopKStrategy, model_input, scorer_device
from vaal_dist.train.common import load_checkpoint
from vaal_dist.train.pool_batches import PoolSource, pool_source
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, config_from_state, train_loop_per_worker


class VAALScorer:
    """Encoder mean + discriminator in eval mode; score = -logit D(mu), so the lowest D ranks first.

    The logit orders exactly as D(mu) = sigmoid(logit) does, without sigmoid's float32 saturation
    turning distinct confidences into ties.
    """

    def __init__(self, checkpoint: ray.train.Checkpoint, meta: PoolMeta, use_gpu: bool = False):
        with checkpoint.as_directory() as d:
            state = load_checkpoint(os.path.join(d, CHECKPOINT_FILE))
        cfg = config_from_state(state)
        self.device = scorer_device(use_gpu)
        vae, disc = build_models(cfg, state["in_channels"], state["conditioned"])
        vae.load_state_dict(state["vae"])
        disc.load_state_dict(state["disc"])
        self.vae = vae.to(self.device).eval()
        self.disc = disc.to(self.device).eval()
        self.meta, self.size, self.embedding_dim = meta, cfg.image_size, cfg.latent_dim
        self.disc_on_pixels = cfg.disc_on_pixels

    def inputs(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return model_input(batch, self.meta, self.size, self.device)

    def _mu(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        return self.vae.encode_mean(self.inputs(batch))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        seen = self.inputs(batch).flatten(1) if self.disc_on_pixels else self._mu(batch)
        return (-self.disc(seen)).double().cpu().numpy()

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder mean mu, (B, z): the VAE embedding Core-set can use."""
        return self._mu(batch).float().cpu().numpy()


def train_vaal(inputs: RoundInputs, conditioned: bool, vaal: VAALConfig | None = None, *,
               source: PoolSource | None = None, datasets: dict | None = None) -> ray.train.Result:
    """VAAL's VAE + D on Ray Train over the pool streamed from its shards (``source``), or over
    {'labeled', 'unlabeled'} datasets of pixels and rank (TA-VAAL, ``conditioned``).

    ``vaal`` replaces the round's VAALConfig (the ablations switch parts of it off).
    """
    cfg = inputs.config
    loop_config = {"vaal": dataclasses.asdict(vaal or cfg.vaal), "seed": cfg.seed, "in_channels": inputs.meta.channels,
                   "conditioned": conditioned, "source": source}
    return inputs.fit(train_loop_per_worker, loop_config, datasets or {}, name="vaal")


class VAAL(TopKStrategy):
    name = "vaal"
    scorer = VAALScorer
    needs_labeled = True
    vaal_overrides: ClassVar[dict] = {}      # VAALConfig fields an ablation changes

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        cfg = inputs.config
        check_image_size(inputs.meta, cfg.vaal.image_size)
        source = pool_source(cfg.pool, inputs.labeled_ids, inputs.not_unlabeled, inputs.meta,
                             join(inputs.train_dir, "labeled-images"), cfg.workers)
        result = train_vaal(inputs, conditioned=False, vaal=dataclasses.replace(cfg.vaal, **self.vaal_overrides),
                            source=source)
        return ({"checkpoint": result.checkpoint, "meta": inputs.meta, "use_gpu": cfg.use_gpu},
                {"checkpoint": result.checkpoint.path, "last_epoch": result.metrics})
