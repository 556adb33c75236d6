"""Every number the CLI takes is checked as it is parsed: a bad one stops `vaal-dist round / prepare /
experiment` and jobs/imagenet_round.py with one error line naming the flag, exit 2, before Ray starts and
before anything is written."""
import argparse
import functools
import runpy
from pathlib import Path

import pytest

from vaal_dist import cli, cli_args

JOB = Path(__file__).parents[1] / "jobs" / "imagenet_round.py"


@functools.cache
def job_main():
    return runpy.run_path(str(JOB))["main"]


TRAINING = [("--epochs", "0"), ("--batch-size", "0"), ("--epoch-images", "0"), ("--task-epochs", "0"), ("--task-min-steps", "-1"),
            ("--aalu-epochs", "0"), ("--mc-passes", "0"), ("--members", "0"), ("--subset-factor", "-1"),
            ("--max-clusters", "0"), ("--embedding-image-size", "0"),
            ("--workers", "-1"), ("--cpus-per-worker", "0"), ("--cpus-per-worker", "nan"),
            ("--cpus-per-worker", "inf"), ("--max-failures", "-1"), ("--placement-timeout", "-1"),
            ("--placement-timeout", "2.5"), ("--score-batch-size", "0"), ("--actors", "-1"),
            ("--actors", "0"), ("--threads-per-actor", "-1"), ("--threads-per-actor", "0"), ("--epochs", "2.5"),
            ("--batch-size", "many"), ("--score-timeout", "0"), ("--score-timeout", "inf")]
ROUND = [("--budget", "0"), ("--budget", "-5"), ("--seed", "-1"), ("--seed", str(2**32)), *TRAINING]
PREPARE = [("--image-size", "0"), ("--files-per-shard", "0"), ("--max-pixels", "0"), ("--cpus-per-shard", "0"),
           ("--cpus-per-shard", "-0.5"), ("--read-threads", "0"), ("--channels", "4")]
EXPERIMENT = [("--seeds", "-1"), ("--initial", "0"), ("--step", "0"), ("--step", "1"), ("--final", "1.5"),
              ("--test-fraction", "1"), ("--test-fraction", "nan"), *TRAINING]
CASES = ([("round", *c) for c in ROUND] + [("job", *c) for c in ROUND] + [("prepare", *c) for c in PREPARE]
         + [("experiment", *c) for c in EXPERIMENT])


def argv(command: str, tmp_path: Path, flag: str, value: str) -> list[str]:
    out = str(tmp_path / "out")
    if command in ("round", "job"):
        given = ["--pool", str(tmp_path / "pool"), "--labeled", str(tmp_path / "l.txt"), "--budget", "1", "--out", out]
        return ([] if command == "job" else ["round"]) + given + [flag, value]
    if command == "prepare":
        return ["prepare", str(tmp_path / "src"), out, flag, value]
    return ["experiment", "--out", out, flag, value]


@pytest.mark.parametrize("command, flag, value", CASES)
def test_a_bad_number_stops_with_the_flag_named_before_ray_and_before_writing(command, flag, value, tmp_path,
                                                                             no_ray, capsys):
    main = job_main() if command == "job" else cli.main
    with pytest.raises(SystemExit) as stop:
        main(argv(command, tmp_path, flag, value))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f": error: argument {flag}: " in err[-1]
    assert sum("error" in line for line in err) == 1
    assert list(tmp_path.iterdir()) == []


def test_budget_0_on_the_embedded_pool_is_an_error_not_the_default(tmp_path, no_ray, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["round", "--budget", "0", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "argument --budget: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {"round": cli_args.add_round_args(argparse.ArgumentParser()),
            "prepare": cli_args.add_prepare_args(argparse.ArgumentParser()),
            "experiment": cli_args.add_experiment_args(argparse.ArgumentParser())}


def test_every_numeric_flag_has_a_bad_value_above():
    tried = {"round": {f for f, _ in ROUND}, "prepare": {f for f, _ in PREPARE},
             "experiment": {f for f, _ in EXPERIMENT}}
    for command, parser in parsers().items():
        numeric = {a.option_strings[0] for a in parser._actions if a.type is not None}
        assert numeric == tried[command], command


def test_the_edges_of_each_range_are_accepted():
    edges = parsers()["round"].parse_args(
        ["--budget", "1", "--seed", str(2**32 - 1), "--workers", "0", "--subset-factor", "0", "--max-failures", "0",
         "--cpus-per-worker", "0.25", "--actors", "1", "--threads-per-actor", "1", "--epoch-images", "1",
         "--placement-timeout", "0"])
    assert (edges.budget, edges.seed, edges.workers, edges.subset_factor, edges.max_failures, edges.cpus_per_worker,
            edges.actors, edges.threads_per_actor, edges.epoch_images, edges.placement_timeout) == \
        (1, 2**32 - 1, 0, 0, 0, 0.25, 1, 1, 1, 0)
    fractions = parsers()["experiment"].parse_args(["--initial", "0.01", "--final", "0.99", "--seeds", "0", "7"])
    assert (fractions.initial, fractions.final, fractions.seeds) == (0.01, 0.99, [0, 7])
