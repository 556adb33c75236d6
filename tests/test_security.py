"""Security posture: the local Ray we start asks for a token, keeps it private, serves its job API on
127.0.0.1 and listens elsewhere only where docs/security.md says; checkpoints load weights-only."""
import ipaddress
import json
import os
import pickle
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch

from vaal_dist.config import RoundConfig, Setup, preset
from vaal_dist.errors import InputError
from vaal_dist.pool.io import read_pool_meta
from vaal_dist.pool.manifests import read_manifest
from vaal_dist.round import run_round
from vaal_dist.round_inputs import RoundInputs
from vaal_dist.strategies.vaal import VAAL
from vaal_dist.train import vaal_loop
from vaal_dist.train.common import load_checkpoint

PROBE = """
import json, os, urllib.request, urllib.error
import ray
from vaal_dist.ray_session import connect, shut_down_after

def status(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code

with shut_down_after():
    connect()
    url = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    token = open(os.path.expanduser("~/.ray/auth_token")).read().strip()
    print(json.dumps({"url": url, "anonymous": status(url + "/api/jobs/"), "with_token": status(url + "/api/jobs/", token)}))
"""


@pytest.mark.slow
def test_the_demo_ray_wants_a_token_and_listens_on_loopback(tmp_path):
    token = tmp_path / ".ray" / "auth_token"     # a token made earlier, world-readable as Ray writes it
    token.parent.mkdir()
    token.write_text(secrets.token_hex(32))
    token.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                           env={**env, "HOME": str(tmp_path)})
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("http://127.0.0.1:")
    assert seen["anonymous"] == 401 and seen["with_token"] == 200
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_the_token_a_local_ray_generates_is_private(ray_local):
    token = Path.home() / ".ray" / "auth_token"    # the session's HOME is new: Ray generated this token
    assert len(token.read_text().strip()) > 0
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def _ray_processes(node) -> list[psutil.Process]:
    """The driver (this process: its core worker serves gRPC) and every process of the local Ray."""
    roots = [psutil.Process(info.process.pid) for infos in node.all_processes.values() for info in infos]
    procs = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    procs[os.getpid()] = psutil.Process()
    return list(procs.values())


def _listening(node) -> dict[str, set[str]]:
    """{endpoint: {where it listens}}, where is "loopback", "node address" or "every interface"."""
    names = {int(node.address_info["webui_url"].rsplit(":", 1)[1]): "dashboard and job API",
             node.dashboard_agent_listen_port: "dashboard agent HTTP",
             node.runtime_env_agent_port: "runtime env agent HTTP",
             node.metrics_export_port: "metrics"}
    seen: dict[str, set[str]] = {}
    for proc in _ray_processes(node):
        try:
            sockets = [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:      # a worker that exited while we looked
            continue
        for ip, port in sockets:
            address = ipaddress.ip_address(ip)
            where = ("loopback" if address.is_loopback else "every interface" if address.is_unspecified
                     else "node address" if ip == node.node_ip_address else ip)
            seen.setdefault(names.get(port, "gRPC"), set()).add(where)
    return seen


def _status_without_token(ip: str, port: int) -> int:
    try:
        return urllib.request.urlopen(f"http://{ip}:{port}/api/jobs/", timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_local_ray_listens_where_the_docs_say(ray_local):
    node = ray_local._private.worker.global_worker.node
    ray_local.get(ray_local.remote(lambda: os.getpid()).remote())   # a worker, with its own gRPC server
    agents, deadline = {"runtime env agent HTTP", "metrics"}, time.monotonic() + 60
    while not agents <= _listening(node).keys() and time.monotonic() < deadline:
        time.sleep(1)                     # the agents come up a little after ray.init returns
    expected = {"dashboard and job API": {"loopback"},
                "dashboard agent HTTP": {"loopback", "node address"},
                "runtime env agent HTTP": {"node address"},
                "metrics": {"every interface"},
                "gRPC": {"every interface"}}       # GCS, raylet, agents, driver and workers
    seen = _listening(node)
    if "dashboard agent HTTP" in seen:   # absent when another Ray on this host holds its fixed port (52365)
        assert _status_without_token(node.node_ip_address, node.dashboard_agent_listen_port) == 401
    else:
        del expected["dashboard agent HTTP"]
    assert seen == expected
    assert "ray_client_server" not in node.all_processes
    # What the network reaches over HTTP asks for the token, except Prometheus' metrics.
    assert _status_without_token(node.node_ip_address, node.runtime_env_agent_port) == 401
    assert _status_without_token(node.node_ip_address, node.metrics_export_port) == 200


class _Boom:
    def __reduce__(self):
        return (print, ("arbitrary code ran while loading a checkpoint",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"vae": {}, "payload": _Boom()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(str(path))


def test_a_checkpoint_config_must_be_the_rounds(tmp_path):
    path = tmp_path / "vaal.pt"
    torch.save({"vae": {"w": torch.zeros(2)}, "config": {"latent_dim": 2**40, "channels": [8, 16], "evil": 1},
                "in_channels": 1}, path)
    with pytest.raises(InputError, match=rf"checkpoint {path} is not this round's: config.evil: checkpoint 1, "
                                         r"round None; config.latent_dim: checkpoint 1099511627776, round 32$"):
        load_checkpoint(str(path), {"config": {"latent_dim": 32, "channels": (8, 16)}, "in_channels": 1})
    assert load_checkpoint(str(path), {"in_channels": 1})["vae"]["w"].tolist() == [0, 0]


@pytest.mark.slow
def test_a_tampered_checkpoint_is_refused_before_a_model_is_built(ray_local, tmp_path, tiny_pool, monkeypatch):
    pool, labeled = tiny_pool[:2]
    cfg = RoundConfig(pool=pool, labeled=labeled, out=str(tmp_path / "round"), budget=20,
                      setup=Setup(preset("cpu", vaal={"epochs": 1, "batch_size": 32}), workers=0))
    # A round that crashed after training (its scorers would build the VAE from this checkpoint), then
    # someone with write access to --out asks for a model of 2**40 latent dimensions.
    VAAL().train(RoundInputs(cfg, read_pool_meta(pool), read_manifest(labeled), str(tmp_path / "round/train")))
    checkpoint = tmp_path / "round/train/vaal/checkpoint_000001/vaal.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["latent_dim"] = 2**40
    torch.save(state, checkpoint)
    real_build, built = vaal_loop.build_models, []

    def build_models(vaal_cfg, *args):
        built.append(vaal_cfg.latent_dim)
        return real_build(vaal_cfg, *args)

    monkeypatch.setattr(vaal_loop, "build_models", build_models)
    with pytest.raises(InputError, match=rf"checkpoint .*/vaal.pt is not this round's: config.latent_dim: "
                                         rf"checkpoint 1099511627776, round {cfg.vaal.latent_dim}$"):
        run_round(cfg)
    assert built == [cfg.vaal.latent_dim]     # the round's own models, built before the checkpoint was read
    assert not (tmp_path / "round/selection.parquet").exists() and not (tmp_path / "round/run.json").exists()
