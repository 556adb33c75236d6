"""The labeling formats' registry: each record's writer writes a file its own reader recognises and reads back."""
import csv
import io

import pytest

from vaal_dist.errors import InputError
from vaal_dist.labeling.formats import LABEL_FORMATS, Guess, Task, format_of

IDS = ["=cmd|' /C calc'!A0", "a\r\nb", "café", "'quoted", "x,y"]
CLASSES = ["cat", "=dog"]


def tasks() -> list[Task]:
    return [Task(image_id, rank, 1 / rank, Guess("entropy", "entropy-ab12cd34", 1 - (rank - 1) / len(IDS),
                                                 CLASSES[rank % 2], 0.5), f"data:image/png;base64,{rank}", 8, 8)
            for rank, image_id in enumerate(IDS, 1)]


def written(form, path) -> str:
    """One part of ``tasks()`` as ``form``'s writer makes it, at ``path``; its text."""
    entries = [form.entry(t) for t in tasks()]
    path.write_bytes(form.head(CLASSES) + form.separator.join(entries) + form.tail)
    return path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("name", LABEL_FORMATS)
def test_a_file_a_format_writes_is_recognised_by_import_as_that_format(name, tmp_path):
    form = LABEL_FORMATS[name]
    path = tmp_path / form.file_name.format(1)
    found, _ = format_of(str(path), str(path), written(form, path))
    assert found is form


@pytest.mark.parametrize("name", ["label-studio", "coco"])
def test_a_json_format_reads_its_own_tasks_back_as_images_nobody_annotated(name, tmp_path):
    form = LABEL_FORMATS[name]
    path = tmp_path / form.file_name.format(1)
    _, doc = format_of(str(path), str(path), written(form, path))
    assert form.read(str(path), doc) == ([], len(IDS))


def test_the_csv_a_format_writes_reads_back_every_id_once_a_label_column_is_added(tmp_path):
    """The CSV carries the ids spreadsheet-quoted; the reader takes the quoting off (a person adds the labels)."""
    form = LABEL_FORMATS["csv"]
    path = tmp_path / form.file_name.format(1)
    rows = list(csv.reader(io.StringIO(written(form, path), newline="")))
    labeled = io.StringIO()
    csv.writer(labeled).writerows([rows[0] + ["label"]] + [row + ["cat"] for row in rows[1:]])
    answers, unannotated = form.read(str(path), labeled.getvalue())
    assert ([a.id for a in answers], {a.label for a in answers}, unannotated) == (IDS, {"cat"}, 0)


def test_a_file_no_format_takes_is_refused_naming_every_format(tmp_path):
    with pytest.raises(InputError, match=r"is neither Label Studio's JSON export \(a list of tasks\) nor COCO "
                                         r"\(an object with images\) nor a \.csv$"):
        format_of("x.json", "x.json", '{"tasks": []}')
