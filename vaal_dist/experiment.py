"""Multi-round active-learning experiments with a simulated oracle: learning curves on a labeled pool.

For each seed the pool is split once into a held-out test set and a training set, and a seeded initial
labeled set is drawn from the training set; every strategy starts from the same splits (so results
pair by seed). Each round, until the final fraction, runs one selection round (``run_round``, with the test
ids held out) and reveals the selected images' labels by adding them to the labeled set; and each round's
accuracy is that of a fresh task model trained on its labeled set, on the test set (the last epoch's model:
no model choice on test): the selection round's own task model where it is that model (``_judged_in_round``),
else one trained for the purpose. Every step leaves a file, so a rerun of the same ``out`` resumes.

Layout under ``out``: ``splits/seed-S/`` with ``test.parquet``, ``initial.parquet`` and the round-0
evaluation, shared by the strategies, and ``splits/settings.json`` (the split settings, pinned by the first
run); ``runs/STRATEGY/seed-S/round-R/`` with ``labeled.parquet`` (the set entering round R), ``eval.json``
(R > 0) and the selection round in ``select/``; results in ``curves.parquet``, ``curves.csv``,
``summary.csv``, ``report.md`` and ``curves.png`` (``experiment_report``) and ``experiment.html``
(``report.pages``: the curves, the summary and links to each selecting round's ``report.html``); with
``--embedding``, ``embeddings-cache/`` holds the pool's embeddings (and Cluster-Margin's clusters), computed once
and read by every round.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaal_dist.config import RoundConfig, Setup
from vaal_dist.errors import InputError
from vaal_dist.experiment_report import GAME_METRICS, write_results
from vaal_dist.folder_lock import tables_lock
from vaal_dist.labeling.labels import check_labels
from vaal_dist.pool.images import decode_images
from vaal_dist.pool.io import read_pool_ids, read_pool_meta, read_rows
from vaal_dist.pool.manifests import read_manifest, write_manifest
from vaal_dist.pool.storage import exists, join, read_json, remove_stale_temporaries, resolve, write_json
from vaal_dist.report.pages import write_experiment_report
from vaal_dist.round import run_round
from vaal_dist.round_files import REVEALED, SELECTION
from vaal_dist.strategies import STRATEGIES, get_strategy, models_trained
from vaal_dist.round_inputs import EMBEDDINGS_CACHE, RoundInputs

log = logging.getLogger(__name__)

SPLIT_SETTINGS = {"test_fraction": "--test-fraction", "initial": "--initial", "step": "--step"}  # pinned per out
PIXEL_BASELINE_IMAGES = 50_000      # labeled + test images a logistic-regression baseline decodes on the driver
JUDGE_SETTINGS = {"rank_loss": None, "dropout": None, "members": 0}     # train_task's defaults: the judge


@dataclass(frozen=True)
class ExperimentConfig:
    """Defaults follow the papers: 10% labeled at the start, +5% per round, up to 40%."""

    pool: str                               # with a label column: the oracle
    setup: Setup                            # how every round trains and scores
    out: str
    strategies: tuple[str, ...] = ("random", "vaal")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    initial: float = 0.10                   # fraction of the training split labeled before round 0
    step: float = 0.05                      # fraction added per round
    final: float = 0.40                     # the last fraction evaluated
    test_fraction: float = 0.2              # of the pool, held out for accuracy, never trained on or selected

    def __post_init__(self):
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise InputError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
        if not (0 < self.initial <= self.final < 1 and self.step > 0 and 0 < self.test_fraction < 1):
            raise InputError(f"need 0 < initial ({self.initial}) <= final ({self.final}) < 1, step ({self.step}) "
                             f"> 0 and 0 < test_fraction ({self.test_fraction}) < 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if not self.strategies:
            raise InputError("no strategies to run: name at least one")
        for name in self.strategies:
            models_trained(get_strategy(name), self.setup.acquisition)     # --embedding refused early

    def fractions(self) -> list[float]:
        rounds = int(round((self.final - self.initial) / self.step)) + 1
        return [round(self.initial + r * self.step, 10) for r in range(rounds)]


def run_experiment(cfg: ExperimentConfig) -> pa.Table:
    """Run (or resume) every strategy x seed; returns the folder's learning-curve table as written to
    ``out``: this run's curves and those earlier invocations into ``out`` finished."""
    ids = read_pool_ids(cfg.pool).combine_chunks()
    pool_ids = ids.take(pc.sort_indices(ids))      # in id order: the splits do not depend on the shard layout
    check_labels(cfg.pool, pool_ids)    # the oracle: every image needs a label, checked up front
    _pin_split_settings(cfg)
    remove_stale_temporaries(cfg.out)   # what a killed invocation half-wrote; never a live writer's
    rows = []
    for seed in cfg.seeds:
        test_uri, initial_uri = _splits(cfg, pool_ids, seed)
        for strategy in cfg.strategies:
            rows += _curve(cfg, strategy, seed, test_uri, initial_uri, len(pool_ids))
            curves = _record_curves(cfg.out, pa.Table.from_pylist(rows))
    return curves


