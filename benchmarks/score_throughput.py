"""Scoring throughput of the VAAL scorer, end to end from prepared shards, on the paper's architecture.

    .venv/bin/python benchmarks/score_throughput.py --images 20000 --actors 1 2 --threads 1 2

Builds a seeded synthetic raw pool (32x32x3, like CIFAR) once, an untrained checkpoint of the cifar10
preset (128..1024 channels, z=32: the paper's VAE), then times ``stream_top_k`` (read -> decode ->
encoder + D -> per-batch top-b -> driver merge) for each actor/thread setting, and the bare encoder in
this process for reference. Prints one markdown row per setting. ``--breakdown`` first times each
stage of the scoring path in this process, one batch at a time, over the whole pool: where the time goes.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
import time
from pathlib import Path

import ray
import torch

from vaal_dist.config import ScoringConfig, preset
from vaal_dist.pool.dataset import read_pool
from vaal_dist.pool.io import pool_files, read_pool_meta
from vaal_dist.ray_session import start_local_ray
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import stream_top_k
from vaal_dist.strategies.vaal import VAALScorer
from vaal_dist.train.vaal_loop import build_models

from scale import checkpoint   # benchmarks/ is the script's folder
from synthetic import write_synthetic_pool


def bare_encoder(batch: int, threads: int, device: str = "cpu", amp: bool = False, seconds: float = 10.0) -> float:
    """img/s of the encoder + fc_mu alone in eval mode, one process, no I/O: the reference ceiling."""
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    vae, _ = build_models(preset("cifar10").vaal, 3)
    enc = torch.nn.Sequential(vae.encoder, vae.fc_mu).eval().to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    with torch.inference_mode(), precision(amp):
        enc(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            enc(x)
            n += batch
        sync(device)
    return n / (time.perf_counter() - start)


def precision(amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def breakdown(pool: str, ckpt, batch: int, budget: int, threads: int, use_gpu: bool = False,
              amp: bool = False) -> list[tuple[str, float]]:
    """Seconds spent in each stage of scoring ``pool`` in one process (``threads`` torch threads)."""
    import numpy as np
    import pyarrow.parquet as pq

    from vaal_dist.models.vaal import pixels_to_input
    from vaal_dist.pool.images import decode_images
    from vaal_dist.pool.io import pool_files
    from vaal_dist.scoring.topk import RunningTopK, top_k

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    meta = read_pool_meta(pool)
    scorer = VAALScorer(ckpt, meta, use_gpu=use_gpu)
    spent = dict.fromkeys(["read Parquet", "decode", "host -> device, uint8 -> float", "encoder", "discriminator",
                           "per-batch top-b", "driver merge"], 0.0)
    best = RunningTopK(budget)

    def timed(stage, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        sync(scorer.device)      # GPU work is asynchronous: charge it to the stage that queued it
        spent[stage] += time.perf_counter() - t
        return out

    fs, files = pool_files(pool)
    with torch.inference_mode(), precision(amp):
        for f in files:
            table = timed("read Parquet", lambda: pq.read_table(f, filesystem=fs))
            for start in range(0, table.num_rows, batch):
                part = table.slice(start, batch)
                ids = part.column("id").to_numpy(zero_copy_only=False)
                images = part.column("image").to_numpy(zero_copy_only=False)
                pixels = timed("decode", decode_images, ids, images, meta, scorer.size)
                x = timed("host -> device, uint8 -> float",
                          lambda: pixels_to_input(torch.from_numpy(pixels).to(scorer.device)))
                mu = timed("encoder", scorer.vae.encode_mean, x)
                scores = timed("discriminator", lambda: (-scorer.disc(mu)).double().cpu().numpy())
                top_ids, top_scores = timed("per-batch top-b", top_k, ids, np.asarray(scores), budget)
                timed("driver merge", best.add, top_ids, top_scores)
    timed("driver merge", best.result)
    return list(spent.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--gpu", action="store_true", help="score on the GPU (one actor per --actors per GPU)")
    p.add_argument("--amp", action="store_true", help="also time bfloat16 autocast (with --gpu)")
    p.add_argument("--breakdown", action="store_true", help="first time each stage in this process")
    p.add_argument("--ray-reader", action="store_true",
                   help="also stream from Ray's own read_parquet (no page checksums), for comparison")
    p.add_argument("--work", help="folder for the pool (kept and reused); default: a new temporary one")
    args = p.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="vaal-bench-")
    write_synthetic_pool(f"{work}/pool", args.images, shard_rows=5000)
    device, precisions = ("cuda" if args.gpu else "cpu"), ([False, True] if args.amp else [False])
    if args.breakdown:
        for amp in precisions:
            stages = breakdown(f"{work}/pool", checkpoint(Path(work) / "ckpt-breakdown", "cifar10"), args.batch[-1],
                               args.budget, max(args.threads), args.gpu, amp)
            total = sum(s for _, s in stages)
            print(f"| stage (1 process, {device}{' bf16' if amp else ''}, {max(args.threads)} threads, "
                  f"batch {args.batch[-1]}) | seconds | share |\n|---|---|---|")
            for stage, seconds in stages:
                print(f"| {stage} | {seconds:.2f} | {seconds / total:.1%} |")
            print(f"| total | {total:.2f} | {args.images / total:.0f} img/s |\n", flush=True)
    print("| setting | images | seconds | img/s |\n|---|---|---|---|")
    for amp in precisions:
        for batch in args.batch:
            for threads in args.threads:
                print(f"| bare encoder, in process, {device}{' bf16' if amp else ''}, {threads} thread(s), "
                      f"batch {batch} | - | - | {bare_encoder(batch, threads, device, amp):.0f} |", flush=True)
    start_local_ray(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    ckpt, meta = checkpoint(Path(work) / "ckpt", "cifar10"), read_pool_meta(f"{work}/pool")
    readers = {"read_pool": lambda: read_pool(f"{work}/pool")}
    if args.ray_reader:
        fs, files = pool_files(f"{work}/pool")
        readers["ray.data.read_parquet"] = lambda: ray.data.read_parquet(
            files, filesystem=fs, columns=["id", "image"], override_num_blocks=len(files))
    for (reader, dataset), amp, batch, actors, threads in itertools.product(
            readers.items(), precisions, args.batch, args.actors, args.threads):
        cfg = ScoringConfig(batch_size=batch, num_actors=actors, threads_per_actor=threads, amp=amp,
                            block_bytes=max(ScoringConfig.block_bytes, 4 * batch * 3 * 32 * 32))
        top = stream_top_k(dataset(), ScorerSpec(VAALScorer, {"checkpoint": ckpt, "meta": meta, "use_gpu": args.gpu}),
                           args.budget, cfg,
                           use_gpu=args.gpu)
        print(f"| stream_top_k from {reader}, {device}{' bf16' if amp else ''}, {actors} actor(s) x "
              f"{threads} thread(s), batch {batch}, b={args.budget} | {args.images} | {top.seconds:.1f} | "
              f"{args.images / top.seconds:.0f} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
