"""The labeling formats, one record each (``LabelFormat``): how export writes a round's tasks in it and how import
recognises a file of it and reads its answers back. Label Studio's JSON (with its labeling config), COCO and CSV.

Export and import look a format up in ``LABEL_FORMATS`` by name (export's ``--to``) or by the file (import): a
file named ``.csv`` is CSV; any other is JSON, Label Studio's if it is a list of tasks, COCO's if it is an object
with images. A reader checks the file's shape (``shape``) before it reads a single answer.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from xml.sax.saxutils import quoteattr

from vaal_dist.errors import InputError
from vaal_dist.labeling.shape import check_coco, check_csv, check_label_studio, parse_json

LABEL_FIELD = "label"          # the labeling config's <Choices name=...>: what import reads back
IMAGE_FIELD = "image"
# OWASP's CSV injection: a cell starting with one of these is a formula to a spreadsheet
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"                # a spreadsheet shows a cell after it as text


@dataclass(frozen=True)
class Guess:
    """What a task's prediction says: the model that made it, how soon to label the image, the class guessed."""

    strategy: str
    model_version: str         # "<strategy>-<the round's short fingerprint>"
    score: float               # in (0, 1], larger means label first: 1 - (rank - 1) / (the selection's size)
    predicted: str | None      # the guessed class's name; None where the strategy has no task model
    confidence: float | None   # the model's probability of it


@dataclass(frozen=True)
class Task:
    """One selected image as a labeling task: what every format writes of it."""

    id: str
    rank: int
    score: float
    guess: Guess
    url: str
    width: int
    height: int


@dataclass(frozen=True)
class Answer:
    """One annotation of one image: its class name, or why it gives none (``problem``)."""

    id: str
    label: str | None
    annotator: str = ""
    time: datetime | None = None
    problem: str | None = None


@dataclass(frozen=True)
class LabelFormat:
    """A format's writer: each part's file (``file_name`` formatted with the part number) holds ``head`` (of the
    class names), the tasks' ``entry`` bytes with ``separator`` between two, then ``tail``; ``extra_files`` (of the
    class names) are written after the parts. Its reader: ``read(file, content)`` gives (the answers, the number of
    images nobody annotated), where content is the file's text for a format with a ``suffix`` (a file named so is
    in it) and its JSON for one with a ``sniff`` (a JSON file whose shape it takes is in it)."""

    name: str
    what: str                  # the format as a refusal describes it
    file_name: str
    head: Callable[[list[str]], bytes]
    entry: Callable[[Task], bytes]
    read: Callable[[str, object], tuple[list[Answer], int]]
    separator: bytes = b""
    tail: bytes = b""
    extra_files: Callable[[list[str]], dict[str, bytes]] = field(default=lambda _: {})
    suffix: str | None = None
    sniff: Callable[[object], bool] | None = None


def format_of(source: str, path: str, text: str) -> tuple[LabelFormat, object]:
    """(the format of the export file ``source`` at ``path`` holding ``text``, what its reader takes)."""
    for form in LABEL_FORMATS.values():
        if form.suffix is not None and path.endswith(form.suffix):
            return form, text
    doc = parse_json(source, text)
    for form in LABEL_FORMATS.values():
        if form.sniff is not None and form.sniff(doc):
            return form, doc
    raise InputError(f"export {source!r} is neither {' nor '.join(f.what for f in LABEL_FORMATS.values())}")


# --- Label Studio ---------------------------------------------------------------------------------------------

def labeling_config(classes: list[str]) -> str:
    """Label Studio's labeling config: the image and one choice of the class names."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    return (f'<View>\n  <Image name="{IMAGE_FIELD}" value="${IMAGE_FIELD}"/>\n'
            f'  <Choices name="{LABEL_FIELD}" toName="{IMAGE_FIELD}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def _label_studio_entry(t: Task) -> bytes:
    # Label Studio refuses a prediction without a result: an empty one where there is no guess
    result = [] if t.guess.predicted is None else [{"from_name": LABEL_FIELD, "to_name": IMAGE_FIELD,
                                                    "type": "choices", "value": {"choices": [t.guess.predicted]}}]
    prediction = {"model_version": t.guess.model_version, "score": t.guess.score, "result": result}
    return json.dumps({"data": {IMAGE_FIELD: t.url, "id": t.id, "rank": t.rank, "score": t.score,
                                "strategy": t.guess.strategy}, "predictions": [prediction]}).encode()


def _label_studio_answers(source: str, tasks: list[dict]) -> tuple[list[Answer], int]:
    check_label_studio(source, tasks)
    answers, unannotated = [], 0
    for task in tasks:
        image_id = str(task["data"].get("id", f"task {task.get('id')} (its data has no id)"))
        annotations = task.get("annotations") or []
        unannotated += not annotations
        answers += [_label_studio_answer(image_id, a) for a in annotations]
    return answers, unannotated


def _label_studio_answer(image_id: str, annotation: dict) -> Answer:
    who = annotation.get("completed_by")
    annotator = str(who.get("email") or who.get("id")) if isinstance(who, dict) else str(who or "")
    when = _time(annotation.get("updated_at") or annotation.get("created_at"))
    if annotation.get("was_cancelled"):
        return Answer(image_id, None, annotator, when, f"annotation {annotation.get('id')} was skipped")
    chosen = [c for r in annotation.get("result") or [] if r.get("from_name") == LABEL_FIELD
              for c in r.get("value", {}).get("choices", [])]
    if len(chosen) != 1:
        why = "is empty" if not chosen else f"chooses {len(chosen)} classes"
        return Answer(image_id, None, annotator, when, f"annotation {annotation.get('id')} {why}")
    return Answer(image_id, chosen[0], annotator, when)


# --- COCO -----------------------------------------------------------------------------------------------------

def _coco_head(classes: list[str]) -> bytes:
    """COCO's categories, no annotations yet, then its images (file_name: the pool id; coco_url: the image)."""
    categories = [{"id": label, "name": name} for label, name in enumerate(classes)]
    return (f'{{"info": {{"description": "vaal_dist selection"}},\n "categories": {json.dumps(categories)},\n'
            f' "annotations": [],\n "images": [\n').encode()


