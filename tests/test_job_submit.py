"""`ray job submit` to a `ray start --head` on this machine runs jobs/imagenet_round.py, token auth on."""
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow          # a `ray start --head` cluster and a submitted job


def unmapped(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``::ffff:127.0.0.1`` (how a dual-stack gRPC server lists an IPv4 address) as ``127.0.0.1``."""
    address = ipaddress.ip_address(ip)
    return getattr(address, "ipv4_mapped", None) or address


def wait_for_dashboard(url: str, head: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as e:
            if "401" in str(e) or "403" in str(e):   # up, and asking for the token
                return
            time.sleep(1)
    raise TimeoutError(f"no dashboard at {url} after {seconds} s")


def test_job_submit_runs_the_round_and_writes_the_manifest(tmp_path, tiny_pool):
    pool, labeled = tiny_pool[:2]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "HOME": str(tmp_path)}    # the token is generated in, and read from, tmp_path/.ray: never ~/.ray
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    # Every port of its own: the test session's local Ray already holds the default agent ports, and a
    # head whose job agent cannot bind answers every submission with "No available agent".
    ports = {flag: free_port() for flag in ("port", "dashboard-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                            "metrics-export-port", "ray-client-server-port")}
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", *(f"--{flag}={port}" for flag, port in ports.items()),
         "--node-ip-address", "127.0.0.1",
         "--dashboard-host", "127.0.0.1", "--num-cpus", "2",
         "--temp-dir", tempfile.mkdtemp(prefix="ray-", dir="/tmp")],   # short: Unix socket paths are capped
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{ports['dashboard-port']}"
        wait_for_dashboard(address, head)
        out = tmp_path / "round"
        submit = [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps({"excludes": [".git", ".venv", "data", "results"]}), "--",
                  "python", "jobs/imagenet_round.py", "--pool", pool, "--labeled", labeled, "--budget", "10",
                  "--out", str(out), "--preset", "cpu", "--epochs", "1", "--batch-size", "32"]
        for _ in range(15):   # the dashboard answers before its job agent is up: no job is made then
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent to submit job" not in job.stderr + job.stdout:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert f"selection: {out}/selection.parquet" in job.stdout
        assert pq.read_table(out / "selection.parquet").num_rows == 10
        assert json.loads((out / "run.json").read_text())["budget"] == 10
        # `ray start --head` always starts a Ray client server: on the node's address and loopback only.
        client = {unmapped(c.laddr.ip) for c in psutil.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == ports["ray-client-server-port"]}
        assert ipaddress.ip_address("127.0.0.1") in client, client
        assert not any(address.is_unspecified for address in client), client
    finally:
        head.terminate()
        head.wait(timeout=120)
