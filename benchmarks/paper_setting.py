"""The VAAL paper's CIFAR-10 setting as whole rounds, beside the papers' per-100-sample query times.

    .venv/bin/python benchmarks/paper_setting.py
    .venv/bin/python benchmarks/paper_setting.py --epoch-images 1024 --workers 2
    python3 benchmarks/paper_setting.py --use-gpu --amp --epoch-images 45000      # on a GPU machine
    .venv/bin/python benchmarks/paper_setting.py --images 5000 --epoch-images 256  # a quick check

The setting: a CIFAR-10-shaped synthetic raw pool (--images 50,000 seeded 32x32x3 images,
``write_synthetic_pool``, written once under --work and reused), a seeded 10% of it labeled (5,000),
b = 5% of it (2,500), the ``cifar10`` preset (the paper's VAE and discriminator; its schedule is 100
epochs, one epoch = one pass over the unlabeled images). Each round runs through
``vaal_dist.round.run_round`` as ``vaal-dist round`` would, in a spawned process with its own local Ray.

A full-width epoch over 45,000 images takes far too long on a CPU, so the rounds train --epochs 1 and 2
(any list of at least two values) at --epoch-images M unlabeled images per epoch, and a least-squares
line through the rounds' training seconds gives train(E) = fixed + E x per_epoch(M) (with two rounds,
the exact solution). Everything else of those rounds is measured for real: scoring streams all the
unlabeled images through the trained model, the exact top-b merge, and the rest of the round (input
checks, labeled copy, writing the selection).

Two more measurements of an epoch are printed beside the fit: the gap between the last two checkpoint
times of the longest round (Ray Train names checkpoint folders by the time rank 0 reported them, once an
epoch; a round keeps two) is one epoch measured directly, steps + report + checkpoint; and the
``epoch_seconds`` the training loop reports (the epoch without the report and checkpoint). On a shared or
noisy machine the fit is a difference of two rounds' start-up costs, which vary by more than a short
epoch, so by default (``--per-epoch checkpoints``) the extrapolation takes the measured epoch (fixed =
the rounds' mean of train - E x it); ``--per-epoch fit`` takes the line. A warning says when the two
disagree by more than 25%.

EXTRAPOLATED, and labelled so wherever printed: one epoch over all U unlabeled images as
per_epoch(M) x U / M' (M' = the images an M-epoch visits, M rounded down to a multiple of the workers;
M' = M at the defaults), and the per-100-sample query time of the full 100-epoch schedule as
(fixed + 100 x per_epoch_full + score + merge + rest) / b x 100, with score, merge and rest the means of
the measured rounds. It assumes an epoch's cost grows linearly with its images (the same steps, more of
them) and that the fixed cost does not grow with the schedule (per-epoch checkpoints are inside
per_epoch).

The papers' figures beside ours are quoted, not measured here: the VAAL paper (Sinha et al., ICCV 2019)
reports 10.59 s per 100 samples for VAAL on CIFAR-10; the AALU paper (Zhu & Wang, ICIP 2020) on a TITAN V
reports 14.07 s (AALU), 75.70 s (VAAL) and 29.01 s (Core-set) per 100. Their hardware and code are not
ours, so they are context, not a like-for-like comparison.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import re
import shutil
import time
from pathlib import Path

import numpy as np

from vaal_dist.config import RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.pool.manifests import write_seeded_sample
from vaal_dist.round_files import CHECKPOINTS, RECORD

from synthetic import write_synthetic_pool   # benchmarks/ is the script's folder

PRESET = "cifar10"
IMAGE_SIZE, CHANNELS = 32, 3
LABELED_FRACTION, BUDGET_FRACTION = 0.10, 0.05      # 5,000 labeled and b = 2,500 of 50,000
# Strategies whose training is the VAE/D schedule that --epochs and --epoch-images change, and that need
# no labels (the synthetic pool has none): the extrapolation over epochs means something only for them.
VAE_STRATEGIES = ("vaal", "vaal_disc_only", "vaal_frozen_vae", "vaal_vae_w2", "coreset_vae")
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{6})")   # Ray Train's own
PAPERS = (   # (source, setting, per 100 selected, s): quoted from the papers, not measured here
    ("VAAL paper (Sinha et al., ICCV 2019)", "VAAL, CIFAR-10, GPU (as published)", 10.59),
    ("AALU paper (Zhu & Wang, ICIP 2020)", "AALU, CIFAR-10, TITAN V (as published)", 14.07),
    ("AALU paper (Zhu & Wang, ICIP 2020)", "VAAL, CIFAR-10, TITAN V (as published)", 75.70),
    ("AALU paper (Zhu & Wang, ICIP 2020)", "Core-set, CIFAR-10, TITAN V (as published)", 29.01),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50_000, help="pool size (CIFAR-10's training set: 50,000)")
    p.add_argument("--labeled", type=int, help="labeled images, a seeded sample (default: 10%% of --images)")
    p.add_argument("--budget", type=int, help="b (default: 5%% of --images)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2],
                   help="VAE/D epochs of the measured rounds, one round each (at least two different values)")
    p.add_argument("--epoch-images", type=int, default=512, help="M: unlabeled images a measured epoch visits")
    p.add_argument("--schedule-epochs", type=int, default=preset(PRESET).vaal.epochs,
                   help="epochs of the extrapolated schedule (default: the cifar10 preset's, the paper's 100)")
    p.add_argument("--per-epoch", choices=("fit", "checkpoints"), default="checkpoints",
                   help="what the extrapolation takes as per_epoch(M) and fixed: the gap between the last two "
                        "checkpoint times of the longest round (default: one epoch measured directly; fixed = "
                        "the rounds' mean of train - E x that gap), or the least-squares line through the "
                        "rounds' training seconds. Both are printed either way")
    p.add_argument("--strategy", default="vaal", choices=VAE_STRATEGIES)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=Setup.cpus_per_worker)
    p.add_argument("--use-gpu", action="store_true", help="train and score on GPUs")
    p.add_argument("--amp", action="store_true", help="score under bfloat16 autocast (with --use-gpu)")
    p.add_argument("--actors", type=int, help="scoring actors (default: one per GPU, else one per CPU)")
    p.add_argument("--seed", type=int, default=0, help="labeled-sample and round seed")
    p.add_argument("--work", default="/tmp/vaal-paper-setting")
    p.add_argument("--report-only", action="store_true",
                   help="run no rounds: print the table from the run.json files of the same settings' last run")
    args = p.parse_args()
    args.labeled = round(LABELED_FRACTION * args.images) if args.labeled is None else args.labeled
    args.budget = round(BUDGET_FRACTION * args.images) if args.budget is None else args.budget
    if len(set(args.epochs)) < 2:
        p.error("--epochs needs at least two different values to separate fixed from per-epoch cost")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def write_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """The pool (shards already there are kept) and a manifest of a seeded sample of --labeled ids."""
    work = Path(args.work)
    pool = str(work / f"pool-{args.images}-{IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}")
    labeled = str(work / f"labeled-{args.images}-{args.labeled}-seed{args.seed}.parquet")
    write_synthetic_pool(pool, args.images, image_size=IMAGE_SIZE, channels=CHANNELS)
    write_seeded_sample(pool, labeled, args.seed, count=args.labeled)
    return pool, labeled


def round_config(args: argparse.Namespace, pool: str, labeled: str, epochs: int) -> RoundConfig:
    """What ``vaal-dist round --preset cifar10 --epochs E --epoch-images M ...`` builds (cli_args.config_from_args)."""
    setting = (f"{args.strategy}-l{args.labeled}-b{args.budget}-m{args.epoch_images}-w{args.workers}-s{args.seed}"
               + ("-gpu" if args.use_gpu else "") + ("-amp" if args.amp else ""))
    return RoundConfig(
        pool=pool, labeled=labeled, out=str(Path(args.work) / f"rounds-{args.images}" / setting / f"e{epochs}"),
        budget=args.budget, strategy=args.strategy, seed=args.seed,
        setup=Setup(preset(PRESET, vaal={"epochs": epochs, "epoch_images": args.epoch_images}),
                    scoring=ScoringConfig(num_actors=args.actors, amp=args.amp),
                    workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker))


def one_round(cfg: RoundConfig) -> None:
    """A fresh round in this (spawned) process's own local Ray; its run.json is the result."""
    import ray

    from vaal_dist.ray_session import start_local_ray
    from vaal_dist.round import run_round

    shutil.rmtree(cfg.out, ignore_errors=True)       # a fresh round, not the stored one (which is a no-op)
    start_local_ray(log_to_driver=False)
    try:
        run_round(cfg)
    finally:
        ray.shutdown()


