"""Prepare throughput: a synthetic ImageNet-style tree of JPEG files -> a raw pool, timed.

    .venv/bin/python benchmarks/prepare_throughput.py --images 100000 --source-size 64 --work /tmp/vaal-prepare

Writes the files once (``write_synthetic_files``; a rerun keeps them), then runs ``prepare_pool`` into a
fresh pool folder with a local Ray, and prints one markdown row: files, seconds, files/s, the driver's
peak RSS. Files are ``--source-size`` square JPEGs (64 by default) in 10 class folders, resized to
32x32 RGB by prepare.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time

from vaal_dist.ray_session import connect, shut_down_after
from vaal_dist.pool.prepare import prepare_pool

from synthetic import write_synthetic_files   # benchmarks/ is the script's folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--work", default="/tmp/vaal-prepare")
    p.add_argument("--files-per-shard", type=int, default=1000)
    p.add_argument("--source-size", type=int, default=64, help="side of the JPEG files, pixels")
    args = p.parse_args()
    name = f"{args.images}-{args.source_size}px"
    source, dest = f"{args.work}/files-{name}", f"{args.work}/pool-{name}"
    start = time.perf_counter()
    write_synthetic_files(source, args.images, image_size=args.source_size)
    written = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    with shut_down_after():
        connect()
        summary = prepare_pool(source, dest, files_per_shard=args.files_per_shard)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(writing the files took {written:.0f} s)")
    print("| files | source size | prepared | skipped | seconds | files/s | driver peak RSS, MiB |\n"
          "|---|---|---|---|---|---|---|")
    print(f"| {args.images} | {args.source_size}x{args.source_size} | {summary['prepared']} | {summary['skipped']} | "
          f"{summary['seconds']:.1f} | {summary['images_per_second']:.0f} | {peak_mib:.0f} |")


if __name__ == "__main__":
    main()
