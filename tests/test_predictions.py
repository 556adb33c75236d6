"""The task model's guess of each selected image: carried through the exact top-b into selection.parquet, and out
to the labeling tools as Label Studio predictions, COCO fields and CSV columns."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import (TWO_TONE_META, f32_noise, finished_round, round_config, trained_checkpoint, two_tone_batch,
                      unlabeled_pool)
from vaal_dist.config import ScoringConfig, preset
from vaal_dist.errors import InputError
from vaal_dist.labeling.export import export_selection
from vaal_dist.labeling.import_labels import import_labels
from vaal_dist.labeling.labels import read_labels
from vaal_dist.pool.io import write_pool
from vaal_dist.pool.manifests import write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import read_json
from vaal_dist.round import run_round
from vaal_dist.round_inputs import Trained
from vaal_dist.scoring.topk import RunningTopK, top_k
from vaal_dist.strategies.entropy import Entropy, EntropyScorer

CLASSES = ["zero", "one", "two"]
TONES = ["dark", "light"]


def test_running_top_k_carries_each_rows_columns_over_any_block_split():
    rng = np.random.default_rng(0)
    ids = np.array([f"i{n:04d}" for n in range(500)])
    scores = rng.integers(0, 40, 500).astype(float)         # many ties: the tie-break decides who enters
    predicted = rng.integers(0, 10, 500)
    acc = RunningTopK(30, fold_at=17)
    for block in np.array_split(rng.permutation(500), 23):
        acc.add(ids[block], scores[block], {"predicted": predicted[block], "confidence": scores[block] / 40})
    got_ids, _ = acc.result()
    want_ids, _ = top_k(ids, scores, 30)
    np.testing.assert_array_equal(got_ids, want_ids)
    at = {i: n for n, i in enumerate(ids)}
    np.testing.assert_array_equal(acc.columns["predicted"], predicted[[at[i] for i in want_ids]])
    np.testing.assert_array_equal(acc.columns["confidence"], scores[[at[i] for i in want_ids]] / 40)


# --- a round ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_tone_round_inputs(tmp_path_factory):
    """(pool, labeled manifest, batch, task checkpoint): the two tones with labels, 8 of them labeled."""
    root = tmp_path_factory.mktemp("guess")
    batch, labels = two_tone_batch()
    table = pa.table({"id": batch["id"], "image": pa.array(list(batch["image"]), pa.binary()),
                      "label": np.append(labels, 0)})
    write_pool(str(root / "pool"), [table.slice(0, 30), table.slice(30)], TWO_TONE_META)     # two shards: blocks merge
    write_manifest(str(root / "labeled.parquet"), batch["id"][:8])
    return str(root / "pool"), str(root / "labeled.parquet"), batch, trained_checkpoint(root / "ckpt")


def guess_round(root, inputs, strategy: str):
    pool, labeled, _, _ = inputs
    return run_round(round_config(pool, labeled, root / strategy, budget=9, strategy=strategy, preset=preset("cpu"),
                                  scoring=ScoringConfig(batch_size=8, num_actors=2)))


def test_an_entropy_round_keeps_the_task_models_guess_of_each_selected_image(ray_local, tmp_path, monkeypatch,
                                                                               two_tone_round_inputs):
    _, _, batch, checkpoint = two_tone_round_inputs
    monkeypatch.setattr(Entropy, "train", lambda self, inputs: Trained(inputs.scorer_spec(EntropyScorer,
                                                                                      checkpoint=checkpoint)))
    done = guess_round(tmp_path, two_tone_round_inputs, "entropy")
    selection = pq.read_table(done.selection).to_pydict()
    assert done.record["predictions"] is True
    scorer = EntropyScorer(checkpoint, TWO_TONE_META)                        # in-process, one batch of 65
    with torch.inference_mode():
        logits = scorer.model.net(scorer.inputs(batch)).logits.numpy()
        probs = scorer.probs(batch).numpy()
    rows = [list(batch["id"]).index(i) for i in selection["id"]]
    # The streamed logits move by up to delta (conftest's float32 noise): an argmax flips only where the two
    # logits are within 2 delta, and a binary softmax's p moves by p0 p1 |d gap| <= 2 delta min(p).
    delta = f32_noise(logits)
    gap = np.abs(logits[rows, 0] - logits[rows, 1])
    assert gap.min() > 2 * delta, f"precondition: a guess within float32 noise of a tie, |gap| {gap.min()}"
    np.testing.assert_array_equal(selection["predicted"], probs[rows].argmax(1))
    tolerance = 2 * delta * probs[rows].min(1) + 4 * np.finfo(np.float64).eps
    off = np.abs(np.array(selection["confidence"]) - probs[rows].max(1))
    assert np.all(off <= tolerance), f"confidences off the in-process softmax by {off} > {tolerance}"
    assert set(selection["predicted"]) == {0, 1}, "precondition: both classes guessed, so a swap would show"


def test_a_strategy_without_a_task_model_writes_no_guess_and_says_so(ray_local, tmp_path, two_tone_round_inputs):
    done = guess_round(tmp_path, two_tone_round_inputs, "random")
    assert pq.read_table(done.selection).column_names == ["id", "score", "rank"]
    assert done.record["predictions"] == "none: random has no task model's class guess"
    assert read_json(str(tmp_path / "random" / "run.json"))["predictions"] == done.record["predictions"]


# --- exports ----------------------------------------------------------------------------------------------------

@pytest.fixture
def guessed_round(tmp_path):
    """(round folder, selected ids, guesses, confidences): round 1 of test_labeling with its task model's guess."""
    ids, _ = unlabeled_pool(tmp_path / "pool")
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    selected = ids[[30, 7, 12, 25, 8, 39, 16]]
    out = finished_round(tmp_path / "round-1", tmp_path / "pool", tmp_path / "labeled.parquet", selected)
    guesses, confidences = [2, 0, 1, 1, 0, 2, 0], [0.51, 0.4, 0.9, 0.35, 0.6, 0.7, 0.45]
    selection = pq.read_table(f"{out}/selection.parquet")
    write_parquet(f"{out}/selection.parquet", selection.append_column("predicted", pa.array(guesses, pa.int64()))
                  .append_column("confidence", pa.array(confidences)))
    record = read_json(f"{out}/run.json")
    (tmp_path / "round-1" / "run.json").write_text(json.dumps({**record, "inputs_fingerprint": "ab12cd34" + "9" * 56}))
    return out, list(selected), guesses, confidences


