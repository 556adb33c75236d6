"""The shape a labeling tool's export must have before its answers are read: its size, its JSON's nesting,
keys and types, and ids that name one thing each. An export comes from outside (a tool, a script, anyone who
can put a file where the import reads), so a file of the wrong shape is refused as one InputError naming the
file and the place in it, never read for meaning.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from datetime import datetime

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from vaal_dist.errors import InputError

# Label Studio imports at most 200 MB of tasks per request; its export adds the annotations, which are small.
MAX_EXPORT_BYTES = 1 << 30
# Label Studio's export nests 8 levels (tasks, task, annotations, annotation, result, item, value, choices);
# the rest leaves room for a tool's own fields in `data` or `meta`.
MAX_DEPTH = 32
SHOWN_CHARS = 200            # of a quoted value in a refusal
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")   # decoded UTF-8 holds no surrogate: only this writes one

TIMES = FormatChecker(formats=())


@TIMES.checks("iso-8601", raises=ValueError)
def is_iso_time(value: object) -> bool:
    """True, or ValueError for a string that is not an ISO 8601 time (empty means none given; the schema's
    types check the rest)."""
    if isinstance(value, str) and value:
        datetime.fromisoformat(value)
    return True


_NAME = {"type": ["string", "integer", "null"]}
_TIME = {"type": ["string", "null"], "format": "iso-8601"}
_LABEL_STUDIO_ANNOTATION = {
    "type": "object",
    "properties": {
        "id": {"type": ["integer", "null"]},
        "completed_by": {"type": ["integer", "string", "object", "null"],
                         "properties": {"email": _NAME, "id": _NAME}},
        "was_cancelled": {"type": ["boolean", "null"]},
        "created_at": _TIME,
        "updated_at": _TIME,
        "result": {"type": ["array", "null"], "items": {
            "type": "object",
            "properties": {"from_name": {"type": "string"},
                           "value": {"type": "object",
                                     "properties": {"choices": {"type": "array", "items": {"type": "string"}}}}}}},
    },
}
LABEL_STUDIO = Draft202012Validator({
    "type": "array",
    "items": {"type": "object", "required": ["data"],
              "properties": {"id": {"type": "integer"},
                             "data": {"type": "object", "properties": {"id": {"type": "string"}}},
                             "annotations": {"type": ["array", "null"], "items": _LABEL_STUDIO_ANNOTATION}}},
}, format_checker=TIMES)
COCO = Draft202012Validator({
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "object", "required": ["id", "file_name"],
                                              "properties": {"id": {"type": "integer"},
                                                             "file_name": {"type": "string"}}}},
        "categories": {"type": "array", "items": {"type": "object", "required": ["id", "name"],
                                                  "properties": {"id": {"type": "integer"},
                                                                 "name": {"type": "string"}}}},
        "annotations": {"type": "array", "items": {"type": "object", "required": ["image_id", "category_id"],
                                                   "properties": {"id": {"type": ["integer", "null"]},
                                                                  "image_id": {"type": "integer"},
                                                                  "category_id": {"type": "integer"},
                                                                  "annotator": _NAME}}},
    },
})


def check_size(source: str, size: int) -> None:
    if size > MAX_EXPORT_BYTES:
        raise InputError(f"export {source!r} is {size:,} bytes, over the {MAX_EXPORT_BYTES:,} bytes an import "
                         f"reads: export the project in parts (one file per part) and import them together")


def parse_json(source: str, text: str) -> object:
    """``text``'s JSON, refused when a key repeats in an object, it nests deeper than MAX_DEPTH or a string is
    not Unicode text (a lone surrogate, which JSON's \\u escapes allow and Parquet cannot store)."""
    too_deep = f"export {source!r} nests deeper than {MAX_DEPTH} levels: no labeling tool's export does"
    try:
        doc = json.loads(text, object_pairs_hook=_keys_once)
    except RecursionError:
        raise InputError(too_deep) from None
    except ValueError as e:
        raise InputError(f"export {source!r} cannot be read as JSON: {shown(str(e))}") from None
    if _depth(doc) > MAX_DEPTH:
        raise InputError(too_deep)
    if SURROGATE_ESCAPE.search(text):
        _check_text(source, json.dumps(doc, ensure_ascii=False))
    return doc


def _keys_once(pairs: list[tuple[str, object]]) -> dict:
    counts = Counter(key for key, _ in pairs)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        # the last one would win silently, and it may not be the answer the annotator gave
        raise ValueError(f"the key {shown(repr(repeated[0]))} appears {counts[repeated[0]]} times in one object")
    return dict(pairs)


def _depth(doc: object) -> int:
    """How many levels of arrays and objects ``doc`` nests (0 for a scalar), counted up to MAX_DEPTH + 1."""
    depth, level = 0, [doc]
    while depth <= MAX_DEPTH:
        containers = [node for node in level if isinstance(node, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [child for node in containers for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def _check_text(source: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"export {source!r} holds a string that is not Unicode text ({e.reason}: "
                         f"{shown(repr(text[max(0, e.start - 20):e.end + 20]))})") from None


def check_label_studio(source: str, tasks: list) -> None:
    """Types as LABEL_STUDIO says, and each task id once (Label Studio numbers its tasks; a task file written by
    export has no ids yet)."""
    _check_types(LABEL_STUDIO, "Label Studio's JSON export", source, tasks)
    _once(source, "task id", [task["id"] for task in tasks if "id" in task])


def check_coco(source: str, doc: dict) -> None:
    """Types as COCO says, and each image id and category id once: a repeated one would give an annotation two
    meanings, of which a dict keeps one silently."""
    _check_types(COCO, "a COCO file", source, doc)
    _once(source, "image id", [image["id"] for image in doc["images"]])
    _once(source, "category id", [category["id"] for category in doc.get("categories", [])])


def _check_types(validator: Draft202012Validator, what: str, source: str, doc: object) -> None:
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        where = "".join(f"[{step!r}]" for step in error.absolute_path) or "the top level"
        raise InputError(f"export {source!r} is not {what}: at {shown(where)}: {shown(error.message)}")


def _once(source: str, what: str, ids: list) -> None:
    repeated = {i: n for i, n in Counter(ids).items() if n > 1}
    if repeated:
        named = ", ".join(f"{i} ({n} times)" for i, n in list(repeated.items())[:10])
        raise InputError(f"export {source!r} repeats {len(repeated)} {what}s, each of which must name one "
                         f"entry: {shown(named)}")


def check_csv(source: str, text: str) -> None:
    """Quotes closed, every row as wide as the header, no column named twice, no field over csv's field limit,
    every time ISO 8601."""
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        header = next(reader, [])
        repeated = [name for name, n in Counter(header).items() if n > 1]
        if repeated:
            raise InputError(f"export {source!r} names the column {shown(repr(repeated[0]))} twice")
        for row in reader:
            if row and len(row) != len(header):
                raise InputError(f"export {source!r} line {reader.line_num} has {len(row)} fields, its header "
                                 f"{len(header)}")
            _check_csv_time(source, reader.line_num, dict(zip(header, row)).get("time"))
    except csv.Error as e:
        raise InputError(f"export {source!r} line {reader.line_num} cannot be read as CSV: {e}") from None


def _check_csv_time(source: str, line: int, time: str | None) -> None:
    try:
        is_iso_time(time)
    except ValueError:
        raise InputError(f"export {source!r} line {line}: the time {shown(repr(time))} is not ISO 8601") from None


def shown(text: str) -> str:
    """``text`` cut to SHOWN_CHARS: a refusal quotes what a stranger wrote, which may be any size."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"
