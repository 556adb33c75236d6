"""Whole selection rounds (train + score + merge) on synthetic raw pools: seconds, images/s, peak memory.

    .venv/bin/python benchmarks/round_scale.py --images 10000 100000 1000000 --epoch-images 20000
    .venv/bin/python benchmarks/round_scale.py --images 1000000 --epoch-images 20000 --workers 2
    .venv/bin/python benchmarks/round_scale.py --fit-only

For each size, writes (once, reused under --work) a seeded synthetic raw pool, a labeled manifest of a
seeded 10% of its ids, and runs one round with b = 1% of the pool through ``run_round``, as
``vaal-dist round`` does, in its own spawned process with its own local Ray (peak memory is per size).
While the round runs, a thread in that process samples every 0.5 s the private memory (RssAnon) of the driver, of each
Ray Train worker and each scoring actor started under it, and the object store's bytes in use. Each
size's numbers go to --work/results-<size>.json; at the end, a Markdown row per size and least-squares
fits of seconds = fixed + per image for training (x = epochs x images visited per epoch) and scoring
(x = unlabeled images). ``--fit-only`` recomputes both from the stored results.

"epoch s" and "epoch img/s" are the VAE/discriminator's last epoch as its training loop reported it
(images it visited, summed over workers, per second of that epoch); "train fixed s" is the training
stage less ``--epochs`` such epochs: start-up, the labeled copy, checkpoints. Strategies that train no
VAE report no epochs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

from vaal_dist.config import PRESETS, RoundConfig, Setup, preset
from vaal_dist.pool.manifests import write_seeded_sample
from vaal_dist.ray_session import start_local_ray
from vaal_dist.round import run_round
from vaal_dist.strategies import STRATEGIES

from synthetic import write_synthetic_pool   # benchmarks/ is the script's folder

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
LABELED_FRACTION = 0.10
BUDGET_FRACTION = 0.01
SAMPLE_SECONDS = 0.5
MIB = 1024 ** 2
# Process titles Ray gives them (checked with `ps -eo pid,args` during a round): Ray Train V2's workers
# "ray::RayTrainWorker", Ray Data's actor-pool workers "ray::MapWorker(MapBatches(BatchTopK))". Only the
# scoring path (and TA-VAAL's / AALU's task-output pass) runs Ray Data actors in a round.
ROLE_TITLES = {"worker": b"RayTrainWorker", "actor": b"MapWorker"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+",
                   help=f"pool sizes (default {' '.join(map(str, DEFAULT_SIZES))}; with --fit-only: every "
                        f"stored result)")
    p.add_argument("--image-size", type=int, help="side of the pool's images (default: the preset's)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--strategy", default="vaal", choices=sorted(STRATEGIES))
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, default=1, help="VAE/discriminator epochs")
    p.add_argument("--epoch-images", type=int, help="unlabeled images an epoch visits at most (default: all)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers; 0 trains in the driver")
    p.add_argument("--cpus-per-worker", type=float, default=Setup.cpus_per_worker)
    p.add_argument("--seed", type=int, default=RoundConfig.seed, help="round seed and labeled-sample seed")
    p.add_argument("--work", default="/tmp/vaal-round-scale")
    p.add_argument("--fit-only", action="store_true", help="no rounds: fit and tabulate stored results")
    p.add_argument("--use-gpu", action="store_true", help="train and score on GPUs")
    p.add_argument("--object-store-mib", type=int, help="the local Ray's object store size (default: Ray's)")
    args = p.parse_args()
    args.image_size = args.image_size or preset(args.preset).vaal.image_size
    return args


def input_paths(args: argparse.Namespace, images: int) -> tuple[str, str]:
    shape = f"{args.image_size}x{args.image_size}x{args.channels}"
    work = Path(args.work)
    return str(work / f"pool-{images}-{shape}"), str(work / f"labeled-{images}-{shape}-seed{args.seed}.parquet")


def write_inputs(args: argparse.Namespace, images: int) -> None:
    """The pool (shards already there are kept) and a manifest of a seeded 10% of its ids."""
    pool, labeled = input_paths(args, images)
    write_synthetic_pool(pool, images, image_size=args.image_size, channels=args.channels)
    write_seeded_sample(pool, labeled, args.seed, count=round(LABELED_FRACTION * images))


def round_config(args: argparse.Namespace, images: int) -> RoundConfig:
    """What ``vaal-dist round`` builds from the same options (cli.py:config_from_args)."""
    pool, labeled = input_paths(args, images)
    vaal_overrides = {"epochs": args.epochs}
    if args.epoch_images is not None:
        vaal_overrides["epoch_images"] = args.epoch_images
    return RoundConfig(
        pool=pool, labeled=labeled, out=str(Path(args.work) / f"round-{images}"),
        budget=max(1, round(BUDGET_FRACTION * images)), strategy=args.strategy, seed=args.seed,
        setup=Setup(preset(args.preset, vaal=vaal_overrides), workers=args.workers, use_gpu=args.use_gpu,
                    cpus_per_worker=args.cpus_per_worker))


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (Ray's raylet is this driver's child, its workers the raylet's)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])    # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo.extend(kids)
    return found


def private_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    anon = next(line for line in status.splitlines() if line.startswith("RssAnon"))
    return int(anon.split()[1]) / 1024


class RoundSampler(threading.Thread):
    """Peak private memory (RssAnon, MiB) of this driver and of each training worker and scoring actor under it,
    and the peak bytes in use in Ray's object store.

    Private memory, not RSS: a process's RSS also counts the object-store pages it has read
    (benchmarks/scale.py). Only this process's descendants: another Ray on the machine is not ours.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[str, dict[int, float]] = {role: {} for role in ROLE_TITLES}
        self.store_peak_bytes = 0
        self.driver_peak_mib = 0.0
        self.stop = threading.Event()
        self.gcs = get_state_from_address(ray.get_runtime_context().gcs_address)

    def run(self):
        while not self.stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        self.driver_peak_mib = max(self.driver_peak_mib, private_mib(os.getpid()))
        for pid in descendants(os.getpid()):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
                role = next((r for r, marker in ROLE_TITLES.items() if marker in title), None)
                if role:
                    self.peaks[role][pid] = max(self.peaks[role].get(pid, 0.0), private_mib(pid))
            except (OSError, StopIteration):     # the process ended between listing and reading
                continue
        try:
            self.store_peak_bytes = max(self.store_peak_bytes, self.store_stats().object_store_bytes_used)
        except grpc.RpcError:      # a busy raylet missed one sample; the thread must live on
            pass

    def store_stats(self):
        """The raylets' aggregate object-store stats, what ``ray memory --stats-only`` prints."""
        return get_memory_info_reply(self.gcs).store_stats

    def finish(self) -> dict:
        self.stop.set()
        self.join()
        self.sample()
        store = self.store_stats()
        return {"driver_private_peak_mib": self.driver_peak_mib,
                "worker_peak_mib": sorted(self.peaks["worker"].values()),
                "actor_peak_mib": sorted(self.peaks["actor"].values()),
                "object_store_peak_mib": self.store_peak_bytes / MIB,
                "object_store_spilled_mib": store.spilled_bytes_total / MIB,
                "object_store_restored_mib": store.restored_bytes_total / MIB,
                "object_store_capacity_mib": store.object_store_bytes_avail / MIB}


