"""VAAL training throughput: the bare epoch loop in this process against Ray Train with 1 and 2 workers.

    .venv/bin/python benchmarks/train_throughput.py --images 20000 --epoch-images 4096 --epochs 3
    .venv/bin/python benchmarks/train_throughput.py --images 3000 --epoch-images 512 --epochs 3 --work /tmp/vaal-tt

Writes (once, reused under --work) a seeded synthetic raw pool of --images images at the preset's image
size and a manifest of a seeded 10% of its ids as the labeled set, then trains VAAL's VAE + D with the
same preset (--preset, --epochs, --epoch-images, --batch-size) three ways:

- "bare": in this process, no Ray Train: ``vaal_loop.build_models``, Adam as in ``train_loop_per_worker``,
  and ``vaal_loop.train_epoch`` fed by ``pool_batches.pool_source(...).epoch(...)`` with rank 0 of 1
  worker, on --threads torch threads (default: every core this process may use, as many as Ray Train
  gives a lone worker on this node). Each epoch is timed; the first (warm-up) is reported apart from the
  others. It runs before Ray is started (nothing else of ours on the cores) and again after the Ray
  Train runs with Ray up and idle (--no-bare-after skips that): two brackets of the same number, which
  also show how much a shared machine moved between them.
- "Ray Train, N workers" for each N of --workers: ``trainer.fit(vaal_loop.train_loop_per_worker, ...)``
  with the loop_config ``round_inputs.py:RoundInputs.train_vaal`` builds, as a round runs it.

One step is a labeled and an unlabeled batch; 2 VAE steps : 1 D step (``train_epoch``). Images/s counts
the unlabeled images an epoch visits (all workers together) per second of an epoch.

How the Ray Train runs are timed: every epoch ends in ``ray.train.report`` with a checkpoint, and Ray
Train names each checkpoint folder by the wall-clock time of that report on rank 0
(``checkpoint_YYYY-MM-DD_HH-MM-SS.ffffff``). This script keeps all of a run's checkpoints (it sets
``trainer.KEEP_CHECKPOINTS = None`` in this process; the run folder is deleted afterwards) and reads
those names: epoch k's seconds (k >= 2) are the gap between checkpoints k-1 and k, so they include the
checkpoint writes and the report, what an epoch costs in a round. "s per epoch" is the median of those
gaps (epochs 2..E; one run gives E-1 of them, so a noisy neighbour moves one gap, not the figure);
"fixed" is the fit's wall time less E x that median, split into start-up (fit called -> first
checkpoint, less one median epoch: worker group, process group, imports, model set-up, and the first
epoch's excess over a later one) and teardown (last checkpoint -> fit returned). --epochs must be >= 2.
"of it in the loop's epoch" is the median ``epoch_seconds`` that ``train_loop_per_worker`` reports with
each epoch's metrics (rank 0: batches set up, ``train_epoch``, batches closed; the window the bare loop's
epochs are timed over); the rest of "s per epoch" is the report and the checkpoint.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import torch

from vaal_dist.ray_session import start_local_ray
from vaal_dist.config import PRESETS, Setup, preset
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import read_manifest, write_seeded_sample
from vaal_dist.train import trainer
from vaal_dist.train.common import worker_epoch_seed
from vaal_dist.train.pool_batches import PoolSource, epoch_share, pool_source
from vaal_dist.train.vaal_loop import VAALLoopConfig, build_models, train_epoch, train_loop_per_worker

from synthetic import write_synthetic_pool   # benchmarks/ is the script's folder

LABELED_FRACTION = 0.10
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{6})")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="synthetic pool size (10%% of it labeled)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run (>= 2)")
    p.add_argument("--epoch-images", type=int, default=4096,
                   help="unlabeled images an epoch visits at most (0: all of them)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size (per pool, per worker)")
    p.add_argument("--threads", type=int, help="torch threads of the bare loop (default: every core this process "
                                               "may use; Ray Train gives a lone worker all the node's cores)")
    p.add_argument("--no-bare-after", action="store_true",
                   help="skip the second bare run (after the Ray Train runs, Ray idle in the background)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts to run")
    p.add_argument("--cpus-per-worker", type=float, default=Setup.cpus_per_worker)
    p.add_argument("--seed", type=int, default=0, help="labeled-sample and training seed")
    p.add_argument("--work", default="/tmp/vaal-train-throughput")
    p.add_argument("--use-gpu", action="store_true", help="train on the GPU (bare loop and Ray Train workers)")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2: one epoch after the first is needed to time a steady epoch")
    if any(w < 1 for w in args.workers):
        p.error("--workers: Ray Train worker counts must be >= 1")
    return args


def vaal_config(args: argparse.Namespace):
    overrides = {"epochs": args.epochs, "epoch_images": args.epoch_images or None}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    return preset(args.preset, vaal=overrides).vaal


def write_inputs(args: argparse.Namespace, size: int) -> tuple[str, str]:
    """The pool (shards already there are kept) and a manifest of a seeded 10% of its ids."""
    work = Path(args.work)
    pool = str(work / f"pool-{args.images}-{size}x{size}x{args.channels}")
    labeled = str(work / f"labeled-{args.images}-{size}x{size}x{args.channels}-seed{args.seed}.parquet")
    write_synthetic_pool(pool, args.images, image_size=size, channels=args.channels)
    write_seeded_sample(pool, labeled, args.seed, count=round(LABELED_FRACTION * args.images))
    return pool, labeled


def visited(source: PoolSource, workers: int, limit: int | None) -> int:
    """Unlabeled images one epoch visits, all workers together (the plan is the same for every seed)."""
    return sum(stop - start for rank in range(workers)
               for _, start, stop in epoch_share(source.unlabeled.counts, rank, workers, 0, limit))


def bare(source: PoolSource, cfg, in_channels: int, seed: int, threads: int, use_gpu: bool) -> list[float]:
    """train_loop_per_worker's epochs without Ray Train: rank 0 of 1, no DDP, no checkpoints. Seconds per epoch."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        device = torch.device("cuda" if use_gpu else "cpu")
        vae, disc = (m.to(device) for m in build_models(cfg, in_channels, False))
        opt_vae = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
        opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr)
        seconds = []
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            epoch_seed = worker_epoch_seed(seed, 0, epoch)
            torch.manual_seed(epoch_seed)
            flips = torch.Generator().manual_seed(epoch_seed)
            labeled, unlabeled = source.epoch(cfg.image_size, cfg.batch_size, rank=0, workers=1, seed=epoch_seed,
                                              limit=cfg.epoch_images, pin=use_gpu)
            try:
                metrics = train_epoch(vae, disc, opt_vae, opt_disc, labeled, unlabeled, cfg, flips)
            finally:
                labeled.close()
                unlabeled.close()
            if use_gpu:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
            print(f"  bare epoch {epoch + 1}: {seconds[-1]:.1f} s (recon {metrics['recon']:.4f}, "
                  f"D on unlabeled {metrics['d_unlabeled']:.3f})", flush=True)
        return seconds
    finally:
        torch.set_num_threads(before)


