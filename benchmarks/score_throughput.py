"""Scoring throughput of the VAAL scorer, end to end from prepared shards, on the paper's architecture.

    .venv/bin/python benchmarks/score_throughput.py --images 20000 --actors 1 2 --threads 1 2

Builds a seeded synthetic raw pool (32x32x3, like CIFAR) once, an untrained checkpoint of the cifar10
preset (128..1024 channels, z=32: the paper's VAE), then times ``stream_top_k`` (read -> decode ->
encoder + D -> per-batch top-b -> driver merge) for each actor/thread setting, and the bare encoder in
this process for reference. Prints one markdown row per setting.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
import torch

from vaal_dist.config import ScoringConfig, preset
from vaal_dist.pool.dataset import read_pool
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.synthetic import write_synthetic_pool
from vaal_dist.scoring.stream import stream_top_k
from vaal_dist.strategies.vaal import VAALScorer
from vaal_dist.train.vaal_loop import build_models

from scale import checkpoint   # benchmarks/ is the script's folder


def bare_encoder(batch: int, threads: int, seconds: float = 10.0) -> float:
    """img/s of the encoder + fc_mu alone in eval mode, one process, no I/O: the reference ceiling."""
    torch.set_num_threads(threads)
    vae, _ = build_models(preset("cifar10"), 3)
    enc = torch.nn.Sequential(vae.encoder, vae.fc_mu).eval()
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        enc(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            enc(x)
            n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="vaal-bench-")
    write_synthetic_pool(f"{work}/pool", args.images, shard_rows=5000)
    print(f"| setting | images | seconds | img/s |\n|---|---|---|---|")
    for threads in args.threads:
        print(f"| bare encoder, in process, {threads} thread(s), batch {args.batch} | - | - | "
              f"{bare_encoder(args.batch, threads):.0f} |", flush=True)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    ckpt, meta = checkpoint(Path(work) / "ckpt", "cifar10"), read_pool_meta(f"{work}/pool")
    for actors in args.actors:
        for threads in args.threads:
            cfg = ScoringConfig(batch_size=args.batch, num_actors=actors, threads_per_actor=threads)
            top = stream_top_k(read_pool(f"{work}/pool"), VAALScorer, {"checkpoint": ckpt, "meta": meta},
                               args.budget, cfg)
            print(f"| stream_top_k, {actors} actor(s) x {threads} thread(s), batch {args.batch}, "
                  f"b={args.budget} | {args.images} | {top.seconds:.1f} | {args.images / top.seconds:.0f} |",
                  flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
