"""cluster.yaml is checked offline with Ray's own launcher schema, plus the promises docs/cluster.md makes.

``prepare_config`` merges the AWS defaults (ray/autoscaler/aws/defaults.yaml, a local file: no boto3, no
network, no credentials) and ``validate_config`` checks the result against ray/autoscaler/ray-schema.json.
The raw YAML alone is rejected (it lacks fields such as ``cluster_synced_files`` that only the merge adds).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _prepared(raw: dict | None = None) -> dict:
    return prepare_config(copy.deepcopy(_raw() if raw is None else raw))


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = _prepared()
    validate_config(cfg)
    return cfg


def test_validates_against_ray_schema(config):
    assert config["provider"] == {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False}
    assert config["head_node_type"] in config["available_node_types"]


def test_raw_yaml_is_not_enough():
    # validate_config wants a prepared config; on raw YAML it blames a Ray version mismatch.
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(_raw())


def test_gpu_worker_type_autoscales_from_zero(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"] == {}
    gpu = {name: t for name, t in types.items()
           if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no GPU worker node type"
    for t in gpu.values():
        assert t["min_workers"] == 0
        assert 0 < t["max_workers"] <= config["max_workers"]
        assert t["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["idle_timeout_minutes"] > 0


def test_setup_commands_install_the_mounted_package(config):
    mounted = [remote for remote in config["file_mounts"] if remote.rstrip("/").endswith("vaal_dist/vaal_dist")]
    assert mounted, config["file_mounts"]
    root = mounted[0].rstrip("/").rsplit("/", 1)[0]                    # ~/vaal_dist
    assert f"{root}/pyproject.toml" in config["file_mounts"]
    # prepare_config has merged setup_commands into both lists: what each node kind really runs.
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in config[key] if "pip install" in c and "vaal_dist" in c]
        assert installs, f"{key} never installs vaal_dist: {config[key]}"
        paths = {p.replace("$HOME", "~") for c in installs for p in re.findall(r"(?:~|\$HOME)/vaal_dist", c)}
        assert paths == {root}, (key, installs)
    assert any("[gpu]" in c for c in config["worker_setup_commands"])
    # The nodes run the client's Ray, not the nightly wheel of Ray's AWS defaults.
    assert any(f"ray[default,train,data]=={ray.__version__}" in c for c in config["head_setup_commands"])
    assert not any("ray-wheels" in c for c in config["head_setup_commands"] + config["worker_setup_commands"])


def test_token_auth_and_local_dashboard(config):
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "~/.ray/auth_token" in config["file_mounts"]
    # Every node makes the synced token private before Ray starts (setup runs after the file mounts).
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("chmod 600 ~/.ray/auth_token" in c for c in config[key]), (key, config[key])
    # The head keeps Ray's own (private) node address, which the Ray client server binds.
    assert "--node-ip-address" not in head


@pytest.mark.parametrize("mutate, error, match", [
    (lambda c: c.update(bogus_key=1), jsonschema.ValidationError, "bogus_key"),         # unknown top-level key
    (lambda c: c.update(max_workers="many"), jsonschema.ValidationError, "many"),       # wrong type
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),            # typo in a node type
     jsonschema.ValidationError, "min_worker"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9),           # more than max_workers
     ValueError, "sum of `min_workers`"),
], ids=["bogus-key", "max-workers-string", "node-type-typo", "min-over-max"])
def test_validator_rejects_broken_copies(mutate, error, match):
    raw = _raw()
    mutate(raw)
    with pytest.raises(error, match=match):
        validate_config(_prepared(raw))
