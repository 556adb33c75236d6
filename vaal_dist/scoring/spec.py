"""What scoring actors build: a scorer class and its arguments, checked on the driver; and the device it runs on.

A scorer is built once per Ray Data actor (it loads its model there) and called on batch dicts of numpy
arrays (``id``, ``image``). Besides scores, a scorer may give embeddings (Core-set, the W2 centroid) or
training columns (TA-VAAL's ranks, AALU's features): the three protocols below.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Protocol, TypedDict

import numpy as np
import torch

from vaal_dist.errors import InputError


class Scorer(Protocol):
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """One float per row of ``batch``; higher means label it first. A scorer with a task model also offers
        ``scored(batch) -> Guess``, the same scores with the model's class guess beside them: the stream calls
        that where there is one."""


class Guess(TypedDict):
    """Scores and the task model's guess of each row, from one forward pass; the top-b carries the guess."""

    score: np.ndarray          # (B,) float64, higher means label it first
    predicted: np.ndarray      # (B,) int64, the likeliest class
    confidence: np.ndarray     # (B,) float64, the model's probability of it


class Embedder(Protocol):
    embedding_dim: int

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(B, embedding_dim) float features, one row per image."""


class ColumnMaker(Protocol):
    def columns(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs as training columns, one row per image."""


@dataclass(frozen=True)
class ScorerSpec:
    """``cls(**kwargs)``, built in each scoring actor. The kwargs are bound to ``cls``'s signature here,
    on the driver: a misspelt or missing argument fails at once, not inside a Ray actor."""

    cls: type
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            inspect.signature(self.cls).bind(**self.kwargs)
        except TypeError as e:
            raise TypeError(f"{self.cls.__name__}: {e}") from None

    def build(self):
        return self.cls(**self.kwargs)

    def with_kwargs(self, **kwargs) -> ScorerSpec:
        return replace(self, kwargs={**self.kwargs, **kwargs})


def scorer_device(use_gpu: bool) -> torch.device:
    """Where a scorer runs: CUDA when the round asked for GPUs, never a silent fall back to the CPU."""
    if use_gpu and not torch.cuda.is_available():
        raise InputError("use_gpu (--use-gpu) was asked, but torch in this scoring actor sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    return torch.device("cuda" if use_gpu else "cpu")
