"""One run per folder (vaal_dist/folder_lock.py): real processes race for one local or S3 folder, a SIGKILLed
holder's lock is taken over, an experiment's tables keep every concurrent writer's rows, and a round refuses
to start while another holds its --out."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import boto3
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector

from conftest import round_config, s3_uri
from vaal_dist import folder_lock
from vaal_dist.errors import InputError
from vaal_dist.folder_lock import PREFIX, FolderLock, LockLost
from vaal_dist.pool.storage import exists, join, resolve

# A contender: waits at the barrier until all N are ready, tries the lock once, prints WON or REFUSED <message>,
# and holds a won lock until its stdin is closed. OTHER_MACHINE makes its claim look written on another host,
# so only its heartbeat can tell that it died.
CONTENDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import vaal_dist.folder_lock as fl
    folder, barrier, n, other_machine, heartbeat_s, stale_s = sys.argv[1:]
    if other_machine == "1":
        fl.THIS_MACHINE = "0" * 12
    lock = fl.FolderLock(folder, "round", float(heartbeat_s), float(stale_s))
    Path(barrier, f"ready-{os.getpid()}").touch()
    while len(list(Path(barrier).glob("ready-*"))) < int(n):
        time.sleep(0.005)
    try:
        lock.acquire()
    except fl.InputError as e:
        print("REFUSED", e, flush=True)
        sys.exit(0)
    print("WON", flush=True)
    sys.stdin.read()
    lock.release()
""")


