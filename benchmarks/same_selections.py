"""Every strategy's selection on the embedded MNIST pool, for comparing two versions of the code.

    python benchmarks/same_selections.py --record before.json     # at one commit
    python benchmarks/same_selections.py --record after.json      # at another
    python benchmarks/same_selections.py --compare before.json after.json

Each strategy runs one round (short schedules of the cpu preset, 2 training workers, one seed) on the
5,000-digit pool with 500 labeled; the record holds its ids and scores in rank order. ``--compare``
prints one line per strategy and exits 1 when any selection differs.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from vaal_dist.ray_session import start_local_ray
from vaal_dist.config import AcquisitionConfig, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.pool.default import build_default_pool
from vaal_dist.round import run_round
from vaal_dist.strategies import STRATEGIES


def record(path: str, strategies: list[str], budget: int, seed: int) -> None:
    picks = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool, labeled = f"{tmp}/pool", f"{tmp}/labeled.parquet"
        build_default_pool(pool, labeled, seed=seed)
        setup = Setup(preset("cpu", vaal={"epochs": 1}, task={"epochs": 2}, aalu={"epochs": 2}),
                      AcquisitionConfig(mc_passes=5, ensemble_members=2), ScoringConfig(batch_size=256),
                      workers=2)
        start_local_ray(num_cpus=2)
        for name in strategies:
            cfg = RoundConfig(pool=pool, labeled=labeled, out=f"{tmp}/{name}", budget=budget, strategy=name,
                              seed=seed, setup=setup)
            table = pq.read_table(run_round(cfg).selection)
            picks[name] = {"ids": table.column("id").to_pylist(), "scores": table.column("score").to_pylist()}
            print(name, picks[name]["ids"][:5], flush=True)
    Path(path).write_text(json.dumps(picks, indent=1))


def compare(before: str, after: str) -> int:
    old, new = (json.loads(Path(p).read_text()) for p in (before, after))
    differ = 0
    for name in sorted(old.keys() | new.keys()):
        if name not in old or name not in new:
            print(f"{name:24s} only in {before if name in old else after}")
            continue
        same_ids = old[name]["ids"] == new[name]["ids"]
        same_scores = old[name]["scores"] == new[name]["scores"]
        differ += not same_ids
        print(f"{name:24s} ids {'same' if same_ids else 'DIFFER'}, scores {'same' if same_scores else 'differ'}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", help="write every strategy's selection to this JSON file")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--strategies", nargs="+", default=sorted(STRATEGIES))
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    record(args.record, args.strategies, args.budget, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
