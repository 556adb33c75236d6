"""The Label Studio client against small local HTTP servers: the token only in its header, URL checks, retries of
what usually passes then one line, redirects not followed; push and pull against a fake of the API's few
endpoints (resumed pushes, an import committed whose answer was lost, pulls refused per id as file imports).
tests/test_label_studio.py runs the same against a real Label Studio."""
from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from conftest import CLASSES, choice, finished_round, label_studio_task, unlabeled_pool

from vaal_dist import api
from vaal_dist.cli import main
from vaal_dist.errors import InputError, VaalDistError
from vaal_dist.labeling.formats import labeling_config
from vaal_dist.labeling.label_studio import config_mismatch, connect, push
from vaal_dist.pool import storage
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.storage import STORAGE_ATTEMPTS

TOKEN = "secret-token-3f9a"


class Stub(BaseHTTPRequestHandler):
    """Answers each request with the server's next scripted (status, headers, body), recording the requests."""

    def log_message(self, *args):
        pass

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        status, headers, answer = self.server.script(self.command, self.path, body)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer


@pytest.fixture
def serve():
    """serve(script) -> the URL of a server answering script(method, path, body) -> (status, headers, bytes)."""
    servers = []

    def start(script):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
        server.script, server.requests = script, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", server.requests
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)


def answers(*scripted):
    """A script giving these (status, body) in turn, then the last one again."""
    left = list(scripted)
    return lambda method, path, body: (left[0][0], {}, left.pop(0)[1] if len(left) > 1 else left[0][1])


def test_the_token_goes_only_in_a_legacy_token_header(serve):
    url, requests = serve(answers((200, b'{"ok": 1}')))
    server = connect(url + "/")
    assert server.get("/api/projects", {"title": "a b"}) == {"ok": 1}
    (method, path, headers, _), = requests
    assert (method, path, headers["Authorization"]) == ("GET", "/api/projects?title=a+b", f"Token {TOKEN}")
    assert repr(server) == f"LabelStudio({url!r})"


def test_transient_answers_are_sent_again_and_after_the_last_attempt_are_one_error(serve):
    url, requests = serve(answers((503, b""), (429, b""), (200, b"[1]")))
    assert connect(url).get("/api/tasks") == [1]
    assert len(requests) == 3
    url, requests = serve(answers((502, b"")))
    with pytest.raises(VaalDistError) as failed:
        connect(url).get("/api/tasks")
    assert len(requests) == STORAGE_ATTEMPTS
    assert str(failed.value).startswith(f"Label Studio at {url} kept failing: GET /api/tasks: {STORAGE_ATTEMPTS} "
                                        f"attempts over ")
    assert str(failed.value).endswith("the last: HTTP 502 Bad Gateway")


@pytest.mark.parametrize("status, says", [(401, "HTTP 401 Unauthorized: check the legacy API token in "
                                                 "LABEL_STUDIO_API_KEY"),
                                          (404, "HTTP 404 Not Found: no such project, or no Label Studio API")])
def test_a_refusal_is_not_retried_and_names_the_url_and_status(serve, status, says):
    url, requests = serve(answers((status, b'{"detail": "no"}')))
    with pytest.raises(InputError, match=re.escape(f"Label Studio at {url} refused GET /api/projects/3: {says}")):
        connect(url).get("/api/projects/3")
    assert len(requests) == 1


def test_a_bad_request_says_what_label_studio_refused(serve):
    said = {"validation_errors": {"title": ["Ensure this field has at least 3 characters."]}, "detail": "x"}
    url, _ = serve(answers((400, json.dumps(said).encode())))
    with pytest.raises(InputError) as refused:
        connect(url).post("/api/projects", b"{}")
    assert str(refused.value) == (f"Label Studio at {url} refused POST /api/projects: HTTP 400 Bad Request: "
                                  f'{{"title": ["Ensure this field has at least 3 characters."]}}')


def test_a_redirect_is_not_followed_since_the_token_would_go_with_it(serve):
    elsewhere, seen_there = serve(answers((200, b"{}")))
    url, _ = serve(lambda method, path, body: (302, {"Location": f"{elsewhere}/api/projects"}, b""))
    with pytest.raises(InputError) as refused:
        connect(url).get("/api/projects")
    assert f"HTTP 302 Found: a redirect to '{elsewhere}/api/projects', not followed" in str(refused.value)
    assert seen_there == []


