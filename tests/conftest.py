"""Shared fixtures and builders: a temporary HOME (Ray's token lives there), one local Ray per test session
(job API on 127.0.0.1), tiny seeded pools and images, untrained checkpoints, round configs, float32 tolerances,
a moto S3 server on loopback; task models trained on two tones, a --embedding backbone's weights, the labeling
loop's round folders and Label Studio answers, a report page's elements. Test modules import builders from here,
never from each other (tests/test_architecture.py checks)."""
from __future__ import annotations

import contextlib
import dataclasses
import html.parser
import http.client
import http.server
import io
import itertools
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import typing
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.train
import torch
from PIL import Image

from vaal_dist.config import AcquisitionConfig, Backbone, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.pool.io import PoolMeta, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import write_json
from vaal_dist.round import RoundResult, run_round
from vaal_dist.round_inputs import Trained
from vaal_dist.scoring.topk import top_k
from vaal_dist.strategies.vaal import VAAL, VAALScorer
from vaal_dist.train.task_loop import (build_optimizer, build_task_model, member_file, save_task_checkpoint,
                                       train_task_epoch)
from vaal_dist.train.vaal_loop import CHECKPOINT_FILE, build_models, save_checkpoint


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    """Tests never touch the real ~/.ray: Ray writes and reads its auth token under $HOME, and every
    subprocess a test starts inherits this one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="session")
def ray_local():
    """The session's local Ray (2 CPUs), for the tests that ask for it: started at the first, and started again
    before the next one after a ``loopback_cluster`` ended it (``_ray_local_running``)."""
    import ray

    _start_ray_local()
    yield ray
    ray.shutdown()


def _start_ray_local() -> None:
    from vaal_dist.ray_session import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=False)


@pytest.fixture(autouse=True)
def _ray_local_running(request):
    """ray_local's Ray running for a test that uses it, directly or through a fixture: a loopback_cluster shuts it
    down, and a run of cluster tests does not start it again between two clusters."""
    if "ray_local" in request.fixturenames:
        import ray

        if not ray.is_initialized():
            _start_ray_local()


@pytest.fixture
def no_ray(monkeypatch):
    """Ray is reached only through ray_session.connect: starting it fails the test."""
    from vaal_dist import ray_session

    def connect(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(ray_session, "connect", connect)


def make_raw_pool(path, n: int, size: int = 32, channels: int = 1, shards: int = 4, seed: int = 0,
                  id_prefix: str = "img") -> np.ndarray:
    """A raw pool of n seeded random images in ``shards`` files; returns the ids in pool order."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    ids = np.array([f"{id_prefix}-{i:05d}" for i in range(n)])
    bounds = np.linspace(0, n, shards + 1).astype(int)
    write_pool(str(path), [
        pa.table({"id": ids[a:b], "image": pa.array([p.tobytes() for p in pixels[a:b]], pa.binary()),
                  "label": np.arange(a, b) % 10})
        for a, b in zip(bounds, bounds[1:])
    ], PoolMeta("raw", (size, size, channels)))
    return ids


def damage_image_page(shard) -> None:
    """Flip one byte in the middle of a raw pool's shard: random pixels fill the file, so it is image data and
    the page's checksum fails while the ids still read."""
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def png_bytes(rng, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no pixel data: a bomb PIL opens in microseconds."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def flat_grey16_png(side: int) -> bytes:
    """A side x side 16-bit grey PNG of one value, compressed a row at a time (no picture in memory here): at
    9400 x 9400, under Pillow's pixel limit, ~190 kB that decode to 169 MiB."""
    deflate, row = zlib.compressobj(9), b"\0" + b"\x12\x34" * side      # filter byte 0, then the samples
    pixels = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b""))


@pytest.fixture
def tiny_pool(tmp_path):
    """(pool uri, labeled manifest uri, ids, labeled ids): 256 random 32x32 images, 32 labeled."""
    return write_tiny_pool(tmp_path)


