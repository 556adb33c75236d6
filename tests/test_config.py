"""Configs: a round's recorded preset name always names the models it ran with, and the configs the CLI builds
hash to pinned fingerprints: the flat RoundConfig of commit 04f7451's, re-pinned once when TaskConfig gained
``min_steps`` (issue #21). A change here is a change of what the CLI builds, so it must be deliberate."""
import argparse

import pyarrow as pa
import pytest

from vaal_dist.cli_args import add_round_args, config_from_args
from vaal_dist.config import PRESETS, AcquisitionConfig, RoundConfig, Setup, VAALConfig, preset
from vaal_dist.fingerprint import hash_config_and_ids

POOL, LABELED = pa.array(["a", "b", "c"]), pa.array(["a"])
ROUND = ["--pool", "P", "--labeled", "L", "--budget", "5", "--out", "O"]

# Fingerprints of these command lines (the flat RoundConfig of commit 04f7451, plus TaskConfig.min_steps).
BEFORE_THE_SPLIT = [
    (ROUND, "51aff7133b7b5911a7b12d9b92ad3126add7431e4655cc72e0169f79482a54e5"),
    (ROUND + ["--preset", "cpu", "--epochs", "1", "--task-epochs", "2", "--aalu-epochs", "3", "--epoch-images", "9",
              "--batch-size", "16", "--workers", "0", "--seed", "3", "--strategy", "entropy", "--members", "2",
              "--mc-passes", "4", "--subset-factor", "0", "--actors", "1", "--threads-per-actor", "2", "--amp",
              "--use-gpu", "--cpus-per-worker", "2", "--max-failures", "0", "--score-batch-size", "8",
              "--holdout", "H"], "e46aa02cc9ad0b8571be062fa440c3d9b9715638d1f4e91022f634f13a49d6ee"),
    (ROUND + ["--preset", "imagenet"], "9abf705ec16c93705dc76c24e95d7bd1f9dda0e7e2a3a9870bf169ae2e9e36c1"),
]


@pytest.mark.parametrize("argv, fingerprint", BEFORE_THE_SPLIT)
def test_the_cli_builds_the_config_it_built_before_the_split(argv, fingerprint):
    cfg = config_from_args(add_round_args(argparse.ArgumentParser()).parse_args(argv))
    assert hash_config_and_ids(cfg, POOL, LABELED, None) == fingerprint


def test_a_default_round_keeps_itshash_config_and_ids():
    cfg = RoundConfig("pool", "labeled.parquet", "out", 2)
    assert hash_config_and_ids(cfg, pa.array(["a", "b", "c", "d"]), pa.array(["b"]), None) == \
        "2c49cdcebf689e2039a2dc17a9c5442d2cb9f51b1f4a4221019c8a1d2e57f36c"


def test_a_setting_added_later_changes_the_fingerprint_only_when_set():
    default = RoundConfig("pool", "labeled.parquet", "out", 2)
    capped = RoundConfig("pool", "labeled.parquet", "out", 2,
                         setup=Setup(preset("cifar10"), acquisition=AcquisitionConfig(max_clusters=500)))
    ids, labeled = pa.array(["a", "b", "c", "d"]), pa.array(["b"])
    assert hash_config_and_ids(capped, ids, labeled, None) != hash_config_and_ids(default, ids, labeled, None)


def test_the_recorded_preset_names_the_models_the_round_ran_with():
    cfg = RoundConfig("p", "l", "o", 5, setup=Setup(preset("cpu", vaal={"epochs": 1}, task={"lr": 0.5})))
    record = cfg.to_dict()
    assert record["preset"] == "cpu" and record["vaal"]["channels"] == PRESETS["cpu"].vaal.channels
    assert (cfg.vaal.epochs, cfg.task.lr, cfg.task.arch) == (1, 0.5, "cnn")
    with pytest.raises(TypeError):          # models come only with their preset's name
        RoundConfig("p", "l", "o", 5, vaal=VAALConfig())
    with pytest.raises(ValueError, match="unknown preset 'cifar11'"):
        preset("cifar11")