def in_child(target, *args) -> None:
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{target.__name__} failed (exit code {child.exitcode})")


def last_checkpoint_gap(out: str) -> float | None:
    """Seconds between a round's last two VAE/D checkpoints (a round keeps two), or None with fewer.

    Ray Train names each checkpoint folder by the wall-clock time of rank 0's ``ray.train.report`` at the
    end of an epoch, so the gap is one whole epoch: its batches, its steps, the report and the checkpoint.
    """
    folder = Path(out) / CHECKPOINTS / "vaal"
    stamps = sorted(datetime.datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S.%f")
                    for m in map(CHECKPOINT_NAME.fullmatch, (p.name for p in folder.iterdir())) if m)
    return (stamps[-1] - stamps[-2]).total_seconds() if len(stamps) >= 2 else None


def device_name(use_gpu: bool) -> str:
    import torch

    if use_gpu and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def main() -> None:
    args = parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pool, labeled = write_inputs(args)
    print(f"pool {pool} ({args.images:,} images) and labeled set ({args.labeled:,}) ready in "
          f"{time.perf_counter() - t:.1f} s", flush=True)

    records = {}
    for epochs in sorted(set(args.epochs)):
        cfg = round_config(args, pool, labeled, epochs)
        if not args.report_only:
            print(f"round: {args.strategy}, {epochs} epoch(s) x {args.epoch_images} images, b = {args.budget:,} "
                  f"-> {cfg.out}", flush=True)
            in_child(one_round, cfg)
        if not (Path(cfg.out) / RECORD).exists():
            raise SystemExit(f"no finished round in {cfg.out}")
        with open(Path(cfg.out) / RECORD) as f:
            records[epochs] = json.load(f)
        t = records[epochs]["timings"]
        print(f"  train {t['train_seconds']:.1f} s, score {t['score_seconds']:.1f} s, merge "
              f"{t['merge_seconds']:.3f} s, total {t['total_seconds']:.1f} s", flush=True)

    first = next(iter(records.values()))
    unlabeled, budget = first["pool"]["unlabeled"], first["budget"]
    visited = min(args.epoch_images, unlabeled) // args.workers * args.workers
    es = np.array(sorted(records), float)
    train = np.array([records[e]["timings"]["train_seconds"] for e in sorted(records)])
    fit_per_epoch, fit_fixed = np.polyfit(es, train, 1)
    longest = max(records)
    gap = last_checkpoint_gap(records[longest]["config"]["out"]) if longest >= 2 else None
    gap_fixed = None if gap is None else float(np.mean(train - es * gap))
    inside = {e: r["train"]["vaal"]["last_epoch"].get("epoch_seconds") for e, r in records.items()}
    if args.per_epoch == "checkpoints":
        if gap is None:
            raise SystemExit("--per-epoch checkpoints needs a round of at least 2 epochs with its two checkpoints")
        per_epoch, fixed, how = gap, gap_fixed, f"the {longest}-epoch round's last checkpoint gap"
    else:
        per_epoch, fixed, how = fit_per_epoch, fit_fixed, "the fit of the rounds' training seconds"
    rests = [r["timings"]["total_seconds"] - r["timings"]["train_seconds"] - r["timings"]["score_seconds"]
             - r["timings"]["merge_seconds"] for r in records.values()]
    score = float(np.mean([r["timings"]["score_seconds"] for r in records.values()]))
    merge = float(np.mean([r["timings"]["merge_seconds"] for r in records.values()]))
    rest = float(np.mean(rests))
    per_epoch_full = per_epoch * unlabeled / visited
    schedule_train = fixed + args.schedule_epochs * per_epoch_full
    schedule_total = schedule_train + score + merge + rest
    per_100 = schedule_total / budget * 100

    print(f"\n{args.strategy}, {PRESET} preset (the paper's VAE and D, batch {preset(PRESET).vaal.batch_size} per pool "
          f"per worker), synthetic pool of {first['pool']['images']:,} images 32x32x3, {first['pool']['labeled']:,} "
          f"labeled, {unlabeled:,} unlabeled, b = {budget:,}; {args.workers} training worker(s)"
          f"{', GPU' if args.use_gpu else ', CPU'}{', bf16 scoring' if args.amp else ''}; {device_name(args.use_gpu)}; "
          f"torch {first['versions']['torch']}, Ray {first['versions']['ray']}. Rounds measured: "
          f"{', '.join(str(int(e)) for e in es)} epoch(s) x {visited:,} images. \"rest\": the round's total less "
          f"train, score and merge. Rows marked EXTRAPOLATED are computed, not measured; the papers' rows are "
          f"quoted from them, other hardware and code.\n")
    print("| source | setting | train s | score s | merge s | rest s | total s | per 100 selected, s |")
    print("|---|---|---|---|---|---|---|---|")
    for e in sorted(records):
        r, t = records[e], records[e]["timings"]
        print(f"| ours, measured | round, {e} epoch{'s' if e > 1 else ''} x {visited:,} images, scoring all "
              f"{unlabeled:,} | {t['train_seconds']:.1f} | {t['score_seconds']:.1f} | {t['merge_seconds']:.3f} | "
              f"{r['timings']['total_seconds'] - t['train_seconds'] - t['score_seconds'] - t['merge_seconds']:.2f} | "
              f"{t['total_seconds']:.1f} | {r['per_100_query_seconds']:.2f} |")
    def rate(seconds):
        return f"{visited / seconds:.1f} img/s" if seconds and seconds > 0 else "no rate"

    chosen = {"fit": " (used below)" if args.per_epoch == "fit" else "",
              "checkpoints": " (used below)" if args.per_epoch == "checkpoints" else ""}
    print(f"| ours, fit of the rounds{chosen['fit']} | training's fixed cost (start-up, labeled copy, first-epoch "
          f"excess, teardown) | {fit_fixed:.1f} | | | | | |")
    print(f"| ours, fit of the rounds{chosen['fit']} | one epoch over {visited:,} images ({rate(fit_per_epoch)}) "
          f"| {fit_per_epoch:.2f} | | | | | |")
    if gap is not None:
        print(f"| ours, measured{chosen['checkpoints']} | one epoch over {visited:,} images: epoch {longest} of the "
              f"{longest}-epoch round, from its checkpoint times ({rate(gap)}); fixed = mean of train - E x it: "
              f"{gap_fixed:.1f} s | {gap:.2f} | | | | | |")
    if all(v is not None for v in inside.values()):
        print(f"| ours, measured | of an epoch, inside the training loop (rank 0's reported epoch_seconds of each "
              f"round's last epoch; the rest is report + checkpoint) | "
              f"{', '.join(f'{inside[e]:.2f}' for e in sorted(inside))} | | | | | |")
    print(f"| ours, EXTRAPOLATED | one epoch over all {unlabeled:,} unlabeled = {per_epoch:.2f} x {unlabeled:,} / "
          f"{visited:,} ({how}) | {per_epoch_full:.1f} | | | | | |")
    print(f"| **ours, EXTRAPOLATED** | **the paper's schedule: {fixed:.1f} s fixed + {args.schedule_epochs} epochs x "
          f"{unlabeled:,} images, then scoring as measured** | {schedule_train:.0f} | {score:.1f} | {merge:.3f} | "
          f"{rest:.2f} | {schedule_total:.0f} | **{per_100:.1f}** |")
    for source, setting, seconds in PAPERS:
        print(f"| {source} | {setting} | – | – | – | – | – | {seconds:.2f} |")
    if fit_per_epoch <= 0:
        print(f"\nwarning: the fit found no cost per epoch ({fit_per_epoch:.2f} s): the rounds' noise exceeds an "
              f"epoch of {visited} images; raise --epoch-images or the epochs' spread (e.g. --epochs 1 3), or "
              f"use --per-epoch checkpoints")
    elif gap is not None and abs(fit_per_epoch - gap) > 0.25 * gap:
        print(f"\nwarning: the fit's {fit_per_epoch:.2f} s per epoch and the checkpoint gap's {gap:.2f} s differ by "
              f"more than 25%: the rounds' fixed cost varied by more than an epoch's difference")


if __name__ == "__main__":
    main()