def test_label_studio_tasks_carry_the_guess_as_a_prediction_sortable_by_score(guessed_round, tmp_path):
    out, selected, guesses, _ = guessed_round
    tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES)[0]).read())
    assert [t["data"]["id"] for t in tasks] == selected
    assert [t["predictions"] for t in tasks] == [
        [{"model_version": "entropy-ab12cd34", "score": 1 - rank / 7,      # 7 picks: 1 for the first, 1/7 the last
          "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]}]
        for rank, name in enumerate([CLASSES[g] for g in guesses])]


def test_coco_and_csv_carry_the_guess_and_confidence_and_the_csv_imports_back(guessed_round, tmp_path):
    out, selected, guesses, confidences = guessed_round
    coco = json.loads(open(export_selection(out, "coco", str(tmp_path / "coco"), classes=CLASSES)[0]).read())
    assert [(i["file_name"], i["predicted"], i["confidence"]) for i in coco["images"]] == list(
        zip(selected, [CLASSES[g] for g in guesses], confidences))
    text = open(export_selection(out, "csv", str(tmp_path / "csv"), classes=CLASSES)[0]).read()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["id"], r["predicted"], float(r["confidence"])) for r in rows] == list(
        zip(selected, [CLASSES[g] for g in guesses], confidences))
    # A labeler's sheet: the export with a label column filled in, never the guess; the guess is not read back.
    answers = [(g + 1) % len(CLASSES) for g in guesses]
    answered = io.StringIO()
    sheet = csv.DictWriter(answered, [*rows[0], "label"], lineterminator="\r\n")
    sheet.writeheader()
    sheet.writerows({**r, "label": CLASSES[a]} for r, a in zip(rows, answers))
    (tmp_path / "answers.csv").write_text(answered.getvalue())
    import_labels(str(tmp_path / "answers.csv"), out, classes=CLASSES, dest=str(tmp_path / "next" / "m.parquet"))
    labels = read_labels(str(tmp_path / "next" / "labels.parquet"))[0].to_pydict()
    assert dict(zip(labels["id"], labels["label"])) == dict(zip(selected, answers))


def test_a_round_without_a_guess_or_with_scores_out_of_rank_order_still_sorts_by_prediction_score(tmp_path):
    """Scores out of rank order and outside [0, 1] (Cluster-Margin's): the prediction's score is the rank's."""
    ids, _ = unlabeled_pool(tmp_path / "pool")
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:5])
    out = finished_round(tmp_path / "round", tmp_path / "pool", tmp_path / "labeled.parquet", ids[[3, 9, 4]],
                         strategy="cluster_margin")
    table = pq.read_table(f"{out}/selection.parquet")
    write_parquet(f"{out}/selection.parquet", table.set_column(1, "score", pa.array([-0.5, -0.1, -0.3])))
    tasks = json.loads(open(export_selection(out, "label-studio", str(tmp_path / "ls"), classes=CLASSES)[0]).read())
    assert [t["predictions"] for t in tasks] == [[{"model_version": "cluster_margin-", "score": score, "result": []}]
                                                for score in (1 - r / 3 for r in range(3))]
    rows = list(csv.DictReader(io.StringIO(open(export_selection(out, "csv", str(tmp_path / "csv"),
                                                                 classes=CLASSES)[0]).read())))
    assert [(r["predicted"], r["confidence"]) for r in rows] == [("", "")] * 3
    coco = json.loads(open(export_selection(out, "coco", str(tmp_path / "coco"), classes=CLASSES)[0]).read())
    assert all("predicted" not in i for i in coco["images"])


def test_a_guess_beyond_the_class_names_given_is_refused_and_nothing_is_written(guessed_round, tmp_path):
    out, _, _, _ = guessed_round
    with pytest.raises(InputError, match="guessed class 2, but 2 class names were given"):
        export_selection(out, "csv", str(tmp_path / "csv"), classes=TONES)
    assert not (tmp_path / "csv").exists()