def write_tiny_pool(folder: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    """``tiny_pool`` in ``folder`` (module-scoped fixtures share one): folder/pool and folder/labeled.parquet."""
    ids = make_raw_pool(folder / "pool", 256)
    labeled = ids[np.random.default_rng(1).choice(len(ids), 32, replace=False)]
    write_manifest(str(folder / "labeled.parquet"), labeled)
    return str(folder / "pool"), str(folder / "labeled.parquet"), ids, labeled


class CalmRound(typing.NamedTuple):
    pool: str
    labeled: str
    ids: np.ndarray
    labeled_ids: np.ndarray
    out: Path
    result: RoundResult


CALM_EPOCHS = 4


def calm_config(pool, labeled, out, workers: int, **setup) -> RoundConfig:
    """The round of ``calm_round`` and of the disturbed runs that must select what it selects: ``round_config``'s
    VAAL round at CALM_EPOCHS epochs on ``workers`` Ray Train workers; ``setup`` as round_config's."""
    return round_config(pool, labeled, out, vaal={"epochs": CALM_EPOCHS}, workers=workers, **setup)


@pytest.fixture(scope="session")
def calm_pool(tmp_path_factory):
    """``tiny_pool`` written once a session: the pool of the calm rounds and of the runs compared with them."""
    return write_tiny_pool(tmp_path_factory.mktemp("calm-pool"))


@pytest.fixture(scope="session")
def calm_round(ray_local, calm_pool, tmp_path_factory):
    """``calm_round(workers)``: the undisturbed round that fault tests' disturbed runs must select again, run once
    a session for each worker count - ``calm_config`` over ``calm_pool`` (1 worker: test_driver_kill's killed
    driver, test_storage_faults' flaky storage; 2: test_cluster's killed DDP worker and lost nodes, test_round's
    end-to-end round)."""
    folder = tmp_path_factory.mktemp("calm")
    pool, labeled, ids, labeled_ids = calm_pool
    done = {}

    def calm(workers: int) -> CalmRound:
        if workers not in done:
            out = folder / f"workers-{workers}"
            result = run_round(calm_config(pool, labeled, out, workers))
            assert result.record["train"]["vaal"]["last_epoch"]["resumed_from_epoch"] == 0
            done[workers] = CalmRound(pool, labeled, ids, labeled_ids, out, result)
        return done[workers]
    return calm


def round_config(pool, labeled, out, budget: int = 20, strategy: str = "vaal", seed: int = 0,
                 vaal: dict | None = None, **setup) -> RoundConfig:
    """A small VAAL round (the cpu preset, one epoch, batches of 32, two scoring actors, budget 20); ``vaal``
    overrides fields of the preset's VAAL, ``setup`` fields of the Setup (``preset``, ``workers``...)."""
    setup.setdefault("preset", preset("cpu", vaal={"epochs": 1, "batch_size": 32, **(vaal or {})}))
    setup.setdefault("scoring", ScoringConfig(batch_size=32, num_actors=2))
    return RoundConfig(pool=pool, labeled=labeled, out=str(out), budget=budget, strategy=strategy, seed=seed,
                       setup=Setup(**setup))


def read_selection(out):
    return pq.read_table(f"{out}/selection.parquet").to_pydict()


# Streamed scores are computed in actors on other batch shapes and thread counts than in-memory ones, and a
# float32 network's output for one image moves with both (the reduction order of conv/matmul kernels) by
# about an ulp of the largest output: <= 1 measured here for logits, VAAL scores and embeddings, ~2 in one
# failing run elsewhere. F32_ULPS allows 16; a wrong id, a missing row or another image's score is off by
# orders of magnitude more.
F32_ULPS = 16


def f32_noise(outputs) -> float:
    """How far any one of these float32 network outputs may move between batch shapes and thread counts:
    F32_ULPS x eps32 x their largest magnitude (a kernel's rounding error scales with the magnitudes it
    sums, not with each result, so a small output gets the same absolute allowance as the largest)."""
    return F32_ULPS * float(np.finfo(np.float32).eps) * float(np.max(np.abs(outputs)))


def assert_same_top_k(got, ids, scores, tol, k: int) -> None:
    """``got`` (streamed) is the top-k of every row's in-memory (``ids``, ``scores``): the same ids in the
    same order, each score within ``tol`` (one number, or one per row of ``scores``) of the in-memory one.

    Ids are compared exactly, so float32 noise must not be able to reorder the in-memory top-(k+1): every
    two neighbours there are further apart than their tolerances added, or are reproduced exactly (tol 0,
    equal scores: ties go to the smaller id on both sides). A near-tie fails the precondition by name.
    """
    ids = np.asarray(ids, dtype=str)
    tol_of = dict(zip(ids, np.broadcast_to(np.asarray(tol, dtype=np.float64), ids.shape)))
    want_ids, want_scores = top_k(ids, scores, k + 1)
    want_tol = np.array([tol_of[i] for i in want_ids])
    room = want_tol[:-1] + want_tol[1:]
    near = (want_scores[:-1] - want_scores[1:] <= room) & (room > 0)
    assert not near.any(), (f"precondition: in-memory scores {want_scores[:-1][near]} and {want_scores[1:][near]} "
                            f"are within float32 noise {room[near]} of each other, so their order may flip")
    want_ids, want_scores, want_tol = want_ids[:k], want_scores[:k], want_tol[:k]
    np.testing.assert_array_equal(got.ids, want_ids)
    off = np.abs(np.asarray(got.scores, dtype=np.float64) - want_scores)
    assert np.all(off <= want_tol), (f"streamed scores {got.scores[off > want_tol]} of {want_ids[off > want_tol]} "
                                     f"are off the in-memory {want_scores[off > want_tol]} by more than "
                                     f"{want_tol[off > want_tol]}")


def vaal_checkpoint(directory, poison: bool = False, channels: int = 1) -> ray.train.Checkpoint:
    """An untrained VAAL checkpoint (random weights are enough to test the scoring path)."""
    torch.manual_seed(0)
    cfg = preset("cpu").vaal
    vae, disc = build_models(cfg, channels)
    if poison:
        with torch.no_grad():
            disc.net[0].weight.fill_(float("nan"))
    opt = torch.optim.Adam(vae.parameters())
    directory.mkdir()
    save_checkpoint(str(directory / CHECKPOINT_FILE), vae, disc, opt, opt, 1, cfg, channels)
    return ray.train.Checkpoint.from_directory(str(directory))


def vaal_trained_as(monkeypatch, checkpoint) -> None:
    """VAAL's training replaced by ``checkpoint``: what is tested is the selection path."""
    monkeypatch.setattr(VAAL, "train",
                        lambda self, inputs: Trained(inputs.scorer_spec(VAALScorer, checkpoint=checkpoint)))


def pool_batch(pool):
    """The first shard of a pool as a numpy batch, as Ray Data would hand it to a scorer."""
    table = pq.read_table(sorted(Path(pool).glob("*.parquet"))[0])
    return {"id": np.array(table.column("id").to_pylist()),
            "image": np.array(table.column("image").to_pylist(), dtype=object)}


# --- a real S3 endpoint on loopback (moto_server); nothing here reaches the cloud ---------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """host:port of a moto S3 server on 127.0.0.1, with dummy credentials and no metadata lookups."""
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true"),
                            ("AWS_CONFIG_FILE", os.devnull), ("AWS_SHARED_CREDENTIALS_FILE", os.devnull)):
            env.setenv(name, value)
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port, server)
            yield f"127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=10)