def _record_curves(out: str, curves: pa.Table) -> pa.Table:
    """Write ``curves`` with the folder's earlier ones into its tables, and return what was written. Under
    the folder's tables lock: invocations sharing the folder finish curves at any time, and a read-modify-write
    that read before another's write would drop that one's rows."""
    with tables_lock(out):
        curves = _with_earlier_curves(out, curves)
        write_results(out, curves)
        write_experiment_report(out, curves)
    return curves


def _with_earlier_curves(out: str, curves: pa.Table) -> pa.Table:
    """``curves`` plus the folder's rows of (strategy, seed) pairs that earlier invocations finished and this
    one did not run: the folder's results grow with every invocation (one per group of strategies, say)."""
    uri = join(out, "curves.parquet")
    if not exists(uri):
        return curves
    fs, path = resolve(uri)
    ran = {(r["strategy"], r["seed"]) for r in curves.select(["strategy", "seed"]).to_pylist()}
    try:                # a file of another shape: not Parquet, no strategy or seed column, a column of another type
        earlier = pq.read_table(path, filesystem=fs)
        keep = [(r["strategy"], r["seed"]) not in ran for r in earlier.select(["strategy", "seed"]).to_pylist()]
        return pa.concat_tables([earlier.filter(pa.array(keep, pa.bool_())), curves], promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise InputError(f"{uri!r} is not a curves table this experiment can add its curves to "
                         f"({str(e).splitlines()[0]}); move it away or choose a new --out") from None


def _pin_split_settings(cfg: ExperimentConfig) -> None:
    """Write the settings the splits and rounds are drawn with to ``splits/settings.json`` on the first run into
    ``out``, and refuse a later one with others, naming each (old -> new): the splits it would reuse and the
    rounds' labeled sets were drawn with the old ones. ``final`` may change: it only ends the curves elsewhere."""
    uri = join(cfg.out, "splits", "settings.json")
    settings = {name: getattr(cfg, name) for name in SPLIT_SETTINGS}
    with tables_lock(cfg.out):              # two first invocations sharing ``out``: one writes, the other reads
        if not exists(uri):
            write_json(uri, settings)
            return
    try:
        pinned = read_json(uri)
    except ValueError:                      # not JSON
        pinned = None
    if not isinstance(pinned, dict) or pinned.keys() != settings.keys():
        raise InputError(f"{uri!r} is not an experiment's split settings: expected an object of "
                         f"{sorted(settings)}; choose a new --out")
    changed = [f"{SPLIT_SETTINGS[name]} {pinned[name]!r} → {value!r}" for name, value in settings.items()
               if pinned[name] != value]
    if changed:
        raise InputError(f"{cfg.out!r} holds an experiment whose splits were drawn with other settings "
                         f"({', '.join(changed)}): rerun with the old ones, or choose a new --out")


def _splits(cfg: ExperimentConfig, pool_ids: pa.Array, seed: int) -> tuple[str, str]:
    """(test manifest, initial labeled manifest) of ``seed``, drawn once and reused by every strategy."""
    folder = _split_folder(cfg, seed)
    test_uri, initial_uri = join(folder, "test.parquet"), join(folder, "initial.parquet")
    if not exists(initial_uri):
        rng = np.random.default_rng([seed, 6])
        order = rng.permutation(len(pool_ids))
        n_test = int(round(cfg.test_fraction * len(pool_ids)))
        train = order[n_test:]
        n_initial = _labeled_count(cfg.initial, len(train))
        write_manifest(test_uri, pool_ids.take(np.sort(order[:n_test])))
        write_manifest(initial_uri, pool_ids.take(np.sort(rng.permutation(train)[:n_initial])))
    return test_uri, initial_uri


def _split_folder(cfg: ExperimentConfig, seed: int) -> str:
    return join(cfg.out, "splits", f"seed-{seed}")


def _labeled_count(fraction: float, train_size: int) -> int:
    return max(1, int(round(fraction * train_size)))


def _curve(cfg: ExperimentConfig, strategy: str, seed: int, test_uri: str, initial_uri: str,
           pool_size: int) -> list[dict]:
    """Evaluate and select round after round for one strategy and seed; one row per fraction."""
    test_ids = read_manifest(test_uri)
    train_size = pool_size - len(test_ids)
    fractions = cfg.fractions()
    labeled_uri = initial_uri
    rows = []
    for r, fraction in enumerate(fractions):
        folder = join(cfg.out, "runs", strategy, f"seed-{seed}", f"round-{r}")
        labeled_uri = _carry(labeled_uri, join(folder, "labeled.parquet"))
        labeled = len(read_manifest(labeled_uri))
        selects = r + 1 < len(fractions)                   # the last round only evaluates
        budget = _labeled_count(fractions[r + 1], train_size) - labeled if selects else 0
        round_cfg = RoundConfig(pool=cfg.pool, labeled=labeled_uri, out=join(folder, "select"), budget=budget,
                                strategy=strategy, holdout=test_uri, seed=seed * 1000 + r, setup=cfg.setup,
                                embeddings_cache=join(cfg.out, EMBEDDINGS_CACHE))
        row = {"strategy": strategy, "seed": seed, "round": r, "labeled_fraction": fraction,
               "labeled": labeled, "query_seconds_per_100": float("nan"),
               **dict.fromkeys(GAME_METRICS, float("nan"))}
        record = run_round(round_cfg).record if selects else None
        if record:
            row["query_seconds_per_100"] = record["per_100_query_seconds"]
            for model in record["train"].values():          # the adversarial game's: VAAL's D or AALU's A
                row.update({k: float(model["last_epoch"][k]) for k in GAME_METRICS if k in model["last_epoch"]})
        # Round 0 starts every strategy of a seed from the same set and model seed: evaluated once.
        evaluated_in = _split_folder(cfg, seed) if r == 0 else folder
        accuracy = _evaluate(round_cfg, evaluated_in, test_ids, _judged_in_round(record))
        row.update(accuracy=accuracy, pixel_logreg_accuracy=_pixel_baseline(round_cfg, evaluated_in, test_ids))
        if record:
            labeled_uri = _revealed(labeled_uri, round_cfg.out)
        log.info("%s seed %d round %d: %d labeled (%.0f%%), test accuracy %.4f", strategy, seed, r,
                 row["labeled"], 100 * fraction, accuracy)
        rows.append(row)
    return rows


def _carry(labeled_uri: str, dest: str) -> str:
    """The labeled set entering a round, copied into the round's folder once (its record of the set)."""
    if not exists(dest):
        write_manifest(dest, read_manifest(labeled_uri))
    return dest


def _revealed(labeled_uri: str, select_out: str) -> str:
    """The oracle: the round's selection joins the labeled set. Written beside the selection, so a
    resumed experiment reads the same set instead of selecting again."""
    merged = join(select_out, REVEALED)
    if not exists(merged):
        selected = read_manifest(join(select_out, SELECTION))
        labeled = read_manifest(labeled_uri)
        if pc.any(pc.is_in(selected, value_set=labeled)).as_py():
            raise RuntimeError(f"{select_out}: the selection holds already labeled ids")
        write_manifest(merged, pa.concat_arrays([labeled, selected]))
    return merged


def _judged_in_round(record: dict | None) -> float | None:
    """The test accuracy of the selection round's own task model where that model is the judge: trained by
    ``train_task`` with no loss module, dropout override or members, on the same labeled set, seed and test
    ids, it is the model ``_evaluate`` would train again (identical on CPU: docs/design-choices.md)."""
    task = (record or {}).get("train", {}).get("task")
    if task and task.get("settings") == JUDGE_SETTINGS and "eval_accuracy" in task["last_epoch"]:
        return float(task["last_epoch"]["eval_accuracy"])
    return None


def _evaluate(round_cfg: RoundConfig, folder: str, test_ids: pa.Array, judged: float | None = None) -> float:
    """Test accuracy of a task model trained from scratch on the round's labeled set (cached): ``judged``, the
    round's own judge's, when it has one, else the judge trained here."""
    cached = join(folder, "eval.json")
    if exists(cached):
        return read_json(cached)["accuracy"]
    labeled = read_manifest(round_cfg.labeled)
    if judged is None:
        inputs = RoundInputs(round_cfg, read_pool_meta(round_cfg.pool), labeled, join(folder, "eval"), test_ids)
        judged = float(inputs.train_task().last_epoch["eval_accuracy"])
    write_json(cached, {"accuracy": judged, "labeled": len(labeled), "test": len(test_ids)})
    return judged


def _pixel_baseline(round_cfg: RoundConfig, folder: str, test_ids: pa.Array) -> float:
    """Test accuracy of a logistic regression on the raw pixels of the round's labeled images (cached): what
    a judge that is not starved of training should beat. NaN past PIXEL_BASELINE_IMAGES labeled + test images,
    which the driver would decode."""
    from sklearn.linear_model import LogisticRegression

    cached = join(folder, "pixel-baseline.json")
    if exists(cached):
        return read_json(cached)["accuracy"]
    labeled = read_manifest(round_cfg.labeled)
    if len(labeled) + len(test_ids) > PIXEL_BASELINE_IMAGES:
        return float("nan")
    (x, y), (x_test, y_test) = (_pixels(round_cfg, ids) for ids in (labeled, test_ids))
    accuracy = float(LogisticRegression(max_iter=1000).fit(x, y).score(x_test, y_test))
    write_json(cached, {"accuracy": accuracy, "labeled": len(labeled), "test": len(test_ids)})
    return accuracy


def _pixels(round_cfg: RoundConfig, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(pixels in [0, 1] as (n, C*S*S) float32 at the task model's size, labels) of the images ``ids``."""
    table = pa.concat_tables(read_rows(round_cfg.pool, ids, ["id", "image", "label"]))
    pixels = decode_images(table.column("id").to_numpy(zero_copy_only=False),
                           table.column("image").to_numpy(zero_copy_only=False),
                           read_pool_meta(round_cfg.pool), round_cfg.task.image_size)
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255, table.column("label").to_numpy()


