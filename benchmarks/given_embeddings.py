"""Core-set rounds on vectors from a file: what a round costs when nothing embeds the pool.

    .venv/bin/python benchmarks/given_embeddings.py given --images 100000 --dim 512
    .venv/bin/python benchmarks/given_embeddings.py trained --images 100000
    .venv/bin/python benchmarks/given_embeddings.py backbone --images 20000

``given``: a Core-set round with ``--embeddings`` (a seeded Gaussian N x dim float32 file) on a pool of N tiny
raw images (never decoded), 1,000 labeled, b = 100. ``trained``: the same round (N images of 32 x 32, the
same labeled ids and b) as it runs without the file: the task model trains (cpu preset, 1 epoch, at least 400
steps) and embeds both pools through the scoring actors. ``backbone``: two Core-set rounds with a fixed
``--embedding`` (a seeded random resnet18 at 32 x 32) on N images: round 1 embeds the pool into the
embeddings cache, round 2 (round 1's picks added to the labeled set) reads it.
Each round runs in this process with its own local Ray (2 CPUs); printed: the round's seconds (total,
train, score = embedding or reading, merge = the greedy) and the driver's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import torchvision

from vaal_dist.config import AcquisitionConfig, Backbone, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.labeling.labels import LABELS, write_labels
from vaal_dist.pool.embeddings import write_vectors
from vaal_dist.pool.io import read_pool_ids
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.storage import beside
from vaal_dist.ray_session import start_local_ray
from vaal_dist.round_files import SELECTION

from synthetic import write_synthetic_pool   # benchmarks/ is the script's folder

LABELED, BUDGET = 1_000, 100


def synthetic_pool(path: Path, n: int, size: int) -> np.ndarray:
    """A seeded raw pool of ``n`` grey ``size`` x ``size`` images (written once); its ids."""
    write_synthetic_pool(str(path), n, image_size=size, channels=1)
    return read_pool_ids(str(path)).to_numpy(zero_copy_only=False).astype(str)


def labeled_manifest(work: Path, ids: np.ndarray) -> str:
    """A seeded LABELED of ``ids``, with labels.parquet beside it (the synthetic pool has no label column)."""
    uri = str(work / f"labeled-{len(ids)}.parquet")
    labeled = np.sort(np.random.default_rng(1).choice(ids, LABELED, replace=False))
    write_manifest(uri, labeled)
    write_labels(beside(uri, LABELS), pa.table({"id": labeled, "label": np.arange(LABELED) % 10,
                                                "annotator": ["benchmark"] * LABELED,
                                                "time": pa.array([0] * LABELED, pa.timestamp("us", tz="UTC"))}),
                 [str(c) for c in range(10)])
    return uri


def run(cfg: RoundConfig) -> dict:
    """The round in a spawned process (its own local Ray): its peak RSS is the round's alone."""
    with multiprocessing.get_context("spawn").Pool(1) as process:
        return process.apply(_run, (cfg,))


def _run(cfg: RoundConfig) -> dict:
    from vaal_dist.round import run_round

    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        record = run_round(cfg).record
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    t = record["timings"]
    return {"out": cfg.out, "seconds": round(seconds, 1), "train_s": round(t["train_seconds"], 1),
            "score_s": round(t["score_seconds"], 1), "merge_s": round(t["merge_seconds"], 1),
            "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def round_config(pool: str, labeled: str, out: Path, cache: Path | None = None, **acquisition) -> RoundConfig:
    models = preset("cpu", task={"epochs": 1})
    return RoundConfig(pool=pool, labeled=labeled, out=str(out), budget=BUDGET, strategy="coreset",
                       embeddings_cache=None if cache is None else str(cache),
                       setup=Setup(preset=models, acquisition=AcquisitionConfig(**acquisition),
                                   scoring=ScoringConfig(num_actors=2), workers=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", choices=("given", "trained", "backbone"))
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--work", type=Path, default=Path("/tmp/given_embeddings_bench"))
    args = p.parse_args()
    work = args.work / f"{args.variant}-{args.images}"
    work.mkdir(parents=True, exist_ok=True)
    size = 4 if args.variant == "given" else 32
    ids = synthetic_pool(work / "pool", args.images, size)
    labeled = labeled_manifest(work, ids)
    pool = str(work / "pool")
    if args.variant == "given":
        vectors = work / "embeddings.parquet"
        if not vectors.exists():
            x = np.random.default_rng(2).normal(size=(len(ids), args.dim)).astype(np.float32)
            write_vectors(str(vectors), ids, x)
        results = [run(round_config(pool, labeled, work / f"out-{time.time_ns()}", embeddings=str(vectors)))]
    elif args.variant == "trained":
        results = [run(round_config(pool, labeled, work / f"out-{time.time_ns()}"))]
    else:
        torch.manual_seed(0)
        weights = work / "resnet18.pt"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
        runs = work / f"runs-{time.time_ns()}"
        backbone = Backbone("resnet18", str(weights), image_size=32)
        cache = runs / "embeddings-cache"
        results = [run(round_config(pool, labeled, runs / "round-1", cache, embedding=backbone))]
        picked = pq.read_table(runs / "round-1" / SELECTION).column("id").to_pylist()
        write_manifest(str(runs / "labeled-2.parquet"), [*read_manifest(labeled).to_pylist(), *picked])
        results.append(run(round_config(pool, str(runs / "labeled-2.parquet"), runs / "round-2", cache,
                                        embedding=backbone)))
    for result in results:
        print(json.dumps({"variant": args.variant, "images": args.images, **result}))


if __name__ == "__main__":
    main()