def _wait_for_port(port: int, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"moto_server did not start on port {port}")


def s3_uri(endpoint: str, key: str) -> str:
    # Credentials ride in the URI: Ray workers started before this module set the AWS_* variables lack them.
    return f"s3://testing:testing@bucket-1/{key}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


# --- a failing S3 proxy: an HTTP relay on 127.0.0.1 in front of moto that fails chosen requests ---------------

@dataclasses.dataclass
class Faults:
    """Which requests the proxy fails, and how. A request is a candidate when the regular expression ``only`` is
    found in "METHOD /path?query" (every request when empty) and ``after`` candidates came before it; it fails
    with probability ``fraction`` (drawn from ``seed``), at most ``count`` requests in all (None: no limit), and
    never more than ``streak`` times in a row for one request (method, path with query, byte range): a client
    that retries a request streak + 1 times always gets through, so a test's outcome follows from that bound, not
    from the draw.

    ``kinds`` are used in turn: "slowdown" (503 SlowDown), "throttle" (429 TooManyRequests), "error" (500
    InternalError), "drop" (a connection reset, no response), "cut" (the real response's headers and half its
    body, then a reset; a HEAD, which has no body, passes) and "stall" (no answer until ``release()``, then a
    reset)."""

    fraction: float = 0.0
    streak: int = 1
    kinds: tuple[str, ...] = ("slowdown", "throttle", "error", "drop", "cut")
    only: str = ""
    after: int = 0
    count: int | None = None
    seed: int = 0


