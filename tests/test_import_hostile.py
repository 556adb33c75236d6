"""Hostile label files: every export import-labels reads comes from outside, so each one gives labels or one
`vaal-dist: error:` line with exit 2 and nothing written. The named bugs of issue #29 first, then a seeded fuzz
over the three formats run in-process through `vaal_dist.cli.main`."""
from __future__ import annotations

import collections
import copy
import json
import os
import random

import pyarrow.parquet as pq
import pytest

from conftest import CLASSES, choice, finished_round, label_studio_task, unlabeled_pool
from vaal_dist.cli import main
from vaal_dist.labeling import import_labels as import_module
from vaal_dist.labeling import shape
from vaal_dist.labeling.labels import read_labels
from vaal_dist.pool.manifests import write_manifest


@pytest.fixture
def round_out(tmp_path):
    """(round folder, its selection's 7 ids in rank order); the pool has 40 unlabeled images."""
    ids, _ = unlabeled_pool(tmp_path / "pool")
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    selected = list(ids[[30, 7, 12, 25, 8, 39, 16]])
    return finished_round(tmp_path / "round-1", tmp_path / "pool", tmp_path / "labeled.parquet", selected), selected


def import_cli(capsys, export: str, out: str, dest: str | None = None) -> tuple[int, str]:
    """(exit code, stderr) of `vaal-dist import-labels EXPORT --round OUT`, in this process."""
    argv = ["import-labels", export, "--round", out, "--classes", *CLASSES] + (["--out", dest] if dest else [])
    code = main(argv)
    return code, capsys.readouterr().err


def assert_refused(capsys, export: str, out: str, expected: str) -> str:
    """The refusal: one error line holding ``expected``, exit 2, and the round's folder as it was."""
    before = sorted(os.listdir(out))
    code, err = import_cli(capsys, export, out)
    assert (code, err.count("\n"), err.startswith("vaal-dist: error: ")) == (2, 1, True), err
    assert expected in err, err
    assert sorted(os.listdir(out)) == before
    return err