def measure_round(args: argparse.Namespace, images: int) -> None:
    """One round on the size's pool in a fresh local Ray (run in a child process); writes results-<size>.json."""
    cfg = round_config(args, images)
    shutil.rmtree(cfg.out, ignore_errors=True)           # a fresh round, not the stored one
    store = {"object_store_memory": args.object_store_mib * MIB} if args.object_store_mib else {}
    start_local_ray(_node_ip_address="127.0.0.1", include_dashboard=True, log_to_driver=False, **store)
    try:
        sampler = RoundSampler()
        sampler.start()
        record = run_round(cfg).record
        memory = sampler.finish()
    finally:
        ray.shutdown()
    memory["driver_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_result(args.work, images, summarize(record, memory))


def summarize(record: dict, memory: dict) -> dict:
    sizes, timings, vaal = record["pool"], record["timings"], record["config"]["vaal"]
    epoch_images = vaal.get("epoch_images")
    last = record["train"].get("vaal", {}).get("last_epoch", {})
    # The loop reports what its last epoch visited (per worker) and took; strategies without a VAE don't.
    visited = last.get("unlabeled_images", 0) * record["config"]["workers"] or 0
    return {"images": sizes["images"], "labeled": sizes["labeled"], "unlabeled": sizes["unlabeled"],
            "budget": record["budget"], "strategy": record["config"]["strategy"],
            "preset": record["config"]["preset"], "workers": record["config"]["workers"],
            "cpus_per_worker": record["config"]["cpus_per_worker"], "epochs": vaal["epochs"],
            "epoch_images": epoch_images, "visited_per_epoch": visited, "timings": timings,
            "epoch_seconds": last.get("epoch_seconds", 0.0),
            "train_fixed_seconds": timings["train_seconds"] - vaal["epochs"] * last.get("epoch_seconds", 0.0),
            "per_100_query_seconds": record["per_100_query_seconds"], "cluster": record["cluster"],
            "versions": record["versions"], **memory}


def result_path(work: str, images: int) -> Path:
    return Path(work) / f"results-{images}.json"


def write_result(work: str, images: int, result: dict) -> None:
    path = result_path(work, images)
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
    path.with_suffix(".tmp").replace(path)


def stored_results(work: str, sizes: list[int] | None) -> list[dict]:
    paths = [result_path(work, n) for n in sizes] if sizes else Path(work).glob("results-*.json")
    return sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["images"])


def in_child(target, *args) -> float:
    """Run ``target(*args)`` in a spawned process (its own peak memory, its own Ray); seconds it took."""
    start = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{target.__name__}{args[1:]} failed (exit code {child.exitcode})")
    return time.perf_counter() - start


def rates(r: dict) -> tuple[float, float]:
    """Images/s of a training epoch and of scoring (nan for a stage that took no time)."""
    return per_second(r["visited_per_epoch"], r["epoch_seconds"]), per_second(r["unlabeled"], r["timings"]["score_seconds"])