class FailingS3Proxy(http.server.ThreadingHTTPServer):
    """Relays every request to moto, failing those ``faults`` picks. ``requests`` lists every request since the
    last ``set_faults`` as (method, path, byte range), ``injected`` the failed ones with their kind appended."""

    daemon_threads = True

    def __init__(self, upstream: str, faults: Faults = Faults()):
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.upstream, self._lock, self.released = upstream, threading.Lock(), threading.Event()
        self.set_faults(faults)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def set_faults(self, faults: Faults) -> None:
        self.release()
        with self._lock:
            self.faults, self._rng, self._streaks, self._turn = faults, random.Random(faults.seed), {}, 0
            self.requests, self.injected, self._candidates = [], [], 0
            self.released = threading.Event()

    def release(self) -> None:
        """Let the stalled requests go (each ends with a reset)."""
        self.released.set()

    def fault_for(self, method: str, path: str, byte_range: str | None) -> str | None:
        key = (method, path, byte_range)
        with self._lock:
            self.requests.append(key)
            f = self.faults
            candidate = re.search(f.only, f"{method} {path}") is not None
            self._candidates += candidate
            fail = (candidate and self._candidates > f.after and self._streaks.get(key, 0) < f.streak
                    and (f.count is None or len(self.injected) < f.count) and self._rng.random() < f.fraction)
            self._streaks[key] = self._streaks.get(key, 0) + 1 if fail else 0
            if not fail:
                return None
            kind, self._turn = f.kinds[self._turn % len(f.kinds)], self._turn + 1
            self.injected.append((method, path, byte_range, kind))
            return kind


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_S3_ERRORS = {"slowdown": (503, "SlowDown", "Please reduce your request rate."),
              "throttle": (429, "TooManyRequests", "Please reduce your request rate."),
              "error": (500, "InternalError", "We encountered an internal error. Please try again.")}


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"           # keep-alive, as S3 clients expect

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self._request_body()
        kind = self.server.fault_for(self.command, self.path, self.headers.get("Range"))
        if kind in _S3_ERRORS:
            return self._s3_error(*_S3_ERRORS[kind])
        if kind == "stall":
            self.server.released.wait(120)
        if kind in ("drop", "stall"):
            return self._reset()
        status, headers, payload = self._forward(body)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(name, value)       # a HEAD's Content-Length is the object's size
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if kind == "cut" and len(payload) > 1:
            self.wfile.write(payload[:len(payload) // 2])
            return self._reset()
        self.wfile.write(payload)

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass                            # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self, body: bytes):
        host, port = self.server.upstream.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if self.headers.get("Transfer-Encoding"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _s3_error(self, status: int, code: str, message: str) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
               f'<RequestId>proxy</RequestId></Error>').encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(xml)

    def _reset(self) -> None:
        """Close with an RST (SO_LINGER 0), as a peer or load balancer that drops the connection does."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


@pytest.fixture(scope="module")
def failing_s3(s3_endpoint):
    """A FailingS3Proxy in front of this module's moto; failing nothing until a test calls set_faults."""
    proxy = FailingS3Proxy(s3_endpoint)
    yield proxy
    proxy.shutdown()
    proxy.server_close()


# --- a multi-node cluster on loopback -----------------------------------------------------------------------
# Separate Ray node processes (a head and worker nodes, each its own raylet and object store) on 127.0.0.1, token
# auth on, this process the driver. Nodes share the machine's files, as nodes with a shared mount would.

@contextlib.contextmanager
def loopback_cluster(head_cpus: float, *worker_cpus: float, object_store_mib: int = 150):
    """A ray.cluster_utils.Cluster of a head with ``head_cpus`` and one worker node per ``worker_cpus``, this
    process connected as its driver. A Ray this process ran before (the ray_local fixture's) is shut down; the
    next test that asks for ray_local starts it again (``_ray_local_running``)."""
    import ray
    from ray._private import ray_constants
    from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                          ensure_token_if_auth_enabled)
    from ray.cluster_utils import Cluster

    ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        # Without this every node advertises the host's address, and nodes that reach the GCS on 127.0.0.1 and
        # each other on the host's address do not form one cluster (nodes read the variable, this process the
        # constant it was read into at import).
        patch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        token = Path.home() / ".ray" / "auth_token"
        token.parent.mkdir(mode=0o700, exist_ok=True)   # private from the start, as start_local_ray makes it
        enable_token_auth_by_default()                  # what ray.init does for a new local cluster
        ensure_token_if_auth_enabled(None, create_token_if_missing=True)
        token.chmod(0o600)                              # Ray writes it 0644
        store = object_store_mib * 1024 ** 2
        # A killed node is declared dead after 5 failed health checks: 1 s apart here, not Ray's 3 s. A check fails
        # at once on a dead node, but only after 10 s without an answer on a live one, so a busy node is not taken
        # for dead any sooner.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": False, "object_store_memory": store,
            "_system_config": {"health_check_period_ms": 1000}})
        try:
            for cpus in worker_cpus:
                cluster.add_node(num_cpus=cpus, object_store_memory=store)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def node_of(cluster, node_id: str):
    """The cluster's Node object of the Ray node id ``node_id`` (hex)."""
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_id)


