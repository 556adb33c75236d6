"""One writer at a time per folder, on any storage pool/storage.py opens: a lock made of claim files in the folder.

pyarrow's S3 filesystem cannot send a conditional PUT (it drops an ``If-None-Match`` given as metadata), and
object stores have no rename that refuses to replace, so the lock is Lamport's bakery algorithm over files:
each contender writes its own claim, ``.lock-NAME-TOKEN.json``, and reads the others'. Of the storage it needs
only that a file is written whole and that every later listing and read sees it: true of a local disk, of S3
(since December 2020) and of GCS, and the same code runs on all three.

1. A contender writes its claim ``choosing``, reads every live claim, and writes ticket 1 + the largest it read.
2. It waits while any other claim is still choosing, then compares (ticket, token) with every ticket: the
   smallest holds the lock. Any other is refused naming that holder, or, told to wait, waits for its turn.
3. The holder rewrites its claim every ``heartbeat_s`` seconds from a thread, and deletes it when done.

A claim is dead, and ignored and deleted by whoever reads it, when the storage's clock says it was last
written more than ``stale_s`` ago, or at once when it was written on this machine by a process that is gone.
Contenders for a dead lock run the same steps, so exactly one of them takes it over.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from vaal_dist.errors import InputError, VaalDistError
from vaal_dist.pool.storage import exists, join, missing_folders, read_json, remove_empty_folders, resolve, retrying, \
    write_json
from vaal_dist.processes import THIS_MACHINE, process_start
from vaal_dist.redaction import redact

log = logging.getLogger(__name__)

PREFIX = ".lock-"
WRITER = "writer"                               # the lock of a folder's writers (``writer_lock``)
HEARTBEAT_S = "VAAL_DIST_LOCK_HEARTBEAT_S"      # env: seconds between the holder's refreshes (default 10)
STALE_S = "VAAL_DIST_LOCK_STALE_S"              # env: seconds without a refresh before a claim is dead (120)
TABLES_WAIT_S = 600.0                           # an experiment waits this long for its folder's tables


class LockLost(VaalDistError, RuntimeError):
    """Another run took the lock over while this one held it: this one was not heard from for stale_s."""


def _seconds(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        raise InputError(f"${env} must be a number of seconds, got {os.environ[env]!r}") from None


def _ended_here(claim: dict) -> bool:
    """The claim was written on this machine by a process that has ended (or whose pid is now another's)."""
    if THIS_MACHINE is None or claim.get("machine") != THIS_MACHINE:
        return False
    return process_start(claim["pid"]) != claim.get("process_start")


def _written(info: pafs.FileInfo, claim: dict) -> float:
    """When the claim was last written: by the storage's clock, or by its writer's where the storage keeps no
    modification times (some fsspec filesystems)."""
    return info.mtime.timestamp() if info.mtime is not None else claim.get("written", 0.0)


class FolderLock:
    """The lock ``name`` on ``folder`` (a local path or URI). ``acquire``, then ``release``; or ``held()``."""

    def __init__(self, folder: str, name: str, heartbeat_s: float | None = None, stale_s: float | None = None):
        self.folder, self.name = folder, name
        self.heartbeat_s = heartbeat_s or _seconds(HEARTBEAT_S, 10)
        self.stale_s = stale_s or _seconds(STALE_S, 120)
        if self.stale_s < 3 * self.heartbeat_s:
            raise InputError(f"a lock's staleness ({self.stale_s} s) must be at least 3 heartbeats "
                             f"({self.heartbeat_s} s each), or a live holder can look dead")
        self.token = uuid.uuid4().hex
        self.filename = f"{PREFIX}{name}-{self.token}.json"
        self.uri = join(folder, self.filename)
        self.claim = {"token": self.token, "state": "choosing", "ticket": None, "beat": 0,
                      "host": socket.gethostname(), "pid": os.getpid(), "machine": THIS_MACHINE,
                      "process_start": process_start(os.getpid()),
                      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.lost = False
        self._made_folders: list[str] = []
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._clock = (0.0, 0.0)        # (the storage's mtime of our last write, time.monotonic() then)

    def acquire(self, wait_s: float = 0.0) -> None:
        """Hold the lock, or raise InputError naming its holder: at once, or after waiting ``wait_s``."""
        self._made_folders = missing_folders(self.folder)
        try:
            self._write(state="choosing")
            tickets = [c["ticket"] or 0 for c in self._live_others()]
            self._write(state="waiting", ticket=1 + max(tickets, default=0))
            self._heartbeat = threading.Thread(target=self._beat, name=f"lock {self.name}", daemon=True)
            self._heartbeat.start()
            self._wait_for_turn(wait_s)
            self._write(state="held")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        fs, path = resolve(self.uri)
        with contextlib.suppress(FileNotFoundError):
            retrying(f"cannot delete {self.uri!r}", lambda: fs.delete_file(path))
        remove_empty_folders(self.folder, self._made_folders)    # a run that wrote nothing leaves no folder

    @contextlib.contextmanager
    def held(self, wait_s: float = 0.0):
        self.acquire(wait_s)
        try:
            yield self
        finally:
            self.release()
        if self.lost:
            raise self._lost_error()

    def check_held(self) -> None:
        """Raise LockLost unless this claim still holds the lock: called right before a commit, since the
        heartbeat notices a takeover up to ``heartbeat_s`` late. A taker deletes this claim, but a heartbeat
        that had just seen it may write it again; the taker's claim, held, still tells."""
        if not self.lost and (not exists(self.uri) or any(c["state"] == "held" for c in self._live_others())):
            self.lost = True
        if self.lost:
            raise self._lost_error()

    def _lost_error(self) -> LockLost:
        return LockLost(f"the lock on {self.folder!r} was taken over by another run while this one held it "
                        f"(its claim was not refreshed for {self.stale_s:.0f} s: was this process paused?); "
                        f"what both wrote there may be mixed: rerun into a new folder")

    def _wait_for_turn(self, wait_s: float) -> None:
        deadline, pause = time.monotonic() + wait_s, 0.05
        mine = (self.claim["ticket"], self.token)
        while True:
            others = self._live_others()
            ahead = [c for c in others if c["ticket"] is not None and (c["ticket"], c["token"]) < mine]
            settled = all(c["state"] != "choosing" for c in others)
            if not ahead and settled:
                return
            # Refused only once no one is choosing: one still choosing may draw a ticket ahead of those seen,
            # and then it, not they, holds the lock the refusal names.
            if ahead and settled and time.monotonic() >= deadline:
                raise InputError(self._busy(ahead, wait_s))
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def _busy(self, ahead: list[dict], waited: float) -> str:
        holder = next((c for c in ahead if c["state"] == "held"), min(ahead, key=lambda c: (c["ticket"], c["token"])))
        waiting = f"after waiting {waited:.0f} s, " if waited else ""
        return (f"{waiting}{self.folder!r} is in use by another run: host {holder['host']}, pid {holder['pid']}, "
                f"started {holder['started']} (its lock was refreshed {holder['age']:.0f} s ago). Wait for it to "
                f"end, or stop it: the lock of a run that died is taken over {self.stale_s:.0f} s after its last "
                f"refresh, or at once from the machine it ran on")

    def _live_others(self) -> list[dict]:
        """Every other claim on this lock that is alive, each with its ``age`` by the storage's clock; dead
        ones are deleted."""
        fs, folder = resolve(self.folder)
        listing = retrying(f"cannot list {self.folder!r}",
                           lambda: fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)))
        files = [f for f in listing
                 if f.base_name.startswith(f"{PREFIX}{self.name}-") and f.base_name.endswith(".json")
                 and f.base_name != self.filename]
        live = []
        for info in files:
            claim = self._read(info)
            if claim is None:
                continue
            if claim["age"] > self.stale_s or _ended_here(claim):
                log.warning("taking over %s's lock of %s (host %s, pid %s, last refreshed %.0f s ago)",
                            self.name, redact(self.folder), claim["host"], claim["pid"], claim["age"])
                with contextlib.suppress(FileNotFoundError):
                    retrying(f"cannot delete {info.path!r}", lambda: fs.delete_file(info.path))
                continue
            live.append(claim)
        return live

    def _read(self, info: pafs.FileInfo) -> dict | None:
        """The claim in ``info``'s file with its age, or None if it is gone. A claim that cannot be parsed
        (another writer's file) counts as choosing until it is stale."""
        try:
            claim = read_json(join(self.folder, info.base_name))
        except FileNotFoundError:
            return None
        except ValueError:
            claim = {}
        if not isinstance(claim, dict) or not {"token", "state", "ticket", "host", "pid"} <= claim.keys():
            claim = {"token": info.base_name, "state": "choosing", "ticket": None, "host": "?", "pid": "?"}
        return {**claim, "age": self._storage_now() - _written(info, claim)}

    def _storage_now(self) -> float:
        """Now by the storage's clock (which stamps every claim), not this machine's: no clock skew."""
        mtime, then = self._clock
        return mtime + time.monotonic() - then

    def _write(self, **changes) -> None:
        with self._writing:
            self.claim.update(changes, written=time.time())
            write_json(self.uri, self.claim)
            fs, path = resolve(self.uri)
            info = retrying(f"cannot read {self.uri!r}", lambda: fs.get_file_info(path))
            self._clock = (_written(info, self.claim), time.monotonic())

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not exists(self.uri):
                    self.lost = True
                    log.error("the lock on %s was taken over by another run", redact(self.folder))
                    return
                self._write(beat=self.claim["beat"] + 1)
            except Exception as e:          # a storage error of any kind: the next beat may get through
                log.warning("could not refresh the lock on %s (%s); retrying in %.0f s",
                            redact(self.folder), e, self.heartbeat_s)


@contextlib.contextmanager
def writer_lock(folder: str):
    """One writer at a time in ``folder`` (a round's --out, prepare's pool, an export's --dest, an import's
    manifest folder): a second is refused, naming the first. Yields the lock, to ``check_held`` before a commit."""
    with FolderLock(folder, WRITER).held() as lock:
        yield lock


@contextlib.contextmanager
def tables_lock(folder: str, wait_s: float = TABLES_WAIT_S):
    """One read-modify-write of an experiment folder's tables at a time; the others wait their turn."""
    with FolderLock(folder, "tables").held(wait_s):
        yield
