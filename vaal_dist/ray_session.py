"""The one way vaal_dist reaches Ray: join ``address`` / $RAY_ADDRESS (e.g. under ``ray job submit``), else
start a private local Ray; the API keeps it for its next call, a CLI command shuts down the Ray it started."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import ray


def connect(address: str | None = None, verbose: bool = False) -> None:
    """Ray for this process: the one already running in it, else ``address`` / $RAY_ADDRESS joined, else a
    private local one started (``start_local_ray``). Unless ``verbose``, Ray's own INFO logs stay in its log
    files (``quiet_ray``)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    logs = {} if verbose else quiet_ray()
    if address:
        ray.init(address=address, **logs)
    else:
        start_local_ray(**logs)


@contextlib.contextmanager
def shut_down_after():
    """A Ray that the block connects to (``connect``) is shut down when the block ends; one this process ran
    before is left running. A command connects only once its input is checked: a refusal starts no Ray."""
    running = ray.is_initialized()
    try:
        yield
    finally:
        if not running:
            ray.shutdown()


def start_local_ray(**init_kwargs) -> None:
    """A private Ray on this machine: dashboard / job API on 127.0.0.1, token authentication on, and
    ~/.ray/auth_token readable by its owner only.

    Ray >= 2.59 turns tokens on for local clusters by itself (RAY_AUTH_MODE cannot be set from here: Ray
    reads it when imported, and a late change starts the GCS and this driver in different modes). The
    dashboard serves the state API that Ray Train's cleanup polls. No Ray client server is started. Ray
    2.60's gRPC servers listen on every interface whatever the node address, and on Linux it replaces a
    127.0.0.1 node address by the host's, so none is passed (docs/security.md).
    """
    token = Path.home() / ".ray" / "auth_token"       # where Ray writes the token it generates
    token.parent.mkdir(mode=0o700, exist_ok=True)       # a new ~/.ray keeps a new token private from the start
    ray.init(address="local", dashboard_host="127.0.0.1", **init_kwargs)
    if token.exists():
        token.chmod(0o600)                              # Ray writes it 0644; an older one may be 0644 too


def quiet_ray() -> dict:
    """Ray's INFO logs off on the console, its warnings, errors and progress bars kept; returns the ``ray.init``
    arguments that quiet the driver's ``ray`` logger, which Ray Train's workers follow (train/trainer.py).

    Ray Data logs an execution plan per dataset and, where stdout is no terminal, its progress as INFO lines
    every few seconds: both go to its log file only (the session's logs/ray-data*.log). Ray's deprecation
    warnings name Ray's own internals here, nothing a user can change.
    """
    import warnings

    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    return {"logging_level": logging.WARNING}