# Core-set's greedy picks on float32 embeddings
def assert_greedy_picks_are_stable(unlabeled, labeled, picks, noise: float) -> None:
    """Float32 noise cannot change these k-center greedy picks. With every coordinate off by <= ``noise``,
    a point moves by <= noise sqrt(d), so any distance, and a point's distance to its nearest center, by
    <= 2 noise sqrt(d); a pick whose distance beats the runner-up's by more than twice that stays."""
    u, centers = unlabeled.astype(np.float64), labeled.astype(np.float64)
    margin = 4 * noise * np.sqrt(u.shape[1])
    nearest = np.sqrt(((u[:, None] - centers[None]) ** 2).sum(-1)).min(1)
    for step, pick in enumerate(picks):
        runner_up = np.delete(nearest, pick).max()
        assert nearest[pick] - runner_up > margin, f"precondition: greedy step {step} is a near-tie"
        nearest = np.minimum(nearest, np.sqrt(((u - u[pick]) ** 2).sum(1)))


# A task model trained in-process on two tones: dark images are class 0, light ones class 1, one mid-gray
TWO_TONE_META = PoolMeta("raw", (32, 32, 1))
TWO_TONE_TASK = preset("cpu", task={"crop_padding": 0, "lr": 0.05}).task


def two_tone_batch(n=64, seed=0):
    """(batch dict as Ray Data hands it, labels): dark images are class 0, light ones class 1, plus gray."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 0, 20, 235)
    pixels = np.clip(base + rng.integers(-20, 21, (n, 32, 32, 1)), 0, 255).astype(np.uint8)
    pixels = np.concatenate([pixels, np.full((1, 32, 32, 1), 128, np.uint8)])
    ids = np.array([f"img-{i:03d}" for i in range(n)] + ["zz-gray"])
    return {"id": ids, "image": np.array([p.tobytes() for p in pixels], dtype=object)}, labels


def trained_checkpoint(directory, seeds=(0,), rank_loss=None, dropout=None) -> ray.train.Checkpoint:
    """Task model(s) trained on the two tones (one file, or one per ensemble member)."""
    batch, labels = two_tone_batch()
    pixels = torch.from_numpy(np.stack([np.frombuffer(b, np.uint8).reshape(32, 32, 1) for b in batch["image"][:-1]])
                              ).permute(0, 3, 1, 2).contiguous()
    model_args = {"num_classes": 2, "in_channels": 1, "rank_loss": rank_loss, "dropout": dropout}
    directory.mkdir()
    for member, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = build_task_model(TWO_TONE_TASK, **model_args)
        opt, sched = build_optimizer(model, TWO_TONE_TASK)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(8):
            order = torch.randperm(len(labels), generator=gen)
            batches = [{"pixels": pixels[order[i:i + 16]], "label": torch.from_numpy(labels)[order[i:i + 16]]}
                       for i in range(0, len(labels), 16)]
            train_task_epoch(model, opt, batches, TWO_TONE_TASK, epoch, rank_loss, gen)
        save_task_checkpoint(str(directory / member_file(member if len(seeds) > 1 else None)), model, opt, sched,
                             8, TWO_TONE_TASK, model_args)
    return ray.train.Checkpoint.from_directory(str(directory))


# --embedding: a user's torchvision classifier (seeded random weights; nothing downloaded)
def saved_weights(path, arch: str = "resnet18", num_classes: int = 1000, wrap: bool = False) -> str:
    """A seeded random ``arch`` (with a head of ``num_classes``, as a fine-tuned model has) saved as a state
    dict, bare or as torchvision's reference scripts save checkpoints."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.get_model(arch, weights=None, num_classes=num_classes).state_dict()
    torch.save({"model": state, "epoch": 3} if wrap else state, path)
    return str(path)


