"""Selection strategies by name. Each module is one method behind the interface in ``base`` and lists
what it offers in its ``STRATEGIES``; adding a method is one module and one line here."""
import importlib

from vaal_dist.config import AcquisitionConfig
from vaal_dist.errors import InputError
from vaal_dist.strategies.base import Strategy

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
    ``--embeddings`` file), which embed the pool in place of the model a strategy trains for that, its
    ``trains_with_backbone``, where it offers one."""
    flags = [flag for flag, given in (("--embedding", acquisition.embedding), ("--embeddings", acquisition.embeddings))
             if given is not None]
    if not flags:
        return strategy.trains
    if len(flags) > 1:
        raise InputError("--embedding and --embeddings are two ways to get the same vectors: give one")
    trains = getattr(strategy, "trains_with_backbone", None)
    if trains is None:
        offered = sorted(n for n, s in STRATEGIES.items() if getattr(s, "trains_with_backbone", None) is not None)
        raise InputError(f"{flags[0]} is for the strategies that embed the pool, {offered}; "
                         f"{strategy.name} does not")
    return trains


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "models_trained"]
