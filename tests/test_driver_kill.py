"""The job's driver process killed for real (SIGKILL) while training and while scoring: the same command run
again completes with the calm run's selection and leaves no temporary file beside the outputs.

The driver joins the tests' Ray cluster as a `ray job submit` driver joins its cluster, so the cluster
outlives it (and reaps the job's workers and actors), as it would in production.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CALM_EPOCHS, read_selection

# Runs the CLI in a driver that SIGKILLs itself when the first scored candidates reach it.
KILLED_WHILE_SCORING = """
import os, signal, sys
from vaal_dist.scoring.topk import RunningTopK
RunningTopK.add = lambda self, *candidates, **columns: os.kill(os.getpid(), signal.SIGKILL)
from vaal_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""
CLI = "import sys\nfrom vaal_dist.cli import main\nsys.exit(main(sys.argv[1:]))"


def round_argv(pool: str, labeled: str, out: Path, address: str) -> list[str]:
    """The CLI's spelling of conftest's ``calm_config`` on 1 worker (the calm round it must select again)."""
    return ["round", "--pool", pool, "--labeled", labeled, "--out", str(out), "--budget", "20", "--preset", "cpu",
            "--epochs", str(CALM_EPOCHS), "--batch-size", "32", "--workers", "1", "--actors", "2",
            "--score-batch-size", "32", "--ray-address", address]


def driver(code: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def leftovers(out: Path) -> list[str]:
    """Temporary files anywhere under the round's folder: half-written outputs or checkpoints."""
    return [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name]


def first_checkpoint(out: Path) -> bool:
    return any((out / "train" / "vaal").glob("checkpoint*"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["training", "scoring"])
def test_a_killed_driver_reruns_to_the_calm_selection_with_no_temporary_files(ray_local, calm_round, tmp_path, stage):
    calm = calm_round(1)
    pool, labeled = calm.pool, calm.labeled
    out = tmp_path / "out"
    argv = round_argv(pool, labeled, out, ray_local.get_runtime_context().gcs_address)
    if stage == "scoring":
        killed = driver(KILLED_WHILE_SCORING, argv)
        killed.wait(timeout=300)
    else:
        killed = driver(CLI, argv)
        deadline = time.monotonic() + 300
        while not first_checkpoint(out) and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists(), "the driver finished before it was killed: nothing was tested"

    rerun = driver(CLI, argv)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-2000:]
    assert read_selection(out) == read_selection(calm.out)
    assert leftovers(out) == []
