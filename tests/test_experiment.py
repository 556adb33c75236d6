"""Multi-round experiments: the AULC and the summary against hand-computed values, and a 2-round
experiment that is interrupted, resumed without re-labeling, and writes its table and plot."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vaal_dist.experiment as experiment
import vaal_dist.experiment_report as experiment_report
from conftest import make_raw_pool
from vaal_dist.config import AcquisitionConfig, Backbone, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.errors import InputError
from vaal_dist.experiment import ExperimentConfig, run_experiment
from vaal_dist.experiment_report import aulc, summarize
from vaal_dist.pool.io import PoolMeta, read_pool_ids, write_pool
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import join
from vaal_dist.round_inputs import RoundInputs


def test_aulc_against_hand_computed_values():
    # trapezoids 0.1 * (0.5 + 0.7) / 2 + 0.2 * (0.7 + 0.9) / 2 = 0.22 over a width of 0.3
    assert aulc([0.1, 0.2, 0.4], [0.5, 0.7, 0.9]) == pytest.approx(0.22 / 0.3)
    assert aulc([0.4, 0.1, 0.2], [0.9, 0.5, 0.7]) == pytest.approx(0.22 / 0.3)     # any order
    assert aulc([0.1, 0.4], [0.6, 0.6]) == pytest.approx(0.6)                     # flat: its level
    assert aulc([0.25], [0.8]) == 0.8
    with pytest.raises(ValueError, match="as many"):
        aulc([0.1, 0.2], [0.5])


def test_summary_pairs_each_strategy_with_random_by_seed():
    rows = []
    for strategy, seed, accs in (("random", 0, [0.5, 0.6]), ("random", 1, [0.4, 0.6]),
                                 ("vaal", 0, [0.5, 0.8]), ("vaal", 1, [0.5, 0.5])):
        rows += [{"strategy": strategy, "seed": seed, "labeled_fraction": f, "accuracy": a}
                 for f, a in zip([0.1, 0.2], accs)]
    by_name = {r["strategy"]: r for r in summarize(pa.Table.from_pylist(rows))}
    # AULCs: random 0.55, 0.50; vaal 0.65, 0.50 -> differences 0.10, 0.00
    assert by_name["random"]["aulc_mean"] == pytest.approx(0.525)
    assert by_name["random"]["aulc_std"] == pytest.approx(np.std([0.55, 0.5], ddof=1))
    assert by_name["random"]["minus_random_mean"] == pytest.approx(0.0)
    assert by_name["vaal"]["aulc_mean"] == pytest.approx(0.575)
    assert by_name["vaal"]["minus_random_mean"] == pytest.approx(0.05)
    assert by_name["vaal"]["minus_random_std"] == pytest.approx(np.std([0.1, 0.0], ddof=1))
    assert by_name["vaal"]["seeds"] == 2
    assert by_name["vaal"]["seeds_above_random"] == 1


def test_report_tables_hold_the_paired_numbers_and_only_the_vitals_measured():
    nan = float("nan")
    rows = []
    for strategy, seed, accs, d_auc in (("random", 0, [0.5, 0.6], nan), ("random", 1, [0.4, 0.6], nan),
                                        ("vaal", 0, [0.5, 0.8], 0.7), ("vaal", 1, [0.5, 0.5], 0.5)):
        rows += [{"strategy": strategy, "seed": seed, "round": r, "labeled_fraction": f, "accuracy": a,
                  "query_seconds_per_100": [2.0, nan][r] * (3 if strategy == "vaal" else 1),
                  "d_auc": [d_auc, nan][r], "kl": nan}
                 for r, (f, a) in enumerate(zip([0.1, 0.2], accs))]
    summary, accuracy, paired, game = experiment_report.report(pa.Table.from_pylist(rows)).strip().split("\n\n")
    assert summary.splitlines()[2:] == ["| vaal | 2 | 0.5750 ± 0.1061 | +0.0500 ± 0.0707 | 1 |",   # best first
                                        "| random | 2 | 0.5250 ± 0.0354 | – | – |"]
    assert accuracy.splitlines()[0] == "| strategy | 10% | 20% | query s / 100 (mean) |"
    assert accuracy.splitlines()[2] == "| vaal | 0.500 ± 0.000 | 0.650 ± 0.212 | 6.0 |"
    assert paired.splitlines()[2:] == ["| vaal | +0.050 ± 0.212 |"]                  # 0.8-0.6, 0.5-0.6
    assert game.splitlines() == ["| strategy | round | d_auc |", "| --- | --- | --- |", "| vaal | 0 | 0.600 |"]


def test_the_report_sets_the_judge_beside_a_logistic_regression_on_the_same_pixels():
    nan = float("nan")
    rows = [{"strategy": "vaal", "seed": seed, "round": r, "labeled_fraction": f, "accuracy": acc,
             "pixel_logreg_accuracy": pixels, "query_seconds_per_100": nan}
            for seed, accs, logreg in ((0, [0.5, 0.8], [0.4, 0.9]), (1, [0.5, 0.5], [0.6, nan]))
            for r, (f, acc, pixels) in enumerate(zip([0.1, 0.2], accs, logreg))]
    rows.append({"strategy": "random", "seed": 0, "round": 0, "labeled_fraction": 0.1, "accuracy": 0.5,
                 "query_seconds_per_100": nan})       # an earlier invocation's curve: no baseline column (None)
    tables = experiment_report.report(pa.Table.from_pylist(rows)).strip().split("\n\n")
    over_pixels = next(t for t in tables if t.startswith("| minus logistic regression"))
    # 10%: 0.5 - 0.4 and 0.5 - 0.6; 20%: 0.8 - 0.9 alone (seed 1's baseline was not measured)
    assert over_pixels.splitlines()[2] == "| vaal | +0.000 ± 0.141 | -0.100 |"


def test_the_figure_has_a_panel_per_strategy_best_first_each_over_random():
    rows = [{"strategy": strategy, "seed": seed, "labeled_fraction": f, "accuracy": a + 0.01 * seed}
            for strategy, accs in (("random", [0.5, 0.6]), ("vaal", [0.5, 0.7]), ("coreset", [0.5, 0.8]))
            for seed in (0, 1) for f, a in zip([0.1, 0.2], accs)]
    fig = experiment_report.figure(pa.Table.from_pylist(rows))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" ")[0] for ax in panels] == ["coreset", "vaal"]
    assert "AULC − random +0.1000" in panels[0].get_title()                    # (0.8 - 0.6) / 2
    assert [[line.get_label() for line in ax.lines] for ax in panels] == [["random", "coreset"], ["random", "vaal"]]
    assert list(panels[1].lines[1].get_ydata()) == pytest.approx([0.505, 0.705])   # mean over seeds

    other_seeds = experiment_report.figure(pa.Table.from_pylist([{**r, "seed": r["seed"] + 2} if r["strategy"] == "vaal" else r
                                                          for r in rows]))
    assert [ax.get_title() for ax in other_seeds.axes if ax.get_title().startswith("vaal")] == ["vaal (2 seeds)"]

    only_random = experiment_report.figure(pa.Table.from_pylist([r for r in rows if r["strategy"] == "random"]))
    assert [[line.get_label() for line in ax.lines] for ax in only_random.axes if ax.get_visible()] == [["random"]]


def test_paper_fractions_and_bad_settings_are_named():
    setup = Setup()
    assert ExperimentConfig("pool", setup, "x").fractions() == [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    with pytest.raises(InputError, match="unknown strategies"):
        ExperimentConfig("pool", setup, "x", strategies=("vaal", "nope"))
    with pytest.raises(InputError, match="initial"):
        ExperimentConfig("pool", setup, "x", initial=0.5, final=0.4)
    with pytest.raises(InputError, match="seeds"):
        ExperimentConfig("pool", setup, "x", seeds=(1, 1))
    with pytest.raises(InputError, match="no strategies"):
        ExperimentConfig("pool", setup, "x", strategies=())
    embedded = Setup(acquisition=AcquisitionConfig(embedding=Backbone("resnet18", "w.pt")))
    assert ExperimentConfig("pool", embedded, "x", strategies=("coreset", "typiclust")).strategies
    with pytest.raises(InputError, match="--embedding is for .*; random does not"):
        ExperimentConfig("pool", embedded, "x", strategies=("coreset", "random"))


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_at_its_round_without_relabeling(ray_local, tmp_path, monkeypatch):
    ids = make_raw_pool(tmp_path / "pool", 200, shards=2)
    setup = Setup(preset("cpu", vaal={"epochs": 1, "batch_size": 32}, task={"epochs": 1, "min_steps": 0}),
                  scoring=ScoringConfig(batch_size=32, num_actors=2), workers=0)
    cfg = ExperimentConfig(str(tmp_path / "pool"), setup, str(tmp_path / "exp"), strategies=("random",), seeds=(3,), initial=0.2,
                           step=0.1, final=0.3, test_fraction=0.25)
    trained = []
    real_train = RoundInputs.train_task
    monkeypatch.setattr(RoundInputs, "train_task", lambda inputs: (trained.append(inputs.train_dir),
                                                                   real_train(inputs))[1])
    real_evaluate = experiment._evaluate

    def crash_in_round_1(round_cfg, folder, test_ids, judged):
        if folder.endswith("round-1"):
            raise RuntimeError("injected crash")
        return real_evaluate(round_cfg, folder, test_ids, judged)

    monkeypatch.setattr(experiment, "_evaluate", crash_in_round_1)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_experiment(cfg)
    run = tmp_path / "exp" / "runs" / "random" / "seed-3"
    assert trained == [str(tmp_path / "exp" / "splits" / "seed-3" / "eval")]     # round 0: once per seed
    first_selection = (run / "round-0" / "select" / "run.json").stat().st_mtime_ns
    assert len(trained) == 1 and not (tmp_path / "exp" / "curves.parquet").exists()

    monkeypatch.setattr(experiment, "_evaluate", real_evaluate)
    earlier = {"strategy": "entropy", "seed": 3, "round": 0, "labeled_fraction": 0.2, "accuracy": 0.5}
    experiment_report.write_results(str(tmp_path / "exp"), pa.Table.from_pylist([earlier]))   # another invocation's curve
    curves = run_experiment(cfg)
    assert len(trained) == 2 and trained[1].endswith(os.path.join("round-1", "eval"))   # only round 1 trained
    assert (run / "round-0" / "select" / "run.json").stat().st_mtime_ns == first_selection   # not selected again

    def manifest(path):
        return set(pq.read_table(path).column("id").to_pylist())

    test = manifest(tmp_path / "exp" / "splits" / "seed-3" / "test.parquet")
    round_0, round_1 = manifest(run / "round-0" / "labeled.parquet"), manifest(run / "round-1" / "labeled.parquet")
    selected = manifest(run / "round-0" / "select" / "selection.parquet")
    assert len(test) == 50 and len(round_0) == 30 and len(selected) == 15           # 20% and +10% of 150
    assert round_1 == round_0 | selected and not round_0 & selected and not round_1 & test
    assert round_1 <= set(ids)

    assert curves.to_pylist()[0] | earlier == curves.to_pylist()[0]     # the folder's table, earlier curve kept
    table = curves.to_pylist()[1:]
    assert [(r["round"], r["labeled"], r["labeled_fraction"]) for r in table] == [(0, 30, 0.2), (1, 45, 0.3)]
    assert all(0 <= r["accuracy"] <= 1 for r in table)
    assert table[0]["query_seconds_per_100"] > 0 and np.isnan(table[1]["query_seconds_per_100"])
    assert pq.read_table(tmp_path / "exp" / "curves.parquet").column("accuracy").to_pylist() == \
        [0.5] + [r["accuracy"] for r in table]
    assert (tmp_path / "exp" / "curves.csv").read_text().startswith('"strategy","seed","round"')
    assert "random" in (tmp_path / "exp" / "summary.csv").read_text()
    assert "| random |" in (tmp_path / "exp" / "report.md").read_text()
    assert (tmp_path / "exp" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_folder_table_keeps_what_earlier_invocations_finished(tmp_path):
    def rows(strategy, seed, accs):
        return [{"strategy": strategy, "seed": seed, "round": r, "labeled_fraction": 0.1 * (r + 1), "accuracy": a}
                for r, a in enumerate(accs)]

    experiment_report.write_results(str(tmp_path), pa.Table.from_pylist(rows("random", 0, [0.5, 0.6]) + rows("vaal", 0, [0.4, 0.5])))
    rerun = pa.Table.from_pylist([{**r, "d_auc": 0.7} for r in rows("vaal", 0, [0.5, 0.7])])   # a new column too
    merged = experiment._with_earlier_curves(str(tmp_path), rerun).to_pylist()
    assert [(r["strategy"], r["accuracy"]) for r in merged] == [("random", 0.5), ("random", 0.6), ("vaal", 0.5), ("vaal", 0.7)]
    assert merged[0]["d_auc"] is None and merged[3]["d_auc"] == 0.7


def test_the_pixel_baseline_learns_what_the_pixels_say_and_is_cached(tmp_path):
    """Dark images are class 0 and light ones class 1: a logistic regression on the pixels separates them."""
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 2
    pixels = np.clip(np.where(labels[:, None] == 0, 40, 215) + rng.integers(-30, 31, (120, 32 * 32)), 0, 255)
    ids = [f"img-{i:03d}" for i in range(120)]
    write_pool(str(tmp_path / "pool"), [pa.table({"id": ids, "image": [p.astype(np.uint8).tobytes() for p in pixels],
                                                  "label": labels})], PoolMeta("raw", (32, 32, 1)))
    write_manifest(str(tmp_path / "labeled.parquet"), ids[:20])
    cfg = RoundConfig(str(tmp_path / "pool"), str(tmp_path / "labeled.parquet"), "out", 1, setup=Setup(preset("cpu")))
    (tmp_path / "round").mkdir()
    assert experiment._pixel_baseline(cfg, str(tmp_path / "round"), pa.array(ids[20:])) == 1.0
    cached = json.loads((tmp_path / "round" / "pixel-baseline.json").read_text())
    assert cached == {"accuracy": 1.0, "labeled": 20, "test": 100}


def test_a_round_whose_task_model_is_the_judge_is_not_judged_again(tmp_path, monkeypatch):
    """A selection round that trained the plain task model on the round's labeled set, seed and test ids gives
    its test accuracy; a round without one (MC-Dropout's own dropout) and the last round train the judge."""
    make_raw_pool(tmp_path / "pool", 100, shards=2)
    judged_here = []
    monkeypatch.setattr(RoundInputs, "train_task", lambda inputs: judged_here.append(inputs.train_dir) or
                        SimpleNamespace(last_epoch={"eval_accuracy": 0.25}))

    def a_round(cfg):   # picks the first unlabeled ids; its task model reports 0.75 on the test ids
        taken = set(read_manifest(cfg.labeled).to_pylist()) | set(read_manifest(cfg.holdout).to_pylist())
        write_manifest(join(cfg.out, "selection.parquet"),
                       [i for i in sorted(read_pool_ids(cfg.pool).to_pylist()) if i not in taken][:cfg.budget])
        settings = {**experiment.JUDGE_SETTINGS, "dropout": 0.5} if cfg.strategy == "mc_dropout" else \
            experiment.JUDGE_SETTINGS
        task = {"settings": settings, "last_epoch": {"eval_accuracy": 0.75}}
        return SimpleNamespace(record={"per_100_query_seconds": 1.0, "train": {"task": task}})
    monkeypatch.setattr(experiment, "run_round", a_round)
    out = tmp_path / "exp"
    curves = run_experiment(ExperimentConfig(str(tmp_path / "pool"), Setup(preset("cpu")), str(out),
                                             strategies=("entropy", "mc_dropout"), seeds=(0,), initial=0.2, step=0.1,
                                             final=0.4))
    assert [(r["strategy"], r["round"], r["accuracy"]) for r in curves.to_pylist()] == [
        ("entropy", 0, 0.75), ("entropy", 1, 0.75), ("entropy", 2, 0.25),
        ("mc_dropout", 0, 0.75), ("mc_dropout", 1, 0.25), ("mc_dropout", 2, 0.25)]   # round 0: entropy's, shared
    runs = out / "runs"
    assert judged_here == [str(runs / "entropy" / "seed-0" / "round-2" / "eval"),
                           str(runs / "mc_dropout" / "seed-0" / "round-1" / "eval"),
                           str(runs / "mc_dropout" / "seed-0" / "round-2" / "eval")]
    assert json.loads((out / "splits" / "seed-0" / "eval.json").read_text()) == \
        {"accuracy": 0.75, "labeled": 16, "test": 20}


def files_and_times(folder) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def test_a_rerun_with_other_split_settings_is_refused_naming_them_and_writes_nothing(tmp_path, monkeypatch):
    """The splits and every round's labeled set were drawn with the first run's settings: a rerun with others
    would mix them silently. The rounds are left out here (no curve): the refusal comes before any."""
    make_raw_pool(tmp_path / "pool", 40, shards=1)
    monkeypatch.setattr(experiment, "_curve", lambda *args: [])
    monkeypatch.setattr(experiment, "_record_curves", lambda out, curves: curves)
    out = tmp_path / "exp"

    def run(**settings):
        return run_experiment(ExperimentConfig(str(tmp_path / "pool"), Setup(), str(out), strategies=("random",),
                                               seeds=(0,), **settings))

    run(test_fraction=0.25, initial=0.2, step=0.1, final=0.3)
    before = files_and_times(out)
    assert "splits/settings.json" in before and "splits/seed-0/test.parquet" in before
    with pytest.raises(InputError) as refused:
        run(test_fraction=0.5, initial=0.1, step=0.05, final=0.3)
    assert str(refused.value) == (f"'{out}' holds an experiment whose splits were drawn with other settings "
                                  f"(--test-fraction 0.25 → 0.5, --initial 0.2 → 0.1, --step 0.1 → 0.05): "
                                  f"rerun with the old ones, or choose a new --out")
    with pytest.raises(InputError, match=r"\(--test-fraction 0.25 → 0.2\)"):
        run(test_fraction=0.2, initial=0.2, step=0.1, final=0.3)
    assert files_and_times(out) == before
    run(test_fraction=0.25, initial=0.2, step=0.1, final=0.4)      # a later final extends the same curves


@pytest.mark.parametrize("settings", ["[0.2]", "{\"test_fraction\": 0.2}", "not json"])
def test_a_split_settings_file_that_is_not_one_is_refused_in_one_line(tmp_path, settings):
    make_raw_pool(tmp_path / "pool", 40, shards=1)
    (tmp_path / "exp" / "splits").mkdir(parents=True)
    (tmp_path / "exp" / "splits" / "settings.json").write_text(settings)
    with pytest.raises(InputError, match=r"settings.json' is not an experiment's split settings: expected an "
                                         r"object of \['initial', 'step', 'test_fraction'\]; choose a new --out"):
        run_experiment(ExperimentConfig(str(tmp_path / "pool"), Setup(), str(tmp_path / "exp")))


def curve_row(strategy: str, seed) -> dict:
    return {"strategy": strategy, "seed": seed, "round": 0, "labeled_fraction": 0.1, "labeled": 10, "accuracy": 0.5,
            "query_seconds_per_100": 1.0}


@pytest.mark.parametrize("earlier, why", [
    (pa.table({"strategy": ["random"], "seed": ["<script>alert(1)</script>"]}), "Unable to merge: Field seed has "
                                                                               "incompatible types: string vs int64"),
    (pa.table({"strategy": ["random"]}), 'Field "seed" does not exist in schema'),
    (b"not parquet", "Parquet magic bytes not found")])
def test_a_folder_curves_table_of_another_shape_is_refused_in_one_line(tmp_path, earlier, why):
    """curves.parquet comes from an earlier invocation, or from anyone who could write the folder: what cannot
    be merged with this invocation's curves is named, and the folder's tables are left as they were."""
    uri = tmp_path / "curves.parquet"
    uri.write_bytes(earlier) if isinstance(earlier, bytes) else write_parquet(str(uri), earlier)
    before = uri.read_bytes()
    with pytest.raises(InputError) as refused:
        experiment._record_curves(str(tmp_path), pa.Table.from_pylist([curve_row("vaal", 0)]))
    assert str(refused.value).startswith(f"'{uri}' is not a curves table this experiment can add its curves to (")
    assert why in str(refused.value) and "\n" not in str(refused.value)
    assert uri.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet"]


def test_a_hostile_strategy_name_in_the_folders_curves_is_text_on_experiment_html(tmp_path):
    hostile = "<script>alert(1)</script>"
    write_parquet(str(tmp_path / "curves.parquet"), pa.Table.from_pylist([curve_row(hostile, 0)]))
    experiment._record_curves(str(tmp_path), pa.Table.from_pylist([curve_row("vaal", 0)]))
    page = (tmp_path / "experiment.html").read_text()
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3   # legend, table, links