def coco(selected: list[str], images: list[tuple[int, str]] | None = None,
         categories: list[tuple[int, str]] | None = None, annotations: list[tuple[int, int]] = ()) -> dict:
    """A COCO file: ``images`` (id, file_name), ``categories`` (id, name), ``annotations`` (image_id,
    category_id); by default the selection's images numbered from 1 and CLASSES numbered from 0."""
    images = images if images is not None else list(enumerate(selected, 1))
    categories = categories if categories is not None else list(enumerate(CLASSES))
    return {"images": [{"id": i, "file_name": f} for i, f in images],
            "categories": [{"id": c, "name": n} for c, n in categories],
            "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(annotations, 1)]}


def write(path, content) -> str:
    path.write_bytes(content if isinstance(content, bytes) else
                     (content if isinstance(content, str) else json.dumps(content)).encode("utf-8", "surrogatepass"))
    return str(path)


# --- the named bugs: each was accepted or crashed before ----------------------------------------------------

def test_coco_images_sharing_an_id_are_refused_not_labeled_as_the_last_one(round_out, tmp_path, capsys):
    """Before: exit 0, the label attached to the second image only."""
    out, selected = round_out
    doc = coco(selected, images=[(1, selected[3]), (1, selected[4])], annotations=[(1, 2)])
    assert_refused(capsys, write(tmp_path / "c.json", doc), out, "repeats 1 image ids, each of which must name one "
                                                                   "entry: 1 (2 times)")


def test_coco_categories_sharing_an_id_are_refused(round_out, tmp_path, capsys):
    out, selected = round_out
    doc = coco(selected, categories=[(0, "zero"), (1, "one"), (1, "two")], annotations=[(1, 1)])
    assert_refused(capsys, write(tmp_path / "c.json", doc), out, "repeats 1 category ids, each of which must name "
                                                                   "one entry: 1 (2 times)")


def test_label_studio_choices_given_as_a_string_are_refused(round_out, tmp_path, capsys):
    """Before: "1" was read as the list of its characters, ["1"], and imported."""
    out, selected = round_out
    answer = choice("one")
    answer["result"][0]["value"]["choices"] = "one"
    assert_refused(capsys, write(tmp_path / "e.json", [label_studio_task(selected[0], answer)]), out,
                   "is not Label Studio's JSON export: at [0]['annotations'][0]['result'][0]['value']['choices']: "
                   "'one' is not of type 'array'")


def test_a_choice_that_is_a_list_is_one_error_line(round_out, tmp_path, capsys):
    """Before: TypeError: unhashable type: 'list', a traceback."""
    out, selected = round_out
    answer = choice("one")
    answer["result"][0]["value"]["choices"] = [["zero"]]
    assert_refused(capsys, write(tmp_path / "e.json", [label_studio_task(selected[0], answer)]), out,
                   "at [0]['annotations'][0]['result'][0]['value']['choices'][0]: ['zero'] is not of type 'string'")


@pytest.mark.parametrize("depth", [shape.MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_one_error_line(round_out, tmp_path, capsys, depth):
    """Before: RecursionError from json.loads at 100,000 levels; 33 levels parsed and then failed on meaning."""
    out, selected = round_out
    tasks = json.dumps([label_studio_task(selected[0], choice("one"))])
    nested = tasks[:-1] + ", " + "[" * depth + "]" * depth + "]"
    assert_refused(capsys, write(tmp_path / "e.json", nested), out,
                   f"nests deeper than {shape.MAX_DEPTH} levels: no labeling tool's export does")


def test_a_field_over_the_csv_limit_is_one_error_line(round_out, tmp_path, capsys):
    """Before: _csv.Error: field larger than field limit (131072), a traceback."""
    out, selected = round_out
    text = f"id,label\n{selected[0]},one\n{selected[1]},{'x' * 200_000}\n"
    assert_refused(capsys, write(tmp_path / "e.csv", text), out,
                   "line 3 cannot be read as CSV: field larger than field limit (131072)")


def test_an_export_over_the_size_cap_is_refused_before_it_is_read(round_out, tmp_path, capsys, monkeypatch):
    out, selected = round_out
    export = write(tmp_path / "e.json", [label_studio_task(selected[0], choice("one"))])
    size = os.path.getsize(export)
    monkeypatch.setattr(shape, "MAX_EXPORT_BYTES", size - 1)
    monkeypatch.setattr(import_module, "read_bytes", lambda uri: pytest.fail(f"{uri} was read"))
    assert_refused(capsys, export, out, f"is {size:,} bytes, over the {size - 1:,} bytes an import reads")


@pytest.mark.parametrize("content,expected", [
    ('[{"data": {"id": "S0", "id": "S1"}, "annotations": []}]', "cannot be read as JSON: the key 'id' appears 2 "
                                                                 "times in one object"),
    ('[{"data": {"id": "S0\\ud800"}}]', "holds a string that is not Unicode text (surrogates not allowed: "),
    (b"\xff\xfe[]", "is not UTF-8 text"),
    ([{"id": 4, "data": {"id": "S0"}}, {"id": 4, "data": {"id": "S1"}}], "repeats 1 task ids"),
    ([{"data": {"id": 7}}], "at [0]['data']['id']: 7 is not of type 'string'"),
    ([{"data": {"id": "S0"}, "annotations": [{"created_at": "yesterday"}]}],
     "at [0]['annotations'][0]['created_at']: 'yesterday' is not a 'iso-8601'"),
    ({"images": [{"id": 1, "file_name": "S0"}], "annotations": [{"image_id": True, "category_id": 0}]},
     "is not a COCO file: at ['annotations'][0]['image_id']: True is not of type 'integer'"),
    ({"images": [{"id": 1}]}, "at ['images'][0]: 'file_name' is a required property"),
])
def test_a_json_export_of_the_wrong_shape_is_refused_naming_the_place(round_out, tmp_path, capsys, content,
                                                                      expected):
    out, selected = round_out
    if isinstance(content, str):
        content = content.replace("S0", selected[0]).replace("S1", selected[1])
    assert_refused(capsys, write(tmp_path / "e.json", content), out, expected)


@pytest.mark.parametrize("text,expected", [
    ("id,label,id\nS0,one,S1\n", "names the column 'id' twice"),
    ("id,label\nS0,one\nS1,two,extra\n", "line 3 has 3 fields, its header 2"),
    ("id,label,time\nS0,one,noon\n", "line 2: the time 'noon' is not ISO 8601"),
    ('id,label\nS0,"one\n', "line 2 cannot be read as CSV: unexpected end of data"),
])
def test_a_csv_export_of_the_wrong_shape_is_refused_naming_the_line(round_out, tmp_path, capsys, text, expected):
    out, selected = round_out
    text = text.replace("S0", selected[0]).replace("S1", selected[1])
    assert_refused(capsys, write(tmp_path / "e.csv", text), out, expected)


def test_strangers_text_in_a_refusal_is_one_short_line(round_out, tmp_path, capsys):
    """An annotator's name with a line break, a 100,000-character class name: quoted, escaped and cut."""
    out, selected = round_out
    tasks = [label_studio_task(selected[0], choice("one", annotator="ann\nvaal-dist: ok"),
                               choice("x" * 100_000, annotator=2))]
    err = assert_refused(capsys, write(tmp_path / "e.json", tasks), out, "'one' by 'ann\\nvaal-dist: ok', 'xxxx")
    assert len(err) < 2_000


# --- fuzz -------------------------------------------------------------------------------------------------

FUZZ_CASES = 200                 # per format
KINDS = (int, float, str, bool, type(None), list, dict)


def valid_exports(selected: list[str]) -> dict[str, str]:
    """Each format's valid export of five answers (one unannotated image): the fuzz's starting points."""
    at = "2026-11-28T10:00:00Z"
    label_studio = [label_studio_task(i, choice(CLASSES[k % 3], annotator={"id": k, "email": f"a{k}@x"}, at=at))
                    for k, i in enumerate(selected[:5])] + [label_studio_task(selected[5])]
    for k, task in enumerate(label_studio):
        task["id"], task["annotations"][:1] = k + 1, [{**a, "id": k + 50} for a in task["annotations"][:1]]
    coco_doc = coco(selected, categories=[(10 + k, n) for k, n in enumerate(CLASSES)],
                    annotations=[(k + 1, 10 + k % 3) for k in range(5)])
    csv_text = "id,label,annotator,time\n" + "".join(f"{i},{CLASSES[k % 3]},a{k},{at}\n"
                                                     for k, i in enumerate(selected[:5]))
    return {"label-studio": json.dumps(label_studio), "coco": json.dumps(coco_doc), "csv": csv_text}


def places(doc) -> list[tuple[object, object]]:
    """Every (container, key or index) in ``doc``."""
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            found.append((node, key))
            stack.append(node[key])
    return found


def another_value(rng: random.Random, value: object) -> object:
    kind = rng.choice([k for k in KINDS if not isinstance(value, k)])
    return {int: rng.choice([0, 1, -1, 2**70]), float: rng.choice([0.5, 1.0, float("nan")]), bool: True,
            str: rng.choice(["", "1", "one", "\ud800", "x" * 300_000]), type(None): None,
            list: rng.choice([[], ["one"], [["zero"]]]), dict: rng.choice([{}, {"id": 1}])}[kind]


def mutate_json(rng: random.Random, text: str) -> str:
    doc = json.loads(text)
    spots = places(doc)
    node, key = rng.choice(spots)
    how = rng.choice(["delete", "duplicate key", "retype", "nest", "huge string", "swap ids", "repeat entry",
                      "truncate", "flip bytes", "random bytes"])
    if how == "delete":
        del node[key]
    elif how == "duplicate key" and isinstance(node, dict):
        node["\0dup"] = another_value(rng, node[key])
        return json.dumps(doc).replace('"\\u0000dup"', json.dumps(key))
    elif how == "retype":
        node[key] = another_value(rng, node[key])
    elif how == "nest":
        depth = rng.choice([shape.MAX_DEPTH, 5_000, 200_000])
        return json.dumps(doc).replace(json.dumps(node[key]), "[" * depth + "]" * depth, 1)
    elif how == "huge string":
        node[key] = "é" * rng.choice([10_000, 1_000_000])
    elif how == "swap ids":
        ids = [(n, k) for n, k in spots if k in ("id", "image_id", "category_id")]
        (n1, k1), (n2, k2) = rng.choice(ids), rng.choice(ids)
        n1[k1], n2[k2] = n2[k2], n1[k1]
    elif how == "repeat entry" and isinstance(node, list):
        node.append(copy.deepcopy(node[key]))
    elif how == "truncate":
        return text[:rng.randrange(len(text))]
    elif how == "flip bytes":
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(0x80))
        return "".join(chars)
    elif how == "random bytes":
        return rng.randbytes(rng.randint(0, 2_000)).decode("latin-1")
    return json.dumps(doc)


def mutate_csv(rng: random.Random, text: str) -> str:
    rows = [line.split(",") for line in text.splitlines()]
    row = rng.choice(rows)
    column = rng.randrange(len(row))
    how = rng.choice(["delete field", "add field", "huge field", "retype", "swap ids", "repeat row", "truncate",
                      "flip bytes", "random bytes", "quote"])
    if how == "delete field":
        del row[column]
    elif how == "add field":
        row.insert(column, rng.choice(["id", "label", "", "x"]))
    elif how == "huge field":
        row[column] = "y" * rng.choice([100_000, 200_000])
    elif how == "retype":
        row[column] = rng.choice(["", "1", "noon", "2026-13-01", "\0", "one\r", "\u2028"])
    elif how == "swap ids":
        other = rng.choice(rows)
        row[0], other[0] = other[0], row[0]
    elif how == "repeat row":
        rows.append(list(row))
    elif how == "truncate":
        return text[:rng.randrange(len(text))]
    elif how == "flip bytes":
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice('",\n\r\0x')
        return "".join(chars)
    elif how == "random bytes":
        return rng.randbytes(rng.randint(0, 2_000)).decode("latin-1")
    elif how == "quote":
        row[column] = '"' + row[column]
    return "\n".join(",".join(r) for r in rows) + "\n"


REFUSALS = ("cannot be read as JSON", "nests deeper than", "holds a string that is not Unicode text",
            "is not Label Studio's JSON export", "is not a COCO file", "repeats", "is neither", "is not UTF-8",
            "cannot be read as CSV", "fields, its header", "names the column", "is not ISO 8601",
            "needs the columns id and label", "holds no annotation")
PROBLEMS = ("not in the pool", "not in this round's selection", "unknown class name", "conflicting labels",
            "is empty", "was skipped", "chooses", "has no known category")


def message_kind(err: str) -> str:
    """The phrase that says why an import was refused (for an id's problem, the first one named)."""
    _, problems, named = err.partition("ids have problems: ")
    text, phrases = (named, PROBLEMS) if problems else (err, REFUSALS)
    found = sorted((text.find(phrase), phrase) for phrase in phrases if phrase in text)
    return problems + found[0][1] if found else f"other: {err[:80]}"


def test_hostile_exports_give_labels_or_one_error_line_and_write_nothing(round_out, tmp_path, capsys):
    """Mutations of valid exports (keys deleted, repeated or retyped, deep nesting, huge strings, ids swapped,
    entries repeated, bytes truncated, flipped or random), FUZZ_CASES per format, seeded: every one exits 0 with
    labels of the selection, or 2 with one error line and no file written."""
    out, selected = round_out
    rng = random.Random(29)
    round_files = sorted(os.listdir(out))
    tally: dict[str, collections.Counter] = {}
    for fmt, text in valid_exports(selected).items():
        mutate, suffix = (mutate_csv, "csv") if fmt == "csv" else (mutate_json, "json")
        tally[fmt] = collections.Counter()
        for case in range(FUZZ_CASES):
            export = write(tmp_path / f"{fmt}-{case:03d}.{suffix}", mutate(rng, text))
            dest = tmp_path / "imports" / f"{fmt}-{case:03d}"
            code, err = import_cli(capsys, export, out, dest=str(dest / "labeled.parquet"))
            if code == 0:
                labels = read_labels(str(dest / "labels.parquet"))[0]
                assert set(labels.column("id").to_pylist()) <= set(selected), export
                assert set(labels.column("label").to_pylist()) <= set(range(len(CLASSES))), export
                assert pq.read_table(dest / "labeled.parquet").num_rows == 5 + labels.num_rows, export
                tally[fmt]["accepted"] += 1
            else:
                assert (code, err.count("\n"), err.startswith("vaal-dist: error: ")) == (2, 1, True), (export, err)
                assert not dest.exists(), export
                tally[fmt][message_kind(err)] += 1
    assert sorted(os.listdir(out)) == round_files
    for fmt, counts in tally.items():
        print(f"{fmt}: {FUZZ_CASES} cases, {counts['accepted']} accepted, refused by message:")
        for kind, n in counts.most_common():
            print(f"  {n:4d}  {kind}")
        assert not [kind for kind in counts if kind.startswith("other")], fmt
        assert 0 < counts["accepted"] < FUZZ_CASES, fmt        # the mutations reach both outcomes
