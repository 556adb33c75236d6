"""The GPU check's dry run: ``SMALL=1 bash benchmarks/gpu_check.sh`` runs every step at toy sizes on the CPU, so a
change that breaks a step is found here, not in the few minutes a GPU machine is lent for."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
STEPS = ("scoring, fp32", "training images/s", "paper setting", "1.28M round", "embedding, resnet50")
LIMITS_S = 5 * (150 + 120 + 150 + 170 + 60)      # the script's SMALL limits, every step at its most


@pytest.mark.slow
@pytest.mark.timeout(LIMITS_S + 300)
def test_the_dry_run_passes_every_step(tmp_path):
    env = {**os.environ, "SMALL": "1", "PY": sys.executable, "OUT": str(tmp_path), "WORK": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=LIMITS_S + 120)
    table = (tmp_path / "gpu_check.md").read_text()
    log_tail = (tmp_path / "gpu_check.log").read_text()[-4000:]
    assert "FAILED" not in table and done.returncode == 0, f"{table}\n--- log tail:\n{log_tail}"
    steps = table.split("=== ")[1:]
    assert [s.splitlines()[0] for s in steps] == list(STEPS)
    assert all(any(line.startswith("| ") and line.endswith(" |") for line in s.splitlines()[2:]) for s in steps)


def test_a_failed_step_fails_the_script(tmp_path):
    """A step whose command fails prints its FAILED row and makes the script exit 1 (PY=false: every step's
    command fails at once)."""
    env = {**os.environ, "SMALL": "1", "PY": "false", "OUT": str(tmp_path), "WORK": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    table = (tmp_path / "gpu_check.md").read_text()
    assert done.returncode == 1
    assert [line.split(" | ")[0] for line in table.splitlines() if "FAILED or timed out" in line] == \
        [f"| {step}" for step in STEPS]