def start_contenders(folder: str, n: int, barrier, other_machine: bool = False, heartbeat_s: float = 10,
                     stale_s: float = 600) -> list[subprocess.Popen]:
    barrier.mkdir()
    return [subprocess.Popen([sys.executable, "-c", CONTENDER, folder, str(barrier), str(n), str(int(other_machine)),
                              str(heartbeat_s), str(stale_s)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]


def the_winner(contenders: list[subprocess.Popen]) -> subprocess.Popen:
    """The one contender that won; every other was refused naming it (host, pid, start time)."""
    outcomes = [c.stdout.readline().strip() for c in contenders]
    winners = [c for c, outcome in zip(contenders, outcomes) if outcome == "WON"]
    assert len(winners) == 1, outcomes
    for outcome in outcomes:
        if outcome != "WON":
            assert outcome.startswith("REFUSED ") and "is in use by another run" in outcome, outcome
            assert f"host {socket.gethostname()}, pid {winners[0].pid}, started 20" in outcome, outcome
    return winners[0]


def release_all(contenders: list[subprocess.Popen]) -> None:
    for c in contenders:
        c.stdin.close()
        assert c.wait(timeout=60) == 0


def claims(folder: str) -> list[str]:
    fs, path = resolve(folder)
    return sorted(f.base_name for f in fs.get_file_info(FileSelector(path, allow_not_found=True))
                  if f.base_name.startswith(PREFIX))


def kill(process: subprocess.Popen) -> float:
    """SIGKILL ``process``, reap it (a zombie's pid still answers), and return when that was."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return time.monotonic()


def race_and_release(folder: str, tmp_path, n: int = 3) -> None:
    contenders = start_contenders(folder, n, tmp_path / "barrier")
    the_winner(contenders)
    release_all(contenders)
    assert claims(folder) == []


def test_contenders_for_a_local_folder_exactly_one_wins_and_names_itself(tmp_path):
    race_and_release(str(tmp_path / "out"), tmp_path)


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    boto3.client("s3", endpoint_url=f"http://{s3_endpoint}").create_bucket(Bucket="bucket-1")
    return s3_endpoint


@pytest.mark.slow
def test_contenders_for_an_s3_folder_exactly_one_wins_and_names_itself(bucket, tmp_path):
    race_and_release(s3_uri(bucket, "race/out"), tmp_path)


def test_a_refusal_waits_for_those_still_choosing_and_names_the_one_that_holds(tmp_path, monkeypatch):
    """host-a holds ticket 1 while host-b is still choosing; host-b then draws ticket 1 too and, its token being
    smaller, holds the lock. A contender refused before host-b chose would have named host-a."""
    folder = tmp_path / "out"
    folder.mkdir()

    def write_claim(host: str, token: str, state: str, ticket: int | None) -> None:
        claim = {"token": token, "state": state, "ticket": ticket, "host": host, "pid": 1, "machine": None,
                 "started": "2026-11-28T00:00:00+00:00"}
        (folder / f"{PREFIX}round-{token}.json").write_text(json.dumps(claim))

    write_claim("host-a", "b" * 32, "waiting", 1)
    write_claim("host-b", "a" * 32, "choosing", None)
    real_sleep = time.sleep
    monkeypatch.setattr(folder_lock.time, "sleep", lambda s: (write_claim("host-b", "a" * 32, "held", 1),
                                                              real_sleep(s)))
    with pytest.raises(InputError, match="in use by another run: host host-b, pid 1, "):
        FolderLock(str(folder), "round").acquire()
    assert claims(str(folder)) == sorted(f"{PREFIX}round-{t * 32}.json" for t in "ab")


def test_a_killed_holders_lock_is_taken_over_at_once_on_its_machine_by_exactly_one(tmp_path):
    """Its pid is gone from this machine, so its claim is dead at once, though stale_s (600 s) is far off;
    the two contenders that find it dead run the same steps, and one takes the lock."""
    folder = str(tmp_path / "out")
    holder = start_contenders(folder, 1, tmp_path / "holder")
    the_winner(holder)
    kill(holder[0])
    started = time.monotonic()
    contenders = start_contenders(folder, 2, tmp_path / "barrier")
    the_winner(contenders)
    assert time.monotonic() - started < 60
    assert len(claims(folder)) == 1             # the winner's: the dead claim is gone
    release_all(contenders)
    assert claims(folder) == []


def takeover_after_heartbeats_stop(folder: str, tmp_path, heartbeat_s: float, stale_s: float):
    """A holder on 'another machine' stays held past stale_s while it beats; once SIGKILLed, its lock is taken
    over once its last beat is stale_s old and not sooner, within stale_s + a few polls of the kill.

    Not sooner, exactly: a taker reckons the storage's now as its own claim's stamp plus the time since it read
    that stamp back, which is never ahead of this machine's clock (which the local disk and moto stamp by), so
    its decision that the beat is older than stale_s comes after the wall clock says so. The beat's stamp is read
    after the kill, when no beat can follow it."""
    holder = start_contenders(folder, 1, tmp_path / "holder", other_machine=True, heartbeat_s=heartbeat_s,
                              stale_s=stale_s)
    the_winner(holder)
    time.sleep(stale_s + 1)
    with pytest.raises(InputError, match=f"pid {holder[0].pid}, .*refreshed [0-9] s ago"):
        FolderLock(folder, "round", heartbeat_s, stale_s).acquire()
    killed = kill(holder[0])
    fs, path = resolve(folder)
    [last_beat] = [f.mtime.timestamp() for f in fs.get_file_info(FileSelector(path))
                   if f.base_name.startswith(PREFIX)]
    while True:
        try:
            taker = FolderLock(folder, "round", heartbeat_s, stale_s)
            taker.acquire()
            break
        except InputError:
            time.sleep(0.1)
    assert time.time() - last_beat > stale_s
    assert time.monotonic() - killed < stale_s + 10
    assert claims(folder) == [taker.filename]
    taker.release()
    assert claims(folder) == []


@pytest.mark.slow
def test_a_killed_holder_elsewhere_is_taken_over_once_its_heartbeat_is_stale(tmp_path):
    takeover_after_heartbeats_stop(str(tmp_path / "out"), tmp_path, heartbeat_s=0.5, stale_s=4)


@pytest.mark.slow
def test_a_killed_holder_of_an_s3_folder_is_taken_over_once_its_heartbeat_is_stale(bucket, tmp_path):
    takeover_after_heartbeats_stop(s3_uri(bucket, "stale/out"), tmp_path, heartbeat_s=0.5, stale_s=4)


def test_a_holder_whose_claim_was_taken_is_told_at_release(tmp_path):
    lock = FolderLock(str(tmp_path / "out"), "round", heartbeat_s=0.1, stale_s=1)
    with pytest.raises(LockLost, match="taken over by another run"):
        with lock.held():
            fs, path = resolve(lock.uri)
            fs.delete_file(path)            # as a contender does that found it stale
            time.sleep(0.5)                 # five heartbeats: the first finds the claim gone
    assert lock.lost


# Two experiment invocations sharing a folder: each finishes two curves, and every read-modify-write of the
# tables is slowed to 1 s from read to write. Started together, their read-modify-writes would overlap, and
# the later write would drop the other's rows; under the tables lock they take turns.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow as pa
    import vaal_dist.experiment as ex
    folder, barrier, strategy = sys.argv[1:]
    real_write = ex.write_results
    ex.write_results = lambda out, curves: (time.sleep(1), real_write(out, curves))
    row = dict(round=0, labeled_fraction=0.1, labeled=10, accuracy=0.5, query_seconds_per_100=1.0,
               **dict.fromkeys(ex.GAME_METRICS, float("nan")))
    Path(barrier, strategy).touch()
    while len(list(Path(barrier).iterdir())) < 2:
        time.sleep(0.005)
    rows = []
    for seed in (0, 1):
        rows.append({"strategy": strategy, "seed": seed, **row})
        ex._record_curves(folder, pa.Table.from_pylist(rows))
""")


@pytest.mark.slow
def test_an_experiments_tables_keep_every_concurrent_writers_rows(tmp_path):
    folder, barrier = str(tmp_path / "experiment"), tmp_path / "barrier"
    barrier.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, folder, str(barrier), strategy])
               for strategy in ("random", "vaal")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    curves = pq.read_table(join(folder, "curves.parquet"))
    assert sorted(zip(curves["strategy"].to_pylist(), curves["seed"].to_pylist())) == [
        ("random", 0), ("random", 1), ("vaal", 0), ("vaal", 1)]
    assert claims(folder) == []


