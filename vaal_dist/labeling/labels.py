"""Labels that people gave: ``labels.parquet`` (id, label, annotator, time) beside a labeled manifest, and the
class names that turn a labeling tool's answers into class indices.

A pool without a ``label`` column gets its labels this way: ``vaal-dist import-labels`` writes labels.parquet
beside the next round's manifest, and the task-aware strategies read it (``round_inputs.RoundInputs``).
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from vaal_dist.errors import InputError
from vaal_dist.pool.io import pool_schema, read_columns
from vaal_dist.pool.shards import read_parquet, write_parquet
from vaal_dist.pool.storage import beside, exists, join, read_json, resolve, retrying

LABELS = "labels.parquet"
CLASSES = "classes.json"       # a prepared pool's class folder -> label (pool/prepare.py)
IMPORTED_CLASSES = b"vaal_dist.classes"     # labels.parquet's metadata: its class names, in label order

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
    return "label" in pool_schema(pool).names


def check_labels(pool: str, ids: pa.Array, imported: pa.Table | None = None) -> int:
    """The number of classes (1 + the pool's largest label), once every one of ``ids`` has a label.

    The labels are the pool's ``label`` column: the oracle's answers for labeled images (or, for
    prepared folders, the class sub-folder). Task models need one for every labeled image. A pool without
    that column takes ``imported`` (id, label): labels.parquet beside the labeled manifest.
    """
    schema = pool_schema(pool)
    if "label" not in schema.names:
        if imported is None:
            raise InputError(f"pool {pool!r} has no 'label' column and there is no labels.parquet beside the "
                             f"labeled manifest; this strategy trains a classifier on the labeled images and "
                             f"needs their labels")
        return _check_imported_labels(imported, ids)
    if not pa.types.is_integer(schema.field("label").type):
        raise InputError(f"pool {pool!r}: column 'label' must be integers, got {schema.field('label').type}")
    ranges, missing = [], []
    for rows in read_columns(pool, ["id", "label"]):
        labels = rows.column("label")
        ranges.append(pc.min_max(labels).as_py())
        missing.append(rows.column("id").filter(pc.and_(pc.is_in(rows.column("id"), value_set=ids),
                                                        pc.is_null(labels))))
    missing = pa.chunked_array(missing, schema.field("id").type)
    if len(missing):
        raise InputError(f"pool {pool!r}: {len(missing)} labeled images have no label, e.g. "
                         f"{missing[:5].to_pylist()}")
    low = min((r["min"] for r in ranges if r["min"] is not None), default=None)
    if low is not None and low < 0:
        raise InputError(f"pool {pool!r}: labels must be class indices >= 0, found {low}")
    return max((r["max"] for r in ranges if r["max"] is not None), default=0) + 1


def _check_imported_labels(imported: pa.Table, ids: pa.Array) -> int:
    """The number of class names labels.parquet holds (else 1 + its largest label), once each of ``ids`` has a
    label there: a class nobody has labeled yet is still one the task model predicts."""
    missing = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=imported.column("id"))))
    if len(missing):
        raise InputError(f"labels.parquet beside the labeled manifest has no label for {len(missing)} labeled "
                         f"images, e.g. {missing[:5].to_pylist()}")
    named = (imported.schema.metadata or {}).get(IMPORTED_CLASSES)
    return len(json.loads(named)) if named else int(pc.max(imported.column("label")).as_py() or 0) + 1


def read_labels(uri: str) -> tuple[pa.Table, list[str]]:
    """(labels.parquet's rows, its class names)."""
    fs, path = resolve(uri)
    table = retrying(f"cannot read {uri!r}", lambda: read_parquet(fs, path))
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
