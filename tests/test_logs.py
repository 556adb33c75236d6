"""What a job prints: one line per training epoch, Ray's own INFO logs only with --verbose, a short summary."""
import argparse
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import damage_image_page, make_raw_pool
from vaal_dist import cli_args, ray_session
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.train import common, trainer

REPO = Path(__file__).resolve().parents[1]
# A screen. This round printed 11 lines here: its start, two epoch lines, scoring, the report written, the
# three summary lines, Ray's token warning and two of Ray's core-worker errors about actor restarts.
SCREEN_LINES = 40
# Ray Train's own actors, whose tracebacks the test's machine causes, not the job: its placement-group cleaner
# cannot tell its cluster's address where several Rays run (the test session's, other jobs'), and a loaded
# machine times out its controller's resource requests. Their INFO lines are checked for separately.
RAY_TRAIN_ACTORS = ("(PlacementGroupCleaner pid=", "(TrainController pid=")
RAY_INFO = ("Execution plan", "TrainingReport(", "Active & requested resources", "tqdm is not installed",
            "Setting up process group", "Moving model to device", "Started training worker group",
            "Requesting resources", "Started a local Ray instance")

VAAL_METRICS = {"recon": 0.06123, "kl": 12.3456, "vae_adv": 1.3862, "disc_loss": 1.3801, "d_labeled": 0.51,
                "d_unlabeled": 0.49, "d_auc": 0.5531, "unlabeled_images": 4500, "epoch": 2, "resumed_from_epoch": 0,
                "epoch_seconds": 30.0}


def test_an_epoch_line_is_one_line_with_the_epoch_the_rate_the_losses_and_ds_auc():
    line = common.epoch_line("vaal", 2, 10, 30.0, 9000, VAAL_METRICS)
    assert line == ("vaal epoch 2/10: 30.0 s, 300 images/s, recon 0.06123, KL 12.35, VAE adv 1.386, "
                    "D loss 1.38, D AUC 0.5531")
    task = common.epoch_line("task", 15, 15, 2.0, 500, {"task_loss": 0.25, "train_accuracy": 0.9,
                                                        "eval_accuracy": 0.875, "images": 250})
    assert task == "task epoch 15/15: 2.0 s, 250 images/s, loss 0.25, train acc 0.9, held-out acc 0.875"
    assert "\n" not in line + task


class _Context:
    def __init__(self, rank):
        self.rank = rank

    def get_world_rank(self):
        return self.rank

    def get_experiment_name(self):
        return "task"


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_0_prints_short_epochs_thinned_to_one_line_per_interval(monkeypatch, capsys, rank):
    import ray.train

    clock = iter(range(0, 1000, 2))               # each epoch 2 s after the last: a line every 5th epoch
    monkeypatch.setattr(ray.train, "get_context", lambda: _Context(rank))
    monkeypatch.setattr(common.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(common, "_last_epoch_line", float("-inf"))
    for epoch in range(1, 23):
        common.print_epoch(epoch, 22, 2.0, 100, {"task_loss": 1.0})
    printed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    # Lines at t = 0 (epoch 1), then the first epoch 10 s on: 6 (t=10), 11, 16, 21; the last always.
    assert printed == ([] if rank else [f"task epoch {e}/22" for e in (1, 6, 11, 16, 21, 22)])


def test_every_command_takes_verbose():
    for add, argv in ((cli_args.add_round_args, []), (cli_args.add_experiment_args, []), (cli_args.add_prepare_args, ["a", "b"])):
        assert add(argparse.ArgumentParser()).parse_args([*argv, "--verbose"]).verbose
        assert not add(argparse.ArgumentParser()).parse_args(argv).verbose


def test_quiet_ray_keeps_ray_datas_warnings_and_bars_and_its_info_off_the_console(monkeypatch):
    import ray.data

    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "print_on_execution_start", True)
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert consoles                              # Ray Data logs to the console: what is quieted
    for handler in consoles:
        monkeypatch.setattr(handler, "level", handler.level)   # restored after the test
    with warnings.catch_warnings():             # quiet_ray filters Ray's deprecation warnings
        assert ray_session.quiet_ray() == {"logging_level": logging.WARNING}
    assert not context.print_on_execution_start
    assert all(h.level == logging.WARNING for h in consoles)


