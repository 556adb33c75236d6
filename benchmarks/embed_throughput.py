"""--embedding throughput: images/s of a torchvision backbone's features in one scoring actor's scorer.

    .venv/bin/python benchmarks/embed_throughput.py --arch resnet18 resnet50 --image-size 224 --threads 2

Seeded random weights (saved and read back as a user's file is) and random 32x32 grey raw images: the
scorer decodes, repeats grey to RGB, resizes to --image-size, normalises and runs the network, as in a
round. One warm-up batch, then --batches timed batches. A round's embedding pass over N images costs
about N / (images/s) per actor, plus Ray Data's read and hand-off (not measured here).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from vaal_dist.config import Backbone
from vaal_dist.models.backbone import read_backbone
from vaal_dist.pool.io import PoolMeta
from vaal_dist.strategies.backbone import BackboneScorer


def random_batch(n: int, side: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, side * side), np.uint8)
    return {"id": np.array([f"img-{i:06d}" for i in range(n)]), "image": np.array([p.tobytes() for p in pixels],
                                                                                 dtype=object)}


def images_per_second(arch: str, image_size: int, batch: int, batches: int, folder: Path,
                      gpu: bool) -> tuple[float, int]:
    torch.manual_seed(0)
    weights = folder / f"{arch}.pt"
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), weights)
    scorer = BackboneScorer(read_backbone(Backbone(arch, str(weights), image_size)), PoolMeta("raw", (32, 32, 1)),
                            use_gpu=gpu)
    images = random_batch(batch)
    scorer.embed(images)
    start = time.perf_counter()
    for _ in range(batches):
        scorer.embed(images)            # returns numpy: each batch is finished on the device when timed
    return batch * batches / (time.perf_counter() - start), scorer.embedding_dim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {args.threads} torch threads"
    print("| backbone | image side | device | features | images/s | 1M images, one actor (extrapolated) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.arch:
            rate, dim = images_per_second(arch, args.image_size, args.batch, args.batches, Path(folder), args.gpu)
            print(f"| {arch} | {args.image_size} | {device} | {dim} | {rate:,.0f} | {1e6 / rate / 3600:.1f} h |")


if __name__ == "__main__":
    main()
