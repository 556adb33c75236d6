"""Configs: a round's recorded preset name always names the models it ran with, and the configs the CLI builds
hash to the fingerprints they had before the Preset / Setup split (a rerun into an old --out still resumes)."""
import argparse

import pyarrow as pa
import pytest

from vaal_dist.cli import add_round_args, config_from_args
from vaal_dist.config import PRESETS, RoundConfig, Setup, VAALConfig, preset
from vaal_dist.round import _fingerprint

POOL, LABELED = pa.array(["a", "b", "c"]), pa.array(["a"])
ROUND = ["--pool", "P", "--labeled", "L", "--budget", "5", "--out", "O"]

# Fingerprints of these command lines as the flat RoundConfig of commit 04f7451 hashed them.
BEFORE_THE_SPLIT = [
    (ROUND, "0728b0dfb1e6c21b99b91b460a53667cb1c1f633065c0b5ac84366aab962dcfa"),
    (ROUND + ["--preset", "cpu", "--epochs", "1", "--task-epochs", "2", "--aalu-epochs", "3", "--epoch-images", "9",
              "--batch-size", "16", "--workers", "0", "--seed", "3", "--strategy", "entropy", "--members", "2",
              "--mc-passes", "4", "--subset-factor", "0", "--actors", "1", "--threads-per-actor", "2", "--amp",
              "--use-gpu", "--cpus-per-worker", "2", "--max-failures", "0", "--score-batch-size", "8",
              "--holdout", "H"], "689238a52522ba9538e312d33f064b055c46b123ac2ebcc9b444a15c54bb797f"),
    (ROUND + ["--preset", "imagenet"], "6e49f826f064ba58edac37e949299dc5c7dc32cf9cf24c0a8ab99d5d99d00166"),
]


@pytest.mark.parametrize("argv, fingerprint", BEFORE_THE_SPLIT)
def test_the_cli_builds_the_config_it_built_before_the_split(argv, fingerprint):
    cfg = config_from_args(add_round_args(argparse.ArgumentParser()).parse_args(argv))
    assert _fingerprint(cfg, POOL, LABELED, None) == fingerprint


def test_a_default_round_keeps_its_fingerprint():
    cfg = RoundConfig("pool", "labeled.parquet", "out", 2)
    assert _fingerprint(cfg, pa.array(["a", "b", "c", "d"]), pa.array(["b"]), None) == \
        "e61971faae672f9ec11a68ed7e8e5596d46026eea543f139f721efc45cb57567"


def test_the_recorded_preset_names_the_models_the_round_ran_with():
    cfg = RoundConfig("p", "l", "o", 5, setup=Setup(preset("cpu", vaal={"epochs": 1}, task={"lr": 0.5})))
    record = cfg.to_dict()
    assert record["preset"] == "cpu" and record["vaal"]["channels"] == PRESETS["cpu"].vaal.channels
    assert (cfg.vaal.epochs, cfg.task.lr, cfg.task.arch) == (1, 0.5, "cnn")
    with pytest.raises(TypeError):          # models come only with their preset's name
        RoundConfig("p", "l", "o", 5, vaal=VAALConfig())
    with pytest.raises(ValueError, match="unknown preset 'cifar11'"):
        preset("cifar11")
