"""Selection strategies by name. Each module is one method behind the interface in ``base`` and lists
what it offers in its ``STRATEGIES``; adding a method is one module and one line here."""
import importlib

from vaal_dist.config import AcquisitionConfig
from vaal_dist.errors import InputError
from vaal_dist.strategies.base import GivenVectors, Strategy

MODULES = (
    "vaal",
    "vaal_ablations",
    "ta_vaal",
    "aalu",
    "learning_loss",
    "entropy",
    "margin",
    "mc_dropout",
    "ensemble",
    "coreset",
    "cluster_margin",
    "badge",
    "typiclust",
    "random",
)

STRATEGIES: dict[str, type] = {strategy.name: strategy for module in MODULES
                               for strategy in importlib.import_module(f"{__name__}.{module}").STRATEGIES}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


def models_trained(strategy: Strategy, acquisition: AcquisitionConfig) -> tuple[str, ...]:
    """The models ``strategy`` trains: with vectors from elsewhere (an ``--embedding`` backbone or an
    ``--embeddings`` file), which embed the pool in place of the model a strategy trains for that: none where
    they replace its model, its own where it trains that for more (``GivenVectors``)."""
    flags = [flag for flag, given in (("--embedding", acquisition.embedding), ("--embeddings", acquisition.embeddings))
             if given is not None]
    if not flags:
        return strategy.trains
    if len(flags) > 1:
        raise InputError("--embedding and --embeddings are two ways to get the same vectors: give one")
    if _given_vectors(strategy) is GivenVectors.REFUSED:
        offered = sorted(n for n, s in STRATEGIES.items() if _given_vectors(s) is not GivenVectors.REFUSED)
        raise InputError(f"{flags[0]} is for the strategies that embed the pool, {offered}; "
                         f"{strategy.name} does not")
    return () if _given_vectors(strategy) is GivenVectors.REPLACE_ITS_MODEL else strategy.trains


def _given_vectors(strategy) -> GivenVectors:
    return getattr(strategy, "given_vectors", GivenVectors.REFUSED)


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "models_trained"]
