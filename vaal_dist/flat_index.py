"""FAISS's exact (flat, float32) L2 index, on the GPUs when faiss-gpu sees any: k-means' assignment pass
(``clustering.kmeans``) and k-center's nearest-center search (``coreset.kcenter``) share it."""
from __future__ import annotations

import numpy as np


def faiss_gpus() -> int:
    """The GPUs FAISS can use: > 0 only in a faiss-gpu build on a machine with GPUs."""
    import faiss

    return getattr(faiss, "get_num_gpus", lambda: 0)()


def flat_index(points: np.ndarray):
    """A FAISS exact (flat, float32) L2 index over ``points`` (N, d), on the GPUs when faiss-gpu sees any."""
    import faiss

    index = faiss.IndexFlatL2(points.shape[1])
    if faiss_gpus():
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    return index
