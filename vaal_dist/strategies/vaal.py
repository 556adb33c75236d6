"""VAAL: pick the unlabeled images the discriminator is most sure are unlabeled (lowest D(mu))."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import ray.train
import torch

from vaal_dist.models.vaal import VAE, Discriminator, pixels_to_input
from vaal_dist.pool.dataset import training_datasets
from vaal_dist.pool.images import check_image_size, decode_images
from vaal_dist.pool.io import PoolMeta
from vaal_dist.strategies.base import RoundInputs, TopKStrategy
from vaal_dist.train.trainer import fit
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, config_from_state, load_checkpoint, train_loop_per_worker


class VAALScorer:
    """Encoder mean + discriminator in eval mode; score = -logit D(mu), so the lowest D ranks first.

    The logit orders exactly as D(mu) = sigmoid(logit) does, without sigmoid's float32 saturation
    turning distinct confidences into ties.
    """

    def __init__(self, checkpoint: ray.train.Checkpoint, meta: PoolMeta, use_gpu: bool = False):
        with checkpoint.as_directory() as d:
            state = load_checkpoint(os.path.join(d, CHECKPOINT_FILE))
        cfg = config_from_state(state)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        vae, disc = VAE(cfg, state["in_channels"]), Discriminator(cfg)
        vae.load_state_dict(state["vae"])
        disc.load_state_dict(state["disc"])
        self.encoder = torch.nn.Sequential(vae.encoder, vae.fc_mu).to(self.device).eval()
        self.disc = disc.to(self.device).eval()
        self.meta, self.size, self.embedding_dim = meta, cfg.image_size, cfg.latent_dim

    def _mu(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        pixels = decode_images(batch["id"], batch["image"], self.meta, self.size)   # (B, C, S, S) uint8
        return self.encoder(pixels_to_input(torch.from_numpy(pixels).to(self.device, non_blocking=True)))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return (-self.disc(self._mu(batch))).double().cpu().numpy()

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The encoder mean mu, (B, z): the VAE embedding Core-set can use."""
        return self._mu(batch).float().cpu().numpy()


class VAAL(TopKStrategy):
    name = "vaal"
    scorer = VAALScorer
    needs_labeled = True

    def train(self, inputs: RoundInputs) -> tuple[dict, dict]:
        cfg = inputs.config
        check_image_size(inputs.meta, cfg.vaal.image_size)
        loop_config = {"vaal": dataclasses.asdict(cfg.vaal), "seed": cfg.seed,
                       "in_channels": inputs.meta.channels}
        datasets = training_datasets(cfg.pool, inputs.labeled_ids, inputs.meta, cfg.vaal.image_size)
        result = fit(train_loop_per_worker, loop_config, datasets, storage_path=inputs.train_dir,
                     name="vaal", workers=cfg.workers, use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker)
        return ({"checkpoint": result.checkpoint, "meta": inputs.meta, "use_gpu": cfg.use_gpu},
                {"checkpoint": result.checkpoint.path, "last_epoch": result.metrics})