def backbone_round(pool, labeled, out, strategy, weights, budget=12):
    embedding = Backbone("resnet18", weights, image_size=32)
    return round_config(pool, labeled, out, budget=budget, strategy=strategy,
                        preset=preset("cpu", vaal={"epochs": 1}, task={"epochs": 1, "min_steps": 0}),
                        acquisition=AcquisitionConfig(embedding=embedding))


# The labeling loop: a pool without labels, a finished round, Label Studio's answers
CLASSES = ["zero", "one", "two"]


TASK_IDS = itertools.count(100)


def unlabeled_pool(path, n: int = 40, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(ids, pixels (n, size, size, 1)) of a raw pool without a label column, in 3 shards."""
    pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    ids = np.array([f"im/{i:03d}" for i in range(n)])          # a "/" in ids: file names must quote it
    bounds = [0, n // 3, 2 * n // 3, n]
    write_pool(str(path), [pa.table({"id": ids[a:b], "image": pa.array([p.tobytes() for p in pixels[a:b]])})
                           for a, b in zip(bounds, bounds[1:])], PoolMeta("raw", (size, size, 1)))
    return ids, pixels


def finished_round(out, pool, labeled, selected, strategy: str = "entropy") -> str:
    """A round folder as run_round leaves it, for what export and import read: run.json's config and
    selection.parquet (ranks 1..k, scores descending)."""
    write_parquet(f"{out}/selection.parquet", pa.table({
        "id": pa.array(list(selected), pa.string()), "score": pa.array(np.linspace(1, 0, len(selected))),
        "rank": pa.array(np.arange(1, len(selected) + 1), pa.int64())}))
    write_json(f"{out}/run.json", {"config": {"pool": str(pool), "labeled": str(labeled), "strategy": strategy}})
    return str(out)


def label_studio_task(image_id: str, *annotations: dict) -> dict:
    """A task as Label Studio's JSON export holds it, its task id its own (import refuses a repeated one)."""
    return {"id": next(TASK_IDS), "data": {"image": "data:...", "id": image_id}, "annotations": list(annotations)}


def choice(label: str | None, annotator: int = 1, cancelled: bool = False, at: str = "2026-11-28T10:00:00.5Z") -> dict:
    result = [] if label is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                        "value": {"choices": [label]}}]
    return {"id": 7, "completed_by": annotator, "result": result, "was_cancelled": cancelled, "created_at": at,
            "updated_at": at}


