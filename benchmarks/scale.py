"""Scoring a large synthetic pool: throughput, peak memory of driver and actors, exactness of top-b.

    .venv/bin/python benchmarks/scale.py --images 100000 --preset cpu
    .venv/bin/python benchmarks/scale.py --images 1000000 --preset cpu

Run one size per process (peak RSS is per process). Writes the pool once under --work (reused later),
scores it with an untrained VAAL checkpoint of the preset through ``stream_top_k`` (b = --budget) while a
thread samples the peak private memory (RssAnon) of every scoring actor, then, if --check, scores it again emitting
every score and checks the streamed top-b against a full sort of them.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch

from vaal_dist.config import ScoringConfig, preset
from vaal_dist.pool.dataset import read_pool
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.ray_session import start_local_ray
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import stream_top_k
from vaal_dist.strategies.vaal import VAALScorer
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, save_checkpoint

from synthetic import write_synthetic_pool   # benchmarks/ is the script's folder


class ActorPeaks(threading.Thread):
    """Samples /proc for scoring-actor processes; keeps each one's peak private memory (RssAnon), in MiB.

    Private memory, not VmHWM: an actor's RSS also counts the pages of Ray's shared-memory object store
    it has read blocks from, which grows with how much of the store a long run has touched.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if b"BatchTopK" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    anon = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                if line.startswith("RssAnon"))
                    self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0), int(anon.split()[1]) / 1024)
                except (OSError, StopIteration):
                    continue


def checkpoint(path: Path, preset_name: str) -> ray.train.Checkpoint:
    torch.manual_seed(0)
    cfg = preset(preset_name).vaal
    vae, disc = build_models(cfg, 3)
    opt = torch.optim.Adam(vae.parameters())
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(str(path / CHECKPOINT_FILE), vae, disc, opt, opt, 1, cfg, 3)
    return ray.train.Checkpoint.from_directory(str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--work", default="/tmp/vaal-scale")
    p.add_argument("--check", action="store_true", help="also verify the top-b against a full sort")
    args = p.parse_args()

    pool = Path(args.work) / f"pool-{args.images}"
    start = time.perf_counter()
    # In a child process, so that this process's peak RSS is the scoring's alone.
    writer = multiprocessing.get_context("spawn").Process(
        target=write_synthetic_pool, args=(str(pool), args.images), kwargs={"image_size": preset(args.preset).vaal.image_size})
    writer.start()
    writer.join()
    print(f"pool of {args.images} images ready in {time.perf_counter() - start:.1f} s", flush=True)
    start_local_ray(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    scorer = ScorerSpec(VAALScorer, {"checkpoint": checkpoint(Path(args.work) / f"ckpt-{args.preset}", args.preset),
                                     "meta": read_pool_meta(str(pool))})
    cfg = ScoringConfig(batch_size=args.batch)
    peaks = ActorPeaks()
    peaks.start()
    top = stream_top_k(read_pool(str(pool)), scorer, args.budget, cfg)
    peaks.stop.set()
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    actors = ", ".join(f"{v:.0f}" for v in sorted(peaks.peaks.values()))
    print(f"| {args.images} | {args.preset} | {top.seconds:.1f} | {args.images / top.seconds:.0f} | "
          f"{top.merge_seconds:.2f} | {driver_mib:.0f} | {actors} |", flush=True)
    if args.check:
        everything = stream_top_k(read_pool(str(pool)), scorer, args.images,
                                  ScoringConfig(batch_size=args.batch))
        order = np.lexsort((everything.ids, -everything.scores))[:args.budget]   # score desc, then id
        same = np.array_equal(everything.ids[order], top.ids) and np.array_equal(everything.scores[order], top.scores)
        print(f"top-{args.budget} equals a full sort of all {len(everything.ids)} scores: {same}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