def _coco_entry(t: Task) -> bytes:
    entry = {"id": t.rank, "file_name": t.id, "coco_url": t.url, "width": t.width, "height": t.height,
             "rank": t.rank, "score": t.score, "strategy": t.guess.strategy}
    if t.guess.predicted is not None:
        entry |= {"predicted": t.guess.predicted, "confidence": t.guess.confidence}
    return json.dumps(entry).encode()


def _coco_answers(source: str, doc: dict) -> tuple[list[Answer], int]:
    check_coco(source, doc)
    images = {image["id"]: str(image["file_name"]) for image in doc["images"]}
    categories = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
    answers = []
    for a in doc.get("annotations", []):
        image_id = images.get(a.get("image_id"), f"image_id {a.get('image_id')} (not among the file's images)")
        category = a.get("category_id")
        problem = None if category in categories else f"annotation {a.get('id')} has no known category ({category})"
        answers.append(Answer(image_id, categories.get(category), str(a.get("annotator", "")), None, problem))
    annotated = {a.get("image_id") for a in doc.get("annotations", [])}
    return answers, sum(i not in annotated for i in images)


# --- CSV ------------------------------------------------------------------------------------------------------

def _csv_line(row: list) -> bytes:
    text = io.StringIO()
    # CSV's own CRLF: with a bare LF the writer leaves a CR in an id unquoted, and a reader ends the row there
    csv.writer(text, lineterminator="\r\n").writerow([spreadsheet_text(c) if isinstance(c, str) else c for c in row])
    return text.getvalue().encode()


def spreadsheet_text(cell: str) -> str:
    """``cell`` as a spreadsheet shows it and never runs it: one starting with a formula's first character (OWASP's
    = + - @ tab CR) gets a leading ', and so does one starting with ', so that ``from_spreadsheet_text`` gives
    back every cell exactly."""
    return TEXT_MARK + cell if cell.startswith((*FORMULA_STARTS, TEXT_MARK)) else cell


def from_spreadsheet_text(cell: str) -> str:
    """The text ``spreadsheet_text`` made ``cell`` of; a cell it would not have written (' then other text, typed
    by a person) as it is."""
    quoted = cell.startswith(TEXT_MARK) and cell[1:].startswith((*FORMULA_STARTS, TEXT_MARK))
    return cell[1:] if quoted else cell


def _csv_answers(source: str, text: str) -> tuple[list[Answer], int]:
    """A CSV of ``id,label`` (optional ``annotator``, ``time``): every row is an answer, so none is unannotated."""
    check_csv(source, text)
    rows = csv.DictReader(io.StringIO(text))
    if not {"id", "label"} <= set(rows.fieldnames or ()):
        raise InputError(f"a CSV of labels needs the columns id and label, got {rows.fieldnames}")
    return [Answer(from_spreadsheet_text(row["id"]), row["label"] or None, row.get("annotator") or "",
                   _time(row.get("time")), None if row["label"] else "empty label") for row in rows], 0


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


LABEL_FORMATS = {form.name: form for form in (
    LabelFormat("label-studio", "Label Studio's JSON export (a list of tasks)", "tasks-{:05d}.json",
                lambda _: b"[\n", _label_studio_entry, _label_studio_answers, b",\n", b"\n]\n",
                extra_files=lambda classes: {"labeling-config.xml": labeling_config(classes).encode()},
                sniff=lambda doc: isinstance(doc, list)),
    LabelFormat("coco", "COCO (an object with images)", "coco-{:05d}.json", _coco_head, _coco_entry,
                _coco_answers, b",\n", b"\n]}\n", sniff=lambda doc: isinstance(doc, dict) and "images" in doc),
    LabelFormat("csv", "a .csv", "tasks-{:05d}.csv",
                lambda _: _csv_line(["id", "rank", "score", "strategy", "image", "predicted", "confidence"]),
                lambda t: _csv_line([t.id, t.rank, t.score, t.guess.strategy, t.url, t.guess.predicted,
                                     t.guess.confidence]),
                _csv_answers, suffix=".csv"),
)}
