"""Two-round distributed k-center greedy for embeddings that one machine cannot hold: measured beside the exact
greedy by kcenter_distributed.py and checked against it by tests/test_kcenter.py; no round uses it.

Malkomes, Kusner, Chen, Weinberger & Moseley, "Fast Distributed k-Center Clustering with Outliers on
Massive Data", NeurIPS 2015: run greedy (Gonzalez) on each partition, then greedy again on the union
of the partitions' picks. Each point lies within 2·OPT of its partition's picks and those lie within
2·OPT of the final picks, so the coverage radius is at most 4·OPT — hence at most 4x the radius of
exact greedy on the whole pool (exact greedy's radius is at least OPT). Labeled points are fixed
centers in both rounds, which the same argument allows.
"""
from __future__ import annotations

import numpy as np
import ray

from vaal_dist.coreset.kcenter import k_center_greedy


@ray.remote(num_cpus=1)
def _partition_picks(embeddings: np.ndarray, ids: np.ndarray, labeled: np.ndarray, budget: int):
    picks = k_center_greedy(embeddings, labeled, min(budget, len(embeddings)), ids)
    return embeddings[picks], ids[picks]


def distributed_k_center(partitions: list[tuple[np.ndarray, np.ndarray]], labeled: np.ndarray,
                         budget: int) -> np.ndarray:
    """Ids of ``budget`` picks from ``partitions`` [(embeddings (n_p, d), ids (n_p,)), ...], in pick order.

    Round 1 runs as one Ray task per partition (each holds only its partition and the labeled set);
    round 2 runs here on the union of their picks, at most partitions x budget points.
    """
    labeled_ref = ray.put(np.ascontiguousarray(labeled, dtype=np.float32))
    firsts = ray.get([_partition_picks.remote(e, np.asarray(i, dtype=str), labeled_ref, budget)
                      for e, i in partitions])
    union = np.concatenate([e for e, _ in firsts])
    union_ids = np.concatenate([i for _, i in firsts])
    return union_ids[k_center_greedy(union, labeled, budget, union_ids)]