HOLDER = textwrap.dedent("""
    import sys
    from vaal_dist.folder_lock import writer_lock
    with writer_lock(sys.argv[1]):
        print("WON", flush=True)
        sys.stdin.read()
""")


@pytest.mark.slow
def test_a_round_is_refused_while_another_holds_its_out_and_runs_once_the_holder_is_killed(ray_local, tiny_pool,
                                                                                          tmp_path):
    from vaal_dist.round import run_round
    from vaal_dist.round_files import INPUTS, SELECTION

    pool, labeled, _, _ = tiny_pool
    out = tmp_path / "round"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "WON"
    cfg = round_config(pool, labeled, out, strategy="random")
    with pytest.raises(InputError, match=f"is in use by another run: host {socket.gethostname()}, "
                                         f"pid {holder.pid}, started 20"):
        run_round(cfg)
    assert not exists(str(out / INPUTS))
    kill(holder)
    run_round(cfg)
    assert exists(str(out / SELECTION)) and claims(str(out)) == []


TAKERS_CLAIM = f"{PREFIX}writer-{'f' * 32}.json"


def take_over(folder: str, ours_written_again: bool) -> None:
    """What a run that found this one's claim stale does: delete it and hold the lock with its own claim. With
    ``ours_written_again`` a heartbeat that had just seen our claim writes it back after the deletion."""
    [ours] = claims(folder)
    if not ours_written_again:
        os.remove(join(folder, ours))
    taker = {"token": "f" * 32, "state": "held", "ticket": 1, "host": "host-b", "pid": 1, "machine": None,
             "started": "2026-11-28T00:00:00+00:00"}
    with open(join(folder, TAKERS_CLAIM), "w") as f:
        json.dump(taker, f)


@pytest.mark.parametrize("ours_written_again", [False, True])
def test_a_round_whose_lock_was_taken_over_while_it_ran_commits_nothing(ray_local, tiny_pool, tmp_path, monkeypatch,
                                                                        ours_written_again):
    """The takeover happens during training, long before a heartbeat (10 s) would notice: the round checks its
    claim right before writing selection.parquet and stops with one line, writing neither it nor run.json."""
    from vaal_dist.round import run_round
    from vaal_dist.round_files import RECORD, SELECTION
    from vaal_dist.strategies.random import Random

    pool, labeled, _, _ = tiny_pool
    out = str(tmp_path / "round")
    real_train = Random.train
    monkeypatch.setattr(Random, "train", lambda self, inputs: (take_over(out, ours_written_again),
                                                               real_train(self, inputs))[1])
    with pytest.raises(LockLost, match=f"the lock on '{out}' was taken over by another run") as lost:
        run_round(round_config(pool, labeled, out, strategy="random"))
    assert "\n" not in str(lost.value)
    assert not exists(join(out, SELECTION)) and not exists(join(out, RECORD))
    assert claims(out) == [TAKERS_CLAIM]            # the taker's, untouched
