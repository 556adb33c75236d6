"""The files a round leaves in its ``--out`` folder, by name, and a finished round read back from them.

``inputs.json`` is written first (the fingerprint a rerun must match), ``run.json`` last: a folder holding
run.json holds a finished round. Export, import, the report and the experiment find a round's files here.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from vaal_dist.errors import InputError
from vaal_dist.pool.shards import read_parquet
from vaal_dist.pool.storage import exists, join, read_json, resolve, retrying
from vaal_dist.redaction import HIDDEN

INPUTS = "inputs.json"                    # the inputs fingerprint of the round started here
CHECKPOINTS = "train"                     # folder: the models' Ray Train runs and checkpoints
SELECTION = "selection.parquet"           # id, score, rank (and predicted, confidence)
SCORES_SAMPLE = "scores-sample.parquet"   # a sample of the pool's scores, for the report's histogram
REPORT = "report.html"
RECORD = "run.json"                       # config, versions, sizes, timings; written last
NEXT_MANIFEST = "labeled.parquet"         # an import's default: the next round's labeled manifest
REVEALED = "labeled-after.parquet"        # an experiment's labeled set after its oracle labeled the selection


@dataclass(frozen=True)
class FinishedRound:
    """What an export and an import need of a finished round."""

    pool: str
    labeled: str
    strategy: str
    selection: pa.Table        # id, score, rank (and predicted, confidence: the task model's guess); in rank order
    fingerprint: str = ""      # the round's inputs fingerprint


def read_round(out: str, pool: str | None = None, labeled: str | None = None, *,
               needs_labeled: bool = True) -> FinishedRound:
    """The round in ``out``; ``pool`` / ``labeled`` replace its run record's (which hides credentials). Without
    ``needs_labeled`` (an export reads no manifest) the labeled manifest's URI may stay hidden."""
    record_uri = join(out, RECORD)
    if not exists(record_uri):
        raise InputError(f"{out!r} holds no finished round (no {RECORD})")
    record = read_json(record_uri)
    config = record["config"]
    pool, labeled = pool or config["pool"], labeled or config["labeled"]
    given = {"--pool": pool, "--labeled": labeled} if needs_labeled else {"--pool": pool}
    for flag, uri in given.items():
        if HIDDEN in uri:
            raise InputError(f"the round's record hides the credentials of {uri!r}: give it again with {flag}")
    return FinishedRound(pool, labeled, config["strategy"], read_selection(out), record.get("inputs_fingerprint", ""))


def read_selection(out: str) -> pa.Table:
    """The round's selection.parquet, its pages' checksums verified, in rank order."""
    fs, path = resolve(join(out, SELECTION))
    return retrying(f"cannot read {out!r}'s selection", lambda: read_parquet(fs, path)).sort_by("rank")
