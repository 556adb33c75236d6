"""Selection strategies by name; each is one module behind the interface in ``base``."""
from vaal_dist.errors import InputError
from vaal_dist.strategies.aalu import AALU, AdvVAE, AdvVAELossLearn, AdvVAEPrediction, LossLearn
from vaal_dist.strategies.base import Strategy
from vaal_dist.strategies.coreset import Coreset, CoresetVAE
from vaal_dist.strategies.ensemble import Ensemble
from vaal_dist.strategies.entropy import Entropy
from vaal_dist.strategies.learning_loss import LearningLoss, LearningLossV2
from vaal_dist.strategies.mc_dropout import DBAL, MCDropout
from vaal_dist.strategies.random import Random
from vaal_dist.strategies.ta_vaal import TAVAAL, TAVAALLearningLoss
from vaal_dist.strategies.vaal import VAAL
from vaal_dist.strategies.vaal_ablations import VAALDiscOnly, VAALFrozenVAE, VAEOnlyW2

STRATEGIES: dict[str, type] = {s.name: s for s in (
    VAAL, VAALDiscOnly, VAALFrozenVAE, VAEOnlyW2, TAVAAL, TAVAALLearningLoss, AALU, AdvVAE, AdvVAEPrediction,
    LossLearn, AdvVAELossLearn, LearningLoss, LearningLossV2, Entropy, MCDropout, DBAL, Ensemble, Coreset,
    CoresetVAE, Random)}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
