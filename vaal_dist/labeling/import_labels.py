"""Annotations back from a labeling tool: the next round's labeled manifest and labels.parquet beside it.

Reads Label Studio's JSON export, a COCO file (its images' ``file_name`` is the pool id, as ``export`` writes
them) or a CSV of ``id,label`` (optional ``annotator``, ``time``). Every answer is checked before anything is
written; a refused import names each id and what is wrong with it, and writes nothing. The pool is never
edited: the labels live in ``labels.parquet`` beside the new manifest, with the previous round's carried over.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from vaal_dist.errors import InputError
from vaal_dist.folder_lock import writer_lock
from vaal_dist.labeling.formats import Answer, format_of
from vaal_dist.labeling.labels import LABELS, LABELS_SCHEMA, class_names, read_labels, write_labels
from vaal_dist.labeling.shape import check_size, shown
from vaal_dist.pool.io import read_pool_ids
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.storage import beside, exists, folder_of, join, read_bytes, resolve, retrying
from vaal_dist.round_files import NEXT_MANIFEST, read_round

SHOWN_PROBLEMS = 100                   # ids named in a refusal; the rest are counted


@dataclass(frozen=True)
class Imported:
    manifest: str          # the next round's labeled manifest
    labels: str            # labels.parquet beside it
    new: int               # images labeled by this import
    labeled: int           # images in the new manifest
    unannotated: int       # tasks in the export that nobody annotated (they stay unlabeled)


def import_labels(exports: str | list[str], round_out: str, *, classes: list[str] | None = None,
                  pool: str | None = None, labeled: str | None = None, dest: str | None = None,
                  read: Callable[[str], tuple[list[Answer], int]] | None = None) -> Imported:
    """Check the answers in ``exports`` (every export of the round: their answers are checked together) against
    the round in ``round_out``, then write the next round's manifest (``dest``, default
    ``round_out/labeled.parquet``: the round's labeled ids and the new ones) and labels.parquet beside it (the
    previous labels.parquet beside the round's manifest, and the new labels). Refused when ``dest`` exists.
    ``read`` gives an export's answers (default ``read_answers``: a file's)."""
    files = [exports] if isinstance(exports, str) else list(exports)
    manifest = dest or join(round_out, NEXT_MANIFEST)
    _refuse_existing(manifest)
    finished = read_round(round_out, pool, labeled)
    names = class_names(finished.pool, classes)
    previous = _previous_labels(finished.labeled, names)
    answers, unannotated = [], 0
    for export_file in files:
        file_answers, file_unannotated = (read or read_answers)(export_file)
        answers += file_answers
        unannotated += file_unannotated
    labels = _checked(answers, finished.selection.column("id"), finished.pool, names, ", ".join(files))
    previous = previous.filter(pc.invert(pc.is_in(previous.column("id"), value_set=labels.column("id"))))
    old_ids = read_manifest(finished.labeled)
    new_ids = pc.filter(labels.column("id"), pc.invert(pc.is_in(labels.column("id"), value_set=old_ids)))
    # the manifest last: it marks a finished import (another import into it is refused), so an import stopped
    # between the two leaves no manifest, and running it again replaces the labels.parquet it left
    with writer_lock(folder_of(manifest)) as lock:
        _refuse_existing(manifest)          # again: another import may have finished since the first look
        write_labels(beside(manifest, LABELS), pa.concat_tables([previous, labels]), names)
        lock.check_held()
        write_manifest(manifest, pa.concat_arrays([old_ids, new_ids.combine_chunks()]))
    return Imported(manifest, beside(manifest, LABELS), len(labels), len(old_ids) + len(new_ids), unannotated)


def _refuse_existing(manifest: str) -> None:
    if exists(manifest):
        # built on the round's manifest, a second import would drop the first one's labels
        raise InputError(f"{manifest!r} exists from an earlier import: pass every export of the round to one "
                         f"import-labels call, or give another --out")


def _previous_labels(manifest: str, names: list[str]) -> pa.Table:
    uri = beside(manifest, LABELS)
    if not exists(uri):
        return LABELS_SCHEMA.empty_table()
    table, their_names = read_labels(uri)
    if their_names != names:
        raise InputError(f"{uri} names the classes {their_names}, this import {names}: labels of two rounds "
                         f"must use one list of classes, in one order")
    return table


def _checked(answers: list[Answer], selection: pa.Array, pool: str, names: list[str], source: str) -> pa.Table:
    """The labels (LABELS_SCHEMA) the answers give, or one InputError naming every id with a problem."""
    by_id: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_id[a.id].append(a)
    if not by_id:
        raise InputError(f"{source}: import refused: it holds no annotation")
    problems = {i: [a.problem for a in given if a.problem] for i, given in by_id.items()}
    for a in answers:
        if a.label is not None and a.label not in names:
            problems[a.id].append(f"unknown class name {shown(repr(a.label))} (classes: {names})")
    _not_selected(problems, selection, pool)
    for i, given in by_id.items():
        if len({a.label for a in given if a.label is not None}) > 1:
            who = ", ".join(f"{shown(repr(a.label))} by {_annotator(a)}" for a in given if a.label)
            problems[i].append(f"conflicting labels: {who}")
    bad = {i: p for i, p in problems.items() if p}
    if bad:
        named = "; ".join(f"{shown(repr(i))}: {', '.join(p)}" for i, p in list(bad.items())[:SHOWN_PROBLEMS])
        more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        raise InputError(f"{source}: import refused, nothing written: {len(bad)} ids have problems: {named}{more}")
    now = datetime.now(timezone.utc)
    firsts = [given[0] for given in by_id.values()]
    return pa.table({"id": [a.id for a in firsts], "label": [names.index(a.label) for a in firsts],
                     "annotator": [a.annotator for a in firsts], "time": [a.time or now for a in firsts]},
                    schema=LABELS_SCHEMA)


def _annotator(answer: Answer) -> str:
    name = answer.annotator or "an unnamed annotator"
    return shown(name if name.isprintable() else repr(name))


def _not_selected(problems: dict[str, list[str]], selection: pa.Array, pool: str) -> None:
    ids = pa.array(list(problems), pa.string())
    outside = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=selection)))
    if not len(outside):
        return
    in_pool = pc.is_in(outside, value_set=read_pool_ids(pool)).to_pylist()
    for i, known in zip(outside.to_pylist(), in_pool):
        problems[i].append("not in this round's selection" if known else "not in the pool")


def read_answers(export_file: str) -> tuple[list[Answer], int]:
    """(every annotation in the file, the number of its images nobody annotated), once the file has the shape
    of its format (``formats``)."""
    fs, path = resolve(export_file)
    info = retrying(f"cannot look up {export_file!r}", lambda: fs.get_file_info(path))
    if not info.is_file:
        raise InputError(f"export {export_file!r} does not exist")
    check_size(export_file, info.size)
    return answers_in(export_file, read_bytes(export_file), path)


def answers_in(export_file: str, data: bytes, path: str = "") -> tuple[list[Answer], int]:
    """``read_answers`` of the bytes of ``export_file`` (which names it in errors); its ``path`` (where a suffix
    names the format) may be empty: the bytes are then recognised by their shape."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"export {export_file!r} is not UTF-8 text: {e}") from None
    form, content = format_of(export_file, path, text)
    return form.read(export_file, content)
