"""One end-to-end round per task-aware strategy on a tiny pool (Ray Train + Ray Data, as a user runs it; the
strategies whose training loop another one here runs on Ray Train workers train in the driver).

Each round trains for real (a couple of epochs of the CPU presets), so this file holds the suite's most
expensive tests; strategies that share a training path with one below (mc_dropout with dbal,
learning_loss_v2 with learning_loss, ta_vaal_lloss with ta_vaal, the other AALU ablations with
aalu_advvae, vaal_frozen_vae with vaal_disc_only) are covered by the scorer tests in
test_task_strategies.py. Each strategy's round runs once (the ``rounds`` fixture) for every test that
looks at it.
"""
import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_raw_pool, write_tiny_pool

from vaal_dist.config import AcquisitionConfig, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.errors import InputError
from vaal_dist.pool.io import PoolMeta, read_pool_ids, read_pool_meta, write_pool
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.round import run_round
from vaal_dist.scoring.ids import random_subset
import vaal_dist.strategies as strategies
from vaal_dist.strategies import STRATEGIES, get_strategy, models_trained
from vaal_dist.round_inputs import RoundInputs

ROUND_TESTED = ["entropy", "dbal", "ensemble", "learning_loss", "ta_vaal", "aalu", "aalu_advvae",
                "vaal_vae_w2", "vaal_disc_only", "coreset", "cluster_margin", "typiclust", "badge"]
TASK_FREE = {"vaal_vae_w2", "vaal_disc_only", "typiclust"}
ROUND_ROBIN = {"cluster_margin", "typiclust", "badge"}   # pick order is over clusters or draws, not by score
NO_GUESS = TASK_FREE | {"coreset"}       # no class guess of the task model's beside the selection
# Train in the driver (workers=0): each shares its training loop and its models with a strategy above that trains
# on 2 Ray Train workers (the task loop: dbal; with a loss module: ta_vaal; the VAAL loop: vaal_disc_only; the AALU
# loop with every loss on: aalu); what they add is how they select.
IN_DRIVER = {"entropy", "learning_loss", "aalu_advvae", "vaal_vae_w2", "coreset", "cluster_margin", "typiclust",
             "badge"}


@pytest.fixture(scope="module")
def split_pool(tmp_path_factory):
    """conftest's tiny pool (256 random 32x32 images, 32 labeled) with 32 held-out ids, for the module's rounds."""
    root = tmp_path_factory.mktemp("split")
    pool, labeled, ids, labeled_ids = write_tiny_pool(root)
    holdout = np.random.default_rng(2).choice(np.setdiff1d(ids, labeled_ids), 32, replace=False)
    write_manifest(str(root / "holdout.parquet"), holdout)
    return pool, labeled, str(root / "holdout.parquet"), labeled_ids, holdout


@pytest.fixture(scope="module")
def rounds(ray_local, split_pool, tmp_path_factory):
    """(config, result) of a strategy's round on the split pool, run the first time a test asks for it: budget 12,
    learning_loss's 5 (test_learning_loss_picks_from_a_seeded_subset_of_ten_times_b)."""
    pool, labeled, holdout, *_ = split_pool
    done = {}

    def round_of(strategy: str):
        if strategy not in done:
            cfg = tiny_config(pool, labeled, holdout, tmp_path_factory.mktemp(strategy) / "out", strategy,
                              budget=5 if strategy == "learning_loss" else 12,
                              workers=0 if strategy in IN_DRIVER else 2)
            done[strategy] = cfg, run_round(cfg)
        return done[strategy]
    return round_of


def tiny_config(pool, labeled, holdout, out, strategy, budget=12, workers=2) -> RoundConfig:
    # 32 labeled images are one optimizer step an epoch (on 2 workers or in the driver): min_steps 3 stretches 2
    # epochs to 3
    models = preset("cpu", vaal={"epochs": 1}, task={"epochs": 2, "min_steps": 3}, aalu={"epochs": 2, "batch_size": 32})
    return RoundConfig(pool=pool, labeled=labeled, out=str(out), budget=budget, strategy=strategy, holdout=holdout,
                       setup=Setup(models, AcquisitionConfig(mc_passes=5, ensemble_members=3),
                                   ScoringConfig(batch_size=64), workers=workers))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ROUND_TESTED)
def test_round_selects_b_new_ids_never_labeled_or_held_out(split_pool, rounds, strategy):
    labeled_ids, holdout_ids = split_pool[3:]
    cfg, result = rounds(strategy)
    sel = pq.read_table(result.selection).to_pandas()
    assert len(sel) == cfg.budget and sel["id"].is_unique
    assert not set(sel["id"]) & (set(labeled_ids) | set(holdout_ids))
    assert strategy in ROUND_ROBIN or np.all(np.diff(sel["score"]) <= 0)
    if strategy not in TASK_FREE:          # every other one trains a task model, evaluated on the held-out ids
        assert 0.0 <= result.record["train"]["task"]["last_epoch"]["eval_accuracy"] <= 1.0
        assert result.record["train"]["task"]["last_epoch"]["epoch"] == 3
    assert result.record["pool"]["held_out"] == 32
    guessed = strategy not in NO_GUESS
    assert ("predicted" in sel) == guessed and (result.record["predictions"] is True) == guessed
    if guessed:                            # 10 classes: the likeliest has a probability of at least 1/10
        assert sel["predicted"].between(0, 9).all() and sel["confidence"].between(0.1 - 1e-6, 1).all()