def ray_train(source: PoolSource, cfg, in_channels: int, seed: int, workers: int, cpus_per_worker: float,
              storage: Path, use_gpu: bool) -> dict:
    """One Ray Train run as a round trains VAAL; the fit's wall time and each epoch's checkpoint time."""
    name = f"throughput-w{workers}"
    shutil.rmtree(storage / name, ignore_errors=True)          # a fresh run: same name would resume
    loop = VAALLoopConfig(cfg, seed, in_channels, conditioned=False, source=source)   # as RoundInputs.train_vaal
    trainer.KEEP_CHECKPOINTS = None                              # keep every epoch's checkpoint: its name is its time
    started = datetime.datetime.now()
    start = time.perf_counter()
    result = trainer.fit(train_loop_per_worker, loop, {}, storage_path=str(storage), name=name,
                         workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, seed=seed)
    wall = time.perf_counter() - start
    ended = datetime.datetime.now()
    stamps = sorted(datetime.datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S.%f")
                    for m in map(CHECKPOINT_NAME.fullmatch, (p.name for p in (storage / name).iterdir())) if m)
    if len(stamps) != cfg.epochs:
        raise SystemExit(f"expected {cfg.epochs} checkpoint folders under {storage / name}, found {len(stamps)}: "
                         f"cannot time the epochs")
    if result.metrics.get("epoch") != cfg.epochs:
        raise SystemExit(f"the run ended at epoch {result.metrics.get('epoch')}, not {cfg.epochs}")
    shutil.rmtree(storage / name, ignore_errors=True)
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    # Rank 0's seconds inside the epoch (batches set up, train_epoch, batches closed), if the loop reports them.
    reported = sorted((m for _, m in result.best_checkpoints or []), key=lambda m: m["epoch"])
    inner = [m["epoch_seconds"] for m in reported[1:] if "epoch_seconds" in m]
    for k, gap in enumerate(gaps, start=2):
        inside = f" ({inner[k - 2]:.1f} s of it in the loop's epoch)" if len(inner) == len(gaps) else ""
        print(f"  Ray Train, {workers} worker(s), epoch {k}: {gap:.1f} s{inside}", flush=True)
    return {"wall": wall, "to_first": (stamps[0] - started).total_seconds(), "gaps": gaps,
            "inner": inner if len(inner) == len(gaps) else None, "after_last": (ended - stamps[-1]).total_seconds()}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")