def test_ray_trains_console_follows_the_drivers_ray_logging_level(monkeypatch):
    ray_logger = logging.getLogger("ray")
    monkeypatch.setattr(ray_logger, "level", logging.WARNING)
    assert trainer._logging_config().log_level == "WARNING"
    monkeypatch.setattr(ray_logger, "level", logging.INFO)
    assert trainer._logging_config().log_level == "INFO"


def _start_round(tmp_path, pool, labeled, *flags) -> subprocess.Popen:
    """jobs/imagenet_round.py as a user runs it (its own local Ray, one training worker), output captured."""
    command = [sys.executable, "jobs/imagenet_round.py", "--pool", str(pool), "--labeled", str(labeled),
               "--budget", "10", "--out", str(tmp_path / "out"), "--preset", "cpu", "--epochs", "2",
               "--batch-size", "32", *flags]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _rounds(*runs: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """The rounds ``_start_round`` started, waited for together (one left running past its time is killed)."""
    try:
        outputs = [run.communicate(timeout=900) for run in runs]
        return [subprocess.CompletedProcess(run.args, run.returncode, *output) for run, output in zip(runs, outputs)]
    finally:
        for run in runs:
            run.kill()                       # nothing, once it has ended


def _round(tmp_path, pool, labeled, *flags) -> subprocess.CompletedProcess:
    return _rounds(_start_round(tmp_path, pool, labeled, *flags))[0]


def _lines(run: subprocess.CompletedProcess) -> list[str]:
    return (run.stdout + run.stderr).split("\n")       # "\n" only: a progress bar redraws with "\r"


@pytest.mark.slow          # two rounds at once, each starting its own Ray and a training worker
def test_a_round_prints_epoch_lines_and_a_summary_and_ray_internals_only_with_verbose(tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    quiet, verbose = _rounds(_start_round(tmp_path / "quiet", pool, labeled),
                             _start_round(tmp_path / "verbose", pool, labeled, "--verbose"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = _lines(quiet)
    assert not [line for line in lines if any(info in line for info in RAY_INFO)]
    ours = [line for line in lines if not any(actor in line for actor in RAY_TRAIN_ACTORS)]
    assert len(ours) <= SCREEN_LINES, "\n".join(ours)
    assert re.findall(r"vaal epoch (\d)/2: [\d.]+ s, [\d,]+ images/s, .*, D AUC [\d.]+\n", quiet.stdout) == ["1", "2"]
    out = tmp_path / "quiet" / "out"
    stdout = quiet.stdout.split("\n")
    assert f"selection: {out}/selection.parquet" in stdout and stdout[-2].startswith("per-100-sample query time: ")
    assert f"report: {out}/report.html" in stdout

    assert verbose.returncode == 0, verbose.stderr[-3000:]
    text = verbose.stdout + verbose.stderr
    assert "TrainingReport(" in text and "Execution plan of Dataset" in text and "INFO" in text
    assert len(_lines(verbose)) > len(lines)


@pytest.mark.slow          # a round whose training worker meets a damaged shard
def test_a_round_failing_in_a_worker_still_prints_its_one_error_line(tmp_path):
    ids = make_raw_pool(tmp_path / "pool", 64, shards=1)
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:8])
    shard = tmp_path / "pool" / "part-00000.parquet"
    damage_image_page(shard)
    run = _round(tmp_path, tmp_path / "pool", tmp_path / "labeled.parquet")
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in _lines(run) if line.startswith("vaal-dist: error: ")]
    assert len(errors) == 1 and "shard that cannot be read" in errors[0] and "part-00000" in errors[0]
