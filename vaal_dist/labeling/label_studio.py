"""Label Studio, live: ``export --to label-studio --url`` pushes a round's tasks into a project through Label
Studio's HTTP API, ``import-labels --label-studio`` pulls the project's annotations back.

The client is the standard library's urllib (label-studio-sdk would add 39 packages beside ours: docs/labeling.md).
It authenticates with a legacy API token read from LABEL_STUDIO_API_KEY only, never follows a redirect (the token
would go with it), and retries what usually passes (a refused or reset connection, a timeout, HTTP 429 and 5xx)
as storage does (pool/storage.py's attempts and backoff). Any other answer is one error naming the URL and the status.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

from vaal_dist.errors import InputError, VaalDistError
from vaal_dist.labeling.export import WEEK_S, selection_tasks, task_files
from vaal_dist.labeling.formats import IMAGE_FIELD, LABEL_FIELD, LABEL_FORMATS, labeling_config
from vaal_dist.labeling.shape import MAX_EXPORT_BYTES, check_size, shown
from vaal_dist.pool.storage import STORAGE_ATTEMPTS, backoff_s

log = logging.getLogger(__name__)
TOKEN_VARIABLE = "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 300                # one request: an import of 150 MB of data: URLs, the project's export
PAGE_SIZE = 100                # tasks listed at once (Label Studio's default page)
PROJECTS_PAGE = 100            # Label Studio's largest page of projects
SHOWN_ANSWER_BYTES = 65_536    # of a refusal's body, read for its validation errors


class _Transient(Exception):
    """An answer that usually passes if the request is sent again."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None            # urllib then raises the 3xx as an HTTPError


