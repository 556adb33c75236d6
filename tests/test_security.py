"""Security posture: the local Ray we start asks for a token and serves HTTP on 127.0.0.1 only;
checkpoints load weights-only."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from vaal_dist.train.vaal_loop import load_checkpoint

PROBE = """
import json, os, urllib.request, urllib.error
import ray
from vaal_dist.cli import ray_session

def status(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code

with ray_session(None):
    url = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    token = open(os.path.expanduser("~/.ray/auth_token")).read().strip()
    print(json.dumps({"url": url, "anonymous": status(url + "/api/jobs/"), "with_token": status(url + "/api/jobs/", token)}))
"""


def test_the_demo_ray_wants_a_token_and_listens_on_loopback():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("http://127.0.0.1:")
    assert seen["anonymous"] == 401 and seen["with_token"] == 200


class _Boom:
    def __reduce__(self):
        return (print, ("arbitrary code ran while loading a checkpoint",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"vae": {}, "payload": _Boom()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(str(path))
