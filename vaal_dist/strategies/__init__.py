"""Selection strategies by name; each is one module behind the interface in ``base``."""
from vaal_dist.errors import InputError
from vaal_dist.strategies.base import RoundInputs, Scorer, Strategy
from vaal_dist.strategies.coreset import Coreset
from vaal_dist.strategies.random import Random
from vaal_dist.strategies.vaal import VAAL

STRATEGIES: dict[str, type] = {s.name: s for s in (VAAL, Random, Coreset)}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "RoundInputs", "Scorer", "Strategy", "get_strategy"]