def per_second(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def mib_list(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) or "–"


def driver_private(r: dict) -> str:
    """The driver's peak private memory; results stored before it was sampled have only its max RSS."""
    return f"{r['driver_private_peak_mib']:.0f}" if "driver_private_peak_mib" in r else "–"


def print_stages(r: dict) -> None:
    t, (train_rate, score_rate) = r["timings"], rates(r)
    print(f"{r['images']} images ({r['labeled']} labeled, {r['unlabeled']} unlabeled, b = {r['budget']}), "
          f"{r['strategy']}, {r['preset']} preset, {r['workers']} worker(s):\n"
          f"  train {t['train_seconds']:8.1f} s: fixed {r['train_fixed_seconds']:.1f} s + {r['epochs']} epoch(s) of "
          f"{r['epoch_seconds']:.1f} s over {r['visited_per_epoch']} images, {train_rate:.0f} img/s\n"
          f"  score {t['score_seconds']:8.1f} s {score_rate:9.0f} img/s\n"
          f"  merge {t['merge_seconds']:8.3f} s\n"
          f"  total {t['total_seconds']:8.1f} s, {r['per_100_query_seconds']:.2f} s per 100 selected\n"
          f"  peak MiB: driver {driver_private(r)} private, {r['driver_peak_mib']:.0f} max RSS; training workers "
          f"{mib_list(r['worker_peak_mib'])}, scoring actors {mib_list(r['actor_peak_mib'])} (private); "
          f"object store {r['object_store_peak_mib']:.0f} of {r['object_store_capacity_mib']:.0f}, "
          f"spilled {r['object_store_spilled_mib']:.0f}", flush=True)


def print_fits(results: list[dict]) -> None:
    fits = {"training epoch": ([r["visited_per_epoch"] for r in results], [r["epoch_seconds"] for r in results],
                               "image visited"),
            "training fixed": ([r["images"] for r in results], [r["train_fixed_seconds"] for r in results],
                               "pool image"),
            "scoring": ([r["unlabeled"] for r in results], [r["timings"]["score_seconds"] for r in results],
                        "unlabeled image")}
    print("\nleast-squares fit, seconds = fixed + per image x images:")
    for stage, (x, y, unit) in fits.items():
        if len(set(x)) < 2:
            print(f"  {stage}: needs two sizes with different x, got {sorted(set(x))}")
            continue
        per_image, fixed = np.polyfit(x, y, 1)
        residual = np.sqrt(np.mean((np.polyval([per_image, fixed], x) - y) ** 2))
        steady = f"{1 / per_image:.0f} img/s" if per_image > 0 else "none: the sizes' noise exceeds their difference"
        print(f"  {stage}: {fixed:.1f} s + {per_image * 1e3:.4f} ms per {unit} "
              f"(steady state {steady}; {len(x)} sizes, rms residual {residual:.1f} s)")


def print_table(results: list[dict]) -> None:
    print("\n| images | labeled | b | train s | train fixed s | epoch s (images) | epoch img/s | score s | score img/s | "
          "merge s | total s | per-100 s | driver peak MiB (max RSS) | worker peak MiB | actor peak MiB | object store peak MiB "
          "| spilled MiB |")
    print("|" + "---|" * 17)
    for r in results:
        t, (train_rate, score_rate) = r["timings"], rates(r)
        print(f"| {r['images']:,} | {r['labeled']:,} | {r['budget']:,} | {t['train_seconds']:.1f} | "
              f"{r['train_fixed_seconds']:.1f} | {r['epoch_seconds']:.1f} ({r['visited_per_epoch']:,}) | "
              f"{train_rate:.0f} | {t['score_seconds']:.1f} | {score_rate:.0f} | {t['merge_seconds']:.3f} | "
              f"{t['total_seconds']:.1f} | {r['per_100_query_seconds']:.2f} | {driver_private(r)} ({r['driver_peak_mib']:.0f}) | "
              f"{mib_list(r['worker_peak_mib'])} | {mib_list(r['actor_peak_mib'])} | "
              f"{r['object_store_peak_mib']:.0f} | {r['object_store_spilled_mib']:.0f} |")
    settings = {(r["strategy"], r["preset"], r["epochs"], r["epoch_images"], r["workers"]) for r in results}
    if len(settings) > 1:
        print(f"\nnote: the rows mix settings (strategy, preset, epochs, epoch_images, workers): "
              f"{sorted(settings, key=str)}")


def main() -> None:
    args = parse_args()
    if args.fit_only:
        results = stored_results(args.work, args.images)
    else:
        sizes = args.images or list(DEFAULT_SIZES)
        Path(args.work).mkdir(parents=True, exist_ok=True)
        for images in sizes:
            print(f"inputs for {images} images ready in {in_child(write_inputs, args, images):.1f} s", flush=True)
            in_child(measure_round, args, images)
            print_stages(stored_results(args.work, [images])[0])
        results = stored_results(args.work, sizes)
    print_fits(results)
    print_table(results)


if __name__ == "__main__":
    main()