def test_a_closed_port_is_one_line_after_the_retries_and_never_the_token(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    round_1 = round_folder(tmp_path)
    assert main(["import-labels", "--label-studio", url, "--project", "1", "--round", round_1, "--classes",
                 *CLASSES]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and TOKEN not in err
    assert err.startswith(f"vaal-dist: error: Label Studio at {url} kept failing: GET /api/projects/1/export: "
                          f"{STORAGE_ATTEMPTS} attempts over ")
    assert "Connection refused" in err
    assert sorted(os.listdir(round_1)) == ["run.json", "selection.parquet"]


@pytest.mark.parametrize("url", ["ftp://ls.example.org", "http://", "ls.example.org:8080",
                                 "http://admin:hunter2@ls.example.org", "https://ls.example.org/?token=hunter2",
                                 "http://ls.example.org:port", "http://ls.example.org/\nX-Injected: 1",
                                 "https://ls.example.org/#frag"])
def test_a_url_that_is_not_a_plain_http_one_is_refused_showing_no_secret(url):
    with pytest.raises(InputError, match="a Label Studio URL") as refused:
        connect(url)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("token, says", [("", "set LABEL_STUDIO_API_KEY"),
                                         ("abc\r\nX-Injected: hunter2", "holds characters an API token has not")])
def test_a_missing_or_malformed_token_is_refused_without_showing_it(monkeypatch, token, says):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    with pytest.raises(InputError, match=says) as refused:
        connect("http://127.0.0.1:1")
    assert "hunter2" not in str(refused.value)


def test_a_labeling_config_fits_when_its_choices_name_the_classes_over_the_tasks_image():
    assert config_mismatch(labeling_config(CLASSES), list(reversed(CLASSES))) is None
    assert config_mismatch(labeling_config(CLASSES), ["zero", "one", "three"]) == \
        "its classes differ from this round's: missing ['three'], not among them ['two']"
    assert "no <Choices name=\"label\">" in config_mismatch(labeling_config(CLASSES).replace('"label"', '"cls"'),
                                                             CLASSES)
    assert "labels no <Image value=\"$image\">" in config_mismatch(
        labeling_config(CLASSES).replace('value="$image"', 'value="$url"'), CLASSES)
    assert config_mismatch("<View><Image", CLASSES).startswith("its labeling config is not XML")


class FakeLabelStudio:
    """The endpoints push and pull use, in memory; ``lost_answers`` import calls (by number) commit their tasks
    and then answer 500, as a server whose answer is lost after its commit."""

    def __init__(self, page_size: int = 2, lost_answers: tuple[int, ...] = ()):
        self.projects, self.tasks, self.imports = {}, {}, 0
        self.page_size, self.lost_answers = page_size, lost_answers

    def __call__(self, method: str, path: str, body: bytes):
        where, query = urlsplit(path).path, {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        if (method, where) == ("GET", "/api/projects"):
            titled = [p for p in self.projects.values() if query["title"].lower() in p["title"].lower()]
            return self.ok({"results": titled, "next": None})
        if (method, where) == ("POST", "/api/projects"):
            project = {**json.loads(body), "id": len(self.projects) + 1}
            self.projects[project["id"]] = project
            self.tasks[project["id"]] = []
            return self.ok(project, 201)
        number = int(where.split("/")[3]) if where.startswith("/api/projects/") else int(query["project"])
        if number not in self.projects:
            return 404, {}, b'{"detail": "Not found."}'
        if where == f"/api/projects/{number}":
            return self.ok(self.projects[number])
        if where == "/api/tasks":
            page = int(query["page"])
            tasks = self.tasks[number][(page - 1) * self.page_size:page * self.page_size]
            return self.ok({"tasks": tasks, "total": len(self.tasks[number])})
        if where.endswith("/import"):
            self.imports += 1
            self.tasks[number] += [{**t, "id": 1000 + len(self.tasks[number]) + i} for i, t in
                                   enumerate(json.loads(body))]
            return (500, {}, b"") if self.imports in self.lost_answers else self.ok({"task_count": 1}, 201)
        return self.ok(self.tasks[number])                  # /export

    @staticmethod
    def ok(doc, status: int = 200):
        return status, {}, json.dumps(doc).encode()


def round_folder(tmp_path, selected: int = 7) -> str:
    ids, _ = unlabeled_pool(tmp_path / "pool")
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    return finished_round(tmp_path / "round-1", tmp_path / "pool", tmp_path / "labeled.parquet",
                          ids[np.arange(5, 5 + selected)])


def data_ids(fake: FakeLabelStudio, project: int) -> list[str]:
    return sorted(t["data"]["id"] for t in fake.tasks[project])


def test_a_push_imports_in_batches_and_a_rerun_imports_only_what_is_missing(serve, tmp_path):
    round_1 = round_folder(tmp_path)
    fake = FakeLabelStudio()
    url, requests = serve(fake)
    pushed = api.export(round_1, to="label-studio", url=url, title="round 1", classes=CLASSES, max_tasks=3)
    assert (pushed.project, pushed.imported, pushed.present) == (1, 7, 0)
    selected = pq.read_table(f"{round_1}/selection.parquet").column("id").to_pylist()
    assert data_ids(fake, 1) == sorted(selected)
    assert [len(json.loads(body)) for method, path, _, body in requests if path.endswith("/import")] == [3, 3, 1]
    assert config_mismatch(fake.projects[1]["label_config"], CLASSES) is None
    assert fake.tasks[1][0]["predictions"][0]["score"] == 1.0        # export's own tasks, predictions included
    del fake.tasks[1][2:]                                            # as if stopped after 2 tasks
    again = api.export(round_1, to="label-studio", url=url, title="round 1", classes=CLASSES, max_tasks=3)
    assert (again.project, again.imported, again.present) == (1, 5, 2)
    assert data_ids(fake, 1) == sorted(selected)
    assert sorted(os.listdir(round_1)) == ["run.json", "selection.parquet"]


def test_an_import_committed_whose_answer_was_lost_is_not_sent_again(serve, tmp_path):
    round_1 = round_folder(tmp_path)
    fake = FakeLabelStudio(lost_answers=(2,))
    url, _ = serve(fake)
    pushed = push(round_1, url, title="r", classes=CLASSES, max_tasks=3, max_bytes=10**6)
    assert (pushed.imported, fake.imports) == (7, 3)
    assert len(data_ids(fake, 1)) == len(set(data_ids(fake, 1))) == 7


def test_a_push_into_a_project_whose_config_differs_is_one_line_and_imports_nothing(serve, tmp_path, capsys):
    round_1 = round_folder(tmp_path)
    fake = FakeLabelStudio()
    fake.projects[4], fake.tasks[4] = {"id": 4, "title": "x", "label_config": labeling_config(CLASSES[:2])}, []
    url, _ = serve(fake)
    assert main(["export", round_1, "--to", "label-studio", "--url", url, "--project", "4", "--classes",
                 *CLASSES]) == 2
    out, err = capsys.readouterr()
    assert err == (f"vaal-dist: error: Label Studio project 4 at {url} does not fit this round: its classes differ "
                   f"from this round's: missing ['two'], not among them []\n")
    assert fake.tasks[4] == [] and out == ""


@pytest.mark.parametrize("argv, says", [
    (["export", "R", "--to", "coco", "--url", "http://h"], "--url imports into Label Studio"),
    (["export", "R", "--to", "label-studio", "--url", "http://h", "--dest", "/tmp/x"], "--url imports into"),
    (["export", "R", "--to", "label-studio", "--dest", "d", "--project", "2"], "--project and --title go with --url"),
    (["export", "R", "--to", "label-studio"], "give --dest"),
    (["import-labels", "--round", "R"], "give the tool's export files, or --label-studio URL and --project ID"),
    (["import-labels", "e.json", "--round", "R", "--label-studio", "http://h", "--project", "1"], "no export files"),
    (["import-labels", "--round", "R", "--label-studio", "http://h"], "give --project ID"),
])
def test_live_options_that_do_not_go_together_are_one_line(capsys, argv, says):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and says in err


def test_a_pull_goes_through_the_file_imports_checks_and_writes_the_labels(serve, tmp_path):
    round_1 = round_folder(tmp_path, selected=3)
    selected = pq.read_table(f"{round_1}/selection.parquet").column("id").to_pylist()
    fake = FakeLabelStudio()
    fake.projects[1] = {"id": 1, "title": "r", "label_config": labeling_config(CLASSES)}
    fake.tasks[1] = [label_studio_task(selected[0], choice("one")), label_studio_task(selected[1], choice("zero"),
                                                                                      choice("two", annotator=2)),
                     label_studio_task(selected[2], choice(None, cancelled=True))]
    url, _ = serve(fake)
    with pytest.raises(InputError) as refused:
        api.import_labels(None, round_1, label_studio=url, project=1, classes=CLASSES)
    assert str(refused.value) == (
        f"Label Studio project 1 at {url}: import refused, nothing written: 2 ids have problems: "
        f"{selected[1]!r}: conflicting labels: 'zero' by 1, 'two' by 2; {selected[2]!r}: annotation 7 was skipped")
    assert sorted(os.listdir(round_1)) == ["run.json", "selection.parquet"]
    fake.tasks[1] = fake.tasks[1][:1]
    done = api.import_labels(None, round_1, label_studio=url, project=1, classes=CLASSES)
    assert (done.new, done.labeled) == (1, 6)
    assert pq.read_table(done.labels).to_pydict()["label"] == [1]
