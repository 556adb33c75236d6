"""Per-100-sample query time of every strategy, one round each on the same pool.

    .venv/bin/python benchmarks/query_time.py --out /tmp/vaal-query-time

Defaults to the embedded MNIST pool, b = 250 and the cpu preset (as `jobs/imagenet_round.py` with no
arguments). Each strategy gets a fresh output folder. Prints the markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from vaal_dist.cli_args import DEFAULT_LABELED, DEFAULT_POOL
from vaal_dist.ray_session import connect, shut_down_after
from vaal_dist.config import RoundConfig, Setup, preset
from vaal_dist.pool.default import build_default_pool
from vaal_dist.round import run_round
from vaal_dist.strategies import STRATEGIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="/tmp/vaal-query-time")
    p.add_argument("--budget", type=int, default=250)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--strategies", nargs="+", default=sorted(STRATEGIES))
    p.add_argument("--use-gpu", action="store_true", help="train and score on the GPU")
    args = p.parse_args()
    build_default_pool(DEFAULT_POOL, DEFAULT_LABELED, size=preset(args.preset).vaal.image_size)
    rows = []
    with shut_down_after():
        connect()
        for name in args.strategies:
            out = Path(args.out) / name
            shutil.rmtree(out, ignore_errors=True)
            record = run_round(RoundConfig(pool=DEFAULT_POOL, labeled=DEFAULT_LABELED, out=str(out),
                                           budget=args.budget, strategy=name,
                                           setup=Setup(preset(args.preset), use_gpu=args.use_gpu))).record
            t = record["timings"]
            rows.append(f"| {name} | {t['train_seconds']:.1f} | {t['score_seconds']:.1f} | "
                        f"{t['merge_seconds']:.3f} | {t['total_seconds']:.1f} | {record['per_100_query_seconds']:.2f} |")
    print("| strategy | train s | score s | merge s | total s | per 100 selected, s |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
