"""Two-round distributed k-center vs exact greedy: coverage radius and time as partitions grow.

    .venv/bin/python benchmarks/kcenter_distributed.py --n 50000 --labeled 5000 --dim 512 --budget 2500 \
        --partitions 1 2 4 8

Seeded Gaussian features; partitions are random, equal-sized. Prints one markdown row per setting.
"""
from __future__ import annotations

import time

import numpy as np
import ray

from vaal_dist.coreset.kcenter import coverage_radius, k_center_greedy
from vaal_dist.ray_session import start_local_ray

from kcenter_speed import gaussian_problem, problem_parser   # benchmarks/ is the script's folder
from two_round_kcenter import distributed_k_center


def main() -> None:
    p = problem_parser(__doc__)
    p.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args()
    unlabeled, labeled = gaussian_problem(args)
    rng = np.random.default_rng(1)
    ids = np.array([f"u{i:08d}" for i in range(args.n)])

    start = time.perf_counter()
    exact = k_center_greedy(unlabeled, labeled, args.budget, ids)
    exact_seconds = time.perf_counter() - start
    exact_radius = coverage_radius(unlabeled, np.vstack([labeled, unlabeled[exact]]))
    print("| method | partitions | seconds | coverage radius | radius / exact |\n|---|---|---|---|---|")
    print(f"| exact greedy | - | {exact_seconds:.1f} | {exact_radius:.3f} | 1.000 |", flush=True)
    start_local_ray(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    for parts in args.partitions:
        split = np.array_split(rng.permutation(args.n), parts)
        start = time.perf_counter()
        picked = distributed_k_center([(unlabeled[s], ids[s]) for s in split], labeled, args.budget)
        seconds = time.perf_counter() - start
        rows = np.searchsorted(ids, picked)                     # ids are sorted by construction
        radius = coverage_radius(unlabeled, np.vstack([labeled, unlabeled[rows]]))
        print(f"| two-round distributed | {parts} | {seconds:.1f} | {radius:.3f} | {radius / exact_radius:.3f} |",
              flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