def main() -> None:
    args = parse_args()
    cfg = vaal_config(args)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pool, labeled_manifest = write_inputs(args, cfg.image_size)
    print(f"pool {pool} and labeled set ready in {time.perf_counter() - t:.1f} s", flush=True)
    labeled_ids, meta = read_manifest(labeled_manifest), read_pool_meta(pool)
    sources = {}
    for w in sorted({1, *args.workers}):     # the labeled copy's row groups depend on the worker count
        t = time.perf_counter()
        copy = Path(args.work) / f"labeled-copy-{Path(labeled_manifest).stem}-w{w}"
        sources[w] = pool_source(pool, labeled_ids, labeled_ids, meta, str(copy), w)
        print(f"training source for {w} worker(s) ready in {time.perf_counter() - t:.1f} s "
              f"({sources[w].labeled.images} labeled, {sources[w].unlabeled.images} unlabeled)", flush=True)
    threads = args.threads or len(os.sched_getaffinity(0))
    bare_runs = {}
    print(f"bare loop before Ray starts, {threads} thread(s), {cfg.epochs} epochs", flush=True)
    bare_runs["bare loop, this process, before Ray starts"] = bare(sources[1], cfg, meta.channels, args.seed, threads, args.use_gpu)
    start_local_ray(log_to_driver=False)
    try:
        runs = {}
        for w in args.workers:
            threads_w = trainer.training_threads(w)
            print(f"Ray Train, {w} worker(s) x {threads_w} thread(s), {cfg.epochs} epochs", flush=True)
            runs[w] = ray_train(sources[w], cfg, meta.channels, args.seed, w, args.cpus_per_worker,
                                Path(args.work) / "ray-train", args.use_gpu)
            runs[w]["threads"] = threads_w
        if not args.no_bare_after:
            print(f"bare loop again, Ray idle, {threads} thread(s), {cfg.epochs} epochs", flush=True)
            bare_runs["bare loop, this process, again after the Ray Train runs (Ray up, idle)"] = bare(
                sources[1], cfg, meta.channels, args.seed, threads, args.use_gpu)
    finally:
        import ray

        ray.shutdown()

    bare_images = visited(sources[1], 1, cfg.epoch_images)
    bare_later = [s for seconds in bare_runs.values() for s in seconds[1:]]
    bare_rate = bare_images / statistics.median(bare_later)
    print(f"\n{args.preset} preset (batch {cfg.batch_size} per pool per worker, {cfg.vae_steps} VAE : 1 D steps), "
          f"pool of {args.images:,} images {cfg.image_size}x{cfg.image_size}x{meta.channels}, "
          f"{sources[1].labeled.images:,} labeled, {sources[1].unlabeled.images:,} unlabeled, "
          f"{cfg.epochs} epochs per run, torch {torch.__version__}. Seconds per epoch: median (min–max) of epochs "
          f"2..{cfg.epochs}, Ray Train's from its checkpoint times. \"vs bare\": against the median of every "
          f"bare run's epochs 2..{cfg.epochs} together ({bare_rate:.0f} img/s).\n")
    print("| setting | workers × threads | images per epoch | wall s | fixed s (start-up + teardown) | "
          "first epoch s | s per epoch | of it in the loop's epoch, s | img/s per epoch | img/s vs bare |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, seconds in bare_runs.items():
        rate = bare_images / statistics.median(seconds[1:])
        print(f"| {label} | 1 × {threads} | {bare_images:,} | {sum(seconds):.1f} | – | {seconds[0]:.2f} | "
              f"{spread(seconds[1:])} | (all) | {rate:.0f} | {rate / bare_rate:.2f} |")
    for w, r in runs.items():
        per_epoch = statistics.median(r["gaps"])
        fixed = r["wall"] - cfg.epochs * per_epoch
        images = visited(sources[w], w, cfg.epoch_images)
        rate = images / per_epoch
        print(f"| Ray Train, {w} worker{'s' if w > 1 else ''} | {w} × {r['threads']} | {images:,} | "
              f"{r['wall']:.1f} | {fixed:.1f} ({r['to_first'] - per_epoch:.1f} + {r['after_last']:.1f}) | – | "
              f"{spread(r['gaps'])} | {spread(r['inner']) if r['inner'] else '–'} | {rate:.0f} | "
              f"{rate / bare_rate:.2f} |")


if __name__ == "__main__":
    main()