@pytest.mark.slow
def test_learning_loss_picks_from_a_seeded_subset_of_ten_times_b(split_pool, rounds):
    """TA-VAAL / Learning Loss score 10 x b random candidates by default (the papers' subset method)."""
    pool, labeled, holdout, labeled_ids, holdout_ids = split_pool
    cfg, result = rounds("learning_loss")
    assert cfg.budget == 5
    sel = pq.read_table(result.selection).column("id").to_pylist()
    unlabeled = np.setdiff1d(read_pool_ids(pool).to_numpy(zero_copy_only=False).astype(str),
                             np.concatenate([labeled_ids, holdout_ids]))
    inputs = RoundInputs(cfg, read_pool_meta(pool), read_manifest(labeled), "")
    candidates = set(random_subset(pa.array(unlabeled), 50, inputs.round_seed).to_pylist())
    assert len(candidates) == 50 and set(sel) <= candidates    # 5 picks from 50 of 192 by chance: p < 0.002


def test_every_strategy_is_registered_and_named_by_its_class():
    assert {"vaal", "random", "coreset", "entropy", "mc_dropout", "dbal", "ensemble", "learning_loss",
            "learning_loss_v2", "ta_vaal", "aalu", "aalu_advvae", "aalu_advvae_pred", "aalu_losslearn",
            "aalu_advvae_losslearn", "vaal_frozen_vae", "vaal_vae_w2", "vaal_disc_only", "ta_vaal_lloss",
            "coreset_vae", "margin", "cluster_margin", "typiclust", "badge"} == set(STRATEGIES)
    for name in STRATEGIES:
        assert get_strategy(name).name == name
    with pytest.raises(InputError, match="unknown strategy"):
        get_strategy("nope")


def test_task_strategies_need_labels(ray_local, tmp_path):
    ids = make_raw_pool(tmp_path / "with-labels", 64)
    table = pq.read_table(tmp_path / "with-labels" / "part-00000.parquet")
    write_pool(str(tmp_path / "pool"), [table.drop_columns(["label"])], PoolMeta("raw", (32, 32, 1)))
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:8])
    cfg = tiny_config(str(tmp_path / "pool"), str(tmp_path / "labeled.parquet"), None, tmp_path / "out", "entropy", 2)
    with pytest.raises(InputError, match="no 'label' column"):
        run_round(cfg)
    assert not (tmp_path / "out").exists()            # refused before inputs.json: fix the pool, rerun the same --out


@pytest.mark.slow
def test_a_task_strategy_round_is_deterministic_under_its_seed(rounds, tmp_path):
    """Two DDP rounds with the same seed train the same model and pick the same ids in the same order."""
    cfg, result = rounds("dbal")
    again = run_round(dataclasses.replace(cfg, out=str(tmp_path / "again")))
    first, second = (pq.read_table(r.selection).to_pydict() for r in (result, again))
    assert first["id"] == second["id"]
    np.testing.assert_array_equal(first["score"], second["score"])


def test_strategy_modules_reach_the_cluster_only_through_round_inputs():
    """A strategy module is its method: Ray work goes through RoundInputs, never straight to Ray or the streams."""
    forbidden = ("ray", "vaal_dist.pool.dataset", "vaal_dist.scoring.stream", "vaal_dist.train.trainer")
    for path in Path(strategies.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not [m for m in imported for f in forbidden if m == f or m.startswith(f + ".")], path.name


def test_strategy_modules_take_no_ray_name_from_a_re_export():
    """``from vaal_dist.x import Name`` where x got Name from Ray names Ray all the same (a Checkpoint through
    round_inputs): every name a strategy module imports is defined outside Ray."""
    for path in Path(strategies.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name)
                home = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", node.module)
                assert not (home or "").split(".")[0] == "ray", f"{path.name}: {alias.name} from {node.module} is Ray's"


def test_vectors_from_a_file_replace_the_model_that_only_embeds_and_join_the_one_that_scores():
    given = AcquisitionConfig(embeddings="vectors.parquet")
    assert {name: models_trained(get_strategy(name), given) for name in ("coreset", "typiclust", "cluster_margin")} \
        == {"coreset": (), "typiclust": (), "cluster_margin": ("task",)}
    assert models_trained(get_strategy("coreset"), AcquisitionConfig()) == ("task",)
    with pytest.raises(InputError, match=r"--embeddings is for the strategies that embed the pool, "
                                         r"\['cluster_margin', 'coreset', 'typiclust'\]; coreset_vae does not"):
        models_trained(get_strategy("coreset_vae"), given)