# A report page's elements
class Page(html.parser.HTMLParser):
    """The elements of a page: (tag, attributes) in order, and the text of each figcaption."""

    def __init__(self, text: str):
        super().__init__()
        self.elements, self.captions, self._in_caption = [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag):
        self._in_caption = self._in_caption and tag != "figcaption"

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data

    def having(self, **attrs):
        return [(t, a) for t, a in self.elements if all(a.get(k) == v for k, v in attrs.items())]


# --embeddings files: a pool's vectors as a user hands them in
def write_embeddings(path, ids, x, kind: str = "fixed") -> str:
    """(id, embedding) Parquet: a fixed-size list of x's dtype, or (``kind="list"``) a variable list."""
    values = pa.array(np.ascontiguousarray(x).ravel())
    if kind == "fixed":
        embedding = pa.FixedSizeListArray.from_arrays(values, x.shape[1])
    else:
        embedding = pa.array([list(row) for row in x], pa.list_(pa.from_numpy_dtype(x.dtype)))
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.string()), "embedding": embedding}), path)
    return str(path)


def vectors_round(pool, labeled, out, path, strategy="coreset", budget=10, **acquisition):
    # workers=0: a strategy that trains (Cluster-Margin's task model) does so in the driver; where the vectors
    # come from is what is tested here, and the Ray Train workers' path is test_strategy_rounds'.
    return round_config(pool, labeled, out, budget=budget, strategy=strategy,
                        preset=preset("cpu", task={"epochs": 1, "min_steps": 0}), workers=0,
                        acquisition=AcquisitionConfig(embeddings=str(path), **acquisition))


def bad_file(path, case: str, ids) -> str:
    """An embeddings file for ``ids`` (the pool's) with one fault."""
    x = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    if case == "missing ids":
        return write_embeddings(path, ids[7:], x[7:])
    if case == "duplicate ids":
        return write_embeddings(path, np.concatenate([ids, ids[:3]]), np.concatenate([x, x[:3]]))
    if case == "mixed widths":
        rows = [list(r) for r in x]
        rows[5] = rows[5][:3]
        pq.write_table(pa.table({"id": ids, "embedding": pa.array(rows, pa.list_(pa.float32()))}), path)
    elif case == "mixed widths across files":
        path.mkdir()
        write_embeddings(path / "a.parquet", ids[:10], x[:10])
        write_embeddings(path / "b.parquet", ids[10:], np.zeros((len(ids) - 10, 5), np.float32))
    elif case == "two id types across files":
        path.mkdir()
        write_embeddings(path / "a.parquet", ids[:10], x[:10])
        pq.write_table(pa.table({"id": pa.array(ids[10:], pa.large_string()), "embedding":
                                 pa.FixedSizeListArray.from_arrays(pa.array(x[10:].ravel()), 4)}), path / "b.parquet")
    elif case in ("NaN", "inf"):
        x[4, 1] = np.nan if case == "NaN" else np.inf
        return write_embeddings(path, ids, x)
    elif case == "float64":
        return write_embeddings(path, ids, x.astype(np.float64))
    elif case == "integer ids":
        pq.write_table(pa.table({"id": np.arange(len(ids)), "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(x.ravel()), 4)}), path)
    elif case == "no embedding column":
        pq.write_table(pa.table({"id": ids, "vector": x[:, 0]}), path)
    elif case == "null embedding":
        rows = [list(r) for r in x]
        rows[2] = None
        pq.write_table(pa.table({"id": ids, "embedding": pa.array(rows, pa.list_(pa.float32()))}), path)
    elif case == "not parquet":
        path.write_text("id,embedding\nimg-00000,0.1\n")
    return str(path)