class LabelStudio:
    """One Label Studio server's API, as the user whose legacy token is given."""

    def __init__(self, url: str, token: str):
        self.url = checked_url(url)
        self._token = token
        self._opener = urllib.request.build_opener(_NoRedirects)

    def __repr__(self) -> str:
        return f"LabelStudio({self.url!r})"

    def get(self, path: str, query: dict | None = None) -> object:
        return self._json(path, self.request("GET", path, query=query))

    def post(self, path: str, body: bytes, resend: Callable[[], bytes | None] | None = None) -> object:
        """POST ``body``; ``resend`` (before each retry) gives the body to send again, None when nothing is left."""
        return self._json(path, self.request("POST", path, body=body, resend=resend))

    def request(self, method: str, path: str, *, query: dict | None = None, body: bytes | None = None,
                resend: Callable[[], bytes | None] | None = None) -> bytes:
        """The answer's bytes, sent again after a transient failure up to STORAGE_ATTEMPTS times in all."""
        started, failures = time.monotonic(), 0
        while True:
            try:
                return self._once(method, path, query, body)
            except _Transient as e:
                failures += 1
                if failures >= STORAGE_ATTEMPTS:
                    raise VaalDistError(f"Label Studio at {self.url} kept failing: {method} {path}: {failures} "
                                        f"attempts over {time.monotonic() - started:.0f} s; the last: {e}") from None
                wait = backoff_s(failures)
                log.warning("Label Studio at %s: %s %s (attempt %d of %d): %s; trying again in %.1f s", self.url,
                            method, path, failures, STORAGE_ATTEMPTS, e, wait)
                time.sleep(wait)
            if resend is not None:
                body = resend()
                if body is None:
                    return b"null"

    def _once(self, method: str, path: str, query: dict | None, body: bytes | None) -> bytes:
        request = urllib.request.Request(
            f"{self.url}{path}{'?' + urlencode(query) if query else ''}", data=body, method=method,
            headers={"Authorization": f"Token {self._token}", "Content-Type": "application/json",
                     "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=TIMEOUT_S) as answer:
                data = answer.read(MAX_EXPORT_BYTES + 1)
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 429 or e.code >= 500:
                    raise _Transient(f"HTTP {e.code} {e.reason}") from None
                raise InputError(f"Label Studio at {self.url} refused {method} {path}: HTTP {e.code} {e.reason}"
                                 f"{_hint(e)}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (ConnectionError, TimeoutError)):
                raise _Transient(str(e.reason)) from None
            raise InputError(f"cannot reach Label Studio at {self.url}: {e.reason}") from None
        except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        check_size(f"{self.url}{path}", len(data))
        return data

    def _json(self, path: str, data: bytes) -> object:
        try:
            return json.loads(data)
        except ValueError:
            raise InputError(f"Label Studio at {self.url} answered {path} with no JSON: is it Label Studio's "
                             f"URL?") from None


def _hint(e: urllib.error.HTTPError) -> str:
    if e.code == 400:
        return _validation_errors(e)
    if e.code in (401, 403):
        return f": check the legacy API token in {TOKEN_VARIABLE}"
    if e.code == 404:
        return ": no such project, or no Label Studio API at this URL"
    if 300 <= e.code < 400:
        return (f": a redirect to {shown(repr(e.headers.get('Location', '')))}, not followed (the token would "
                f"go with it): give the URL it names")
    return ""


def _validation_errors(e: urllib.error.HTTPError) -> str:
    """What Label Studio says a 400 refused (``{"title": ["Ensure this field has at least 3 characters."]}``)."""
    try:
        said = json.loads(e.read(SHOWN_ANSWER_BYTES)).get("validation_errors")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {shown(json.dumps(said, ensure_ascii=True))}" if said else ""


def checked_url(url: str) -> str:
    """``url`` without its trailing /, when it is an http(s) URL of a host with no user, password, query or
    fragment (the token comes from the environment only)."""
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InputError(f"a Label Studio URL is one line without spaces, got {shown(repr(url))}")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise InputError(f"a Label Studio URL needs a port number after ':', got {shown(repr(url))}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"a Label Studio URL is http:// or https:// and a host, got {shown(repr(url))}")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise InputError(f"a Label Studio URL carries no user, password, query or fragment (the API token comes "
                         f"from {TOKEN_VARIABLE}), got {shown(repr(url))}")
    return url.rstrip("/")


def connect(url: str) -> LabelStudio:
    """The server at ``url`` with the token in LABEL_STUDIO_API_KEY."""
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        raise InputError(f"set {TOKEN_VARIABLE} to the Label Studio user's legacy API token (Account & Settings)")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        # http.client would quote the token in its error
        raise InputError(f"{TOKEN_VARIABLE} holds characters an API token has not (it is not shown)")
    return LabelStudio(url, token)


@dataclass(frozen=True)
class Pushed:
    url: str
    project: int
    imported: int              # tasks this push imported
    present: int               # tasks the project held before (those of the round were not imported again)


def push(round_out: str, url: str, *, project: int | None = None, title: str | None = None, dest: str = "",
         classes: list[str] | None = None, pool: str | None = None, max_tasks: int, max_bytes: int,
         expires_s: int = WEEK_S, links: str = "url", source: str | None = None) -> Pushed:
    """The round's selection imported as tasks of Label Studio project ``project`` (or the one titled ``title``,
    created when there is none), ``max_tasks`` and ``max_bytes`` per request; images as ``export_selection``
    links them for ``dest``. Tasks whose data id the project holds already are not imported again."""
    server = connect(url)
    names, tasks_without = selection_tasks(round_out, dest, [], classes=classes, pool=pool, expires_s=expires_s,
                                           links=links, source=source)
    project = _project(server, project, title or f"vaal_dist {round_out.rstrip('/').rpartition('/')[2]}", names)
    present = data_ids(server, project)
    imported = 0
    for body in task_files(LABEL_FORMATS["label-studio"], names, tasks_without(frozenset(present)), max_tasks, max_bytes):
        batch = json.loads(body)
        server.post(f"/api/projects/{project}/import", body,
                    resend=lambda batch=batch: _not_in(batch, data_ids(server, project)))
        imported += len(batch)
        log.info("Label Studio project %d: %d tasks imported", project, imported)
    return Pushed(server.url, project, imported, len(present))


def _not_in(batch: list[dict], present: set[str]) -> bytes | None:
    """The batch's tasks whose data id is not ``present`` (an import that failed may have been committed)."""
    left = [task for task in batch if task["data"]["id"] not in present]
    return json.dumps(left).encode() if left else None


def _project(server: LabelStudio, project: int | None, title: str, names: list[str]) -> int:
    """The project's id: ``project``, else the one titled ``title``, else a new one; its labeling config checked."""
    if project is None:
        titled = _titled(server, title)
        if len(titled) > 1:
            raise InputError(f"Label Studio at {server.url} has {len(titled)} projects titled {shown(repr(title))} "
                             f"(ids {[p['id'] for p in titled]}): give --project ID")
        if not titled:
            created = server.post("/api/projects", json.dumps({"title": title,
                                                                "label_config": labeling_config(names)}).encode())
            with _shaped(server, "/api/projects"):
                return created["id"]
        project = titled[0]["id"]
    config = server.get(f"/api/projects/{project}")
    with _shaped(server, f"/api/projects/{project}"):
        mismatch = config_mismatch(config["label_config"], names)
    if mismatch:
        raise InputError(f"Label Studio project {project} at {server.url} does not fit this round: {mismatch}")
    return project


def _titled(server: LabelStudio, title: str) -> list[dict]:
    found, page = [], 1
    while True:
        answer = server.get("/api/projects", {"title": title, "page": page, "page_size": PROJECTS_PAGE})
        with _shaped(server, "/api/projects"):
            found += [p for p in answer["results"] if p["title"] == title]
            if not answer.get("next"):
                return found
        page += 1


@contextlib.contextmanager
def _shaped(server: LabelStudio, path: str) -> Iterator[None]:
    """An answer of another shape than Label Studio's (another server at the URL) as one error."""
    try:
        yield
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"Label Studio at {server.url} answered {path} unlike Label Studio's API: is it Label "
                         f"Studio's URL?") from None


def config_mismatch(label_config: str, names: list[str]) -> str | None:
    """What in a project's labeling config differs from export's (``labeling_config``): its Choices named
    LABEL_FIELD over the class ``names``, labeling an Image that reads the task's IMAGE_FIELD. None when it fits."""
    try:
        view = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as e:
        return f"its labeling config is not XML ({e})"
    images = {tag.get("name") for tag in view.iter("Image") if tag.get("value") == f"${IMAGE_FIELD}"}
    choices = [tag for tag in view.iter("Choices") if tag.get("name") == LABEL_FIELD]
    if not choices:
        return f'its labeling config has no <Choices name="{LABEL_FIELD}">: import-labels reads that one'
    if choices[0].get("toName") not in images:
        return (f'its <Choices name="{LABEL_FIELD}"> labels no <Image value="${IMAGE_FIELD}">, where the tasks '
                f'put the image')
    given = [choice.get("value") for choice in choices[0].iter("Choice")]
    missing, extra = [n for n in names if n not in given], [g for g in given if g not in names]
    if missing or extra:
        return shown(f"its classes differ from this round's: missing {missing}, not among them {extra}")
    return None


def data_ids(server: LabelStudio, project: int) -> set[str]:
    """The data ids of the project's tasks (export's ``data.id``: the pool ids), listed a page at a time."""
    ids, seen, page = set(), 0, 1
    while True:
        answer = server.get("/api/tasks", {"project": project, "page": page, "page_size": PAGE_SIZE,
                                           "resolve_uri": "false"})
        with _shaped(server, "/api/tasks"):
            tasks = answer["tasks"]
            ids |= {task["data"]["id"] for task in tasks if isinstance(task["data"].get("id"), str)}
            seen += len(tasks)
            if not tasks or seen >= answer["total"]:
                return ids
        page += 1


def project_export(url: str, project: int) -> bytes:
    """The project's JSON export (every task with its annotations, as Export -> JSON gives it), in memory."""
    return connect(url).request("GET", f"/api/projects/{project}/export",
                                query={"exportType": "JSON", "download_all_tasks": "true"})
