"""Labels that people gave: ``labels.parquet`` (id, label, annotator, time) beside a labeled manifest, and the
class names that turn a labeling tool's answers into class indices.

A pool without a ``label`` column gets its labels this way: ``vaal-dist import-labels`` writes labels.parquet
beside the next round's manifest, and the task-aware strategies read it (``round_inputs.RoundInputs``).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaal_dist.errors import InputError
from vaal_dist.pool.io import IMPORTED_CLASSES, beside, exists, join, pool_files, read_json, resolve, retrying, \
    write_parquet

LABELS = "labels.parquet"
CLASSES = "classes.json"       # a prepared pool's class folder -> label (pool/prepare.py)

LABELS_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int64()), ("annotator", pa.string()),
                           ("time", pa.timestamp("us", tz="UTC"))])


def class_names(pool: str, given: list[str] | None) -> list[str]:
    """The class names, in label order: ``given``, else the pool's classes.json (written by prepare)."""
    if given:
        if len(set(given)) != len(given):
            raise InputError(f"class names must differ, got {given}")
        return list(given)
    uri = join(pool, CLASSES)
    if not exists(uri):
        raise InputError(f"pool {pool!r} has no {CLASSES}: name the classes (--classes NAME ...), in label "
                         f"order")
    by_label = {label: name for name, label in read_json(uri).items()}
    return [by_label[label] for label in sorted(by_label)]


def pool_has_label_column(pool: str) -> bool:
    fs, files = pool_files(pool)
    return "label" in retrying(f"cannot read pool {pool!r}",
                               lambda: pq.read_schema(files[0], filesystem=fs)).names


def read_labels(uri: str) -> tuple[pa.Table, list[str]]:
    """(labels.parquet's rows, its class names)."""
    fs, path = resolve(uri)
    table = retrying(f"cannot read {uri!r}", lambda: pq.read_table(path, filesystem=fs,
                                                                    page_checksum_verification=True))
    classes = json.loads((table.schema.metadata or {}).get(IMPORTED_CLASSES, b"[]"))
    return table.cast(LABELS_SCHEMA), classes


def labels_beside(manifest: str) -> pa.Table | None:
    """The (id, label) rows of labels.parquet beside ``manifest``, its class names in the schema's metadata, or
    None when it has none."""
    uri = beside(manifest, LABELS)
    if not exists(uri):
        return None
    table, classes = read_labels(uri)
    return table.select(["id", "label"]).replace_schema_metadata({IMPORTED_CLASSES: json.dumps(classes).encode()})


def write_labels(uri: str, table: pa.Table, classes: list[str]) -> None:
    """labels.parquet: ``table`` (LABELS_SCHEMA's columns) sorted by id, the class names in its metadata."""
    table = table.cast(LABELS_SCHEMA).sort_by("id")
    write_parquet(uri, table.replace_schema_metadata({IMPORTED_CLASSES: json.dumps(classes).encode()}))


def add_labels(batch: pa.Table, labels: pa.Table) -> pa.Table:
    """Ray Data batch fn: ``batch`` with a ``label`` column looked up by id in ``labels`` (null if absent)."""
    found = pc.index_in(batch.column("id"), value_set=labels.column("id"))
    return batch.append_column("label", pc.take(labels.column("label"), found))
