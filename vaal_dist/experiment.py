"""Multi-round active-learning experiments with a simulated oracle: learning curves on a labeled pool.

For each seed the pool is split once into a held-out test set and a training set, and a seeded initial
labeled set is drawn from the training set; every strategy starts from the same splits (so results
pair by seed). Each round trains a fresh task model on the labeled set and measures its accuracy on the
test set (the last epoch's model: no model choice on test), then, until the final fraction, runs one
selection round (``run_round``, with the test ids held out) and reveals the selected images' labels by
adding them to the labeled set. Every step leaves a file, so a rerun of the same ``out`` resumes.

Layout under ``out``: ``splits/seed-S/`` with ``test.parquet``, ``initial.parquet`` and the round-0
evaluation, shared by the strategies; ``runs/STRATEGY/seed-S/round-R/`` with ``labeled.parquet`` (the
set entering round R), ``eval.json`` (R > 0) and the selection round in ``select/``; results in ``curves.parquet``, ``curves.csv``, ``summary.csv``, ``report.md`` and ``curves.png``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vaal_dist.config import RoundConfig
from vaal_dist.errors import InputError
from vaal_dist.pool.io import check_labels, exists, join, read_json, read_manifest, read_pool_ids, \
    read_pool_meta, resolve, write_atomic, write_json, write_manifest, write_parquet
from vaal_dist.round import run_round
from vaal_dist.strategies import STRATEGIES
from vaal_dist.strategies.base import RoundInputs
from vaal_dist.strategies.task import train_task_model

log = logging.getLogger(__name__)

# Per-round facts of the selecting round's last training epoch: is the adversarial game being played?
# VAE recon and KL bounded; D's labeled-vs-unlabeled AUC (d_auc) above 0.5 - at 0.5 D cannot tell the
# sets apart and its scores rank nothing. AALU: its VAE's recon+KL and the assistant's AUC (a_auc).
GAME_METRICS = ("recon", "kl", "disc_loss", "d_labeled", "d_unlabeled", "d_auc", "recon_kl", "a_auc")


@dataclass(frozen=True)
class ExperimentConfig:
    """Defaults follow the papers: 10% labeled at the start, +5% per round, up to 40%."""

    base: RoundConfig                       # pool, presets, workers...; labeled/out/budget/strategy/seed are set per round
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

    def fractions(self) -> list[float]:
        rounds = int(round((self.final - self.initial) / self.step)) + 1
        return [round(self.initial + r * self.step, 10) for r in range(rounds)]


def run_experiment(cfg: ExperimentConfig) -> pa.Table:
    """Run (or resume) every strategy x seed; returns the folder's learning-curve table as written to
    ``out``: this run's curves and those earlier invocations into ``out`` finished."""
    ids = read_pool_ids(cfg.base.pool).combine_chunks()
    pool_ids = ids.take(pc.sort_indices(ids))      # in id order: the splits do not depend on the shard layout
    check_labels(cfg.base.pool, pool_ids)    # the oracle: every image needs a label, checked up front
    rows = []
    for seed in cfg.seeds:
        test_uri, initial_uri = _splits(cfg, pool_ids, seed)
        for strategy in cfg.strategies:
            rows += _curve(cfg, strategy, seed, test_uri, initial_uri, len(pool_ids))
            curves = _with_earlier_curves(cfg.out, pa.Table.from_pylist(rows))
            write_results(cfg.out, curves)
    return curves


def _with_earlier_curves(out: str, curves: pa.Table) -> pa.Table:
    """``curves`` plus the folder's rows of (strategy, seed) pairs that earlier invocations finished and this
    one did not run: the folder's results grow with every invocation (one per group of strategies, say)."""
    uri = join(out, "curves.parquet")
    if not exists(uri):
        return curves
    fs, path = resolve(uri)
    earlier = pq.read_table(path, filesystem=fs)
    ran = {(r["strategy"], r["seed"]) for r in curves.select(["strategy", "seed"]).to_pylist()}
    keep = [(r["strategy"], r["seed"]) not in ran for r in earlier.select(["strategy", "seed"]).to_pylist()]
    return pa.concat_tables([earlier.filter(pa.array(keep, pa.bool_())), curves], promote_options="default")


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
        round_cfg = dataclasses.replace(cfg.base, labeled=labeled_uri, holdout=test_uri, strategy=strategy,
                                        seed=seed * 1000 + r, out=join(folder, "select"))
        # Round 0 starts every strategy of a seed from the same set and model seed: evaluated once.
        accuracy = _evaluate(round_cfg, _split_folder(cfg, seed) if r == 0 else folder, test_ids)
        row = {"strategy": strategy, "seed": seed, "round": r, "labeled_fraction": fraction,
               "labeled": len(read_manifest(labeled_uri)), "accuracy": accuracy,
               "query_seconds_per_100": float("nan"), **dict.fromkeys(GAME_METRICS, float("nan"))}
        if r + 1 < len(fractions):
            budget = _labeled_count(fractions[r + 1], train_size) - row["labeled"]
            record = run_round(dataclasses.replace(round_cfg, budget=budget)).record
            row["query_seconds_per_100"] = record["per_100_query_seconds"]
            train = record["train"] or {}
            last = train.get("last_epoch") or train.get("aalu_last_epoch") or {}     # VAE/D, or AALU's
            row.update({k: float(last[k]) for k in GAME_METRICS if k in last})
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
    merged = join(select_out, "labeled-after.parquet")
    if not exists(merged):
        selected = read_manifest(join(select_out, "selection.parquet"))
        labeled = read_manifest(labeled_uri)
        if pc.any(pc.is_in(selected, value_set=labeled)).as_py():
            raise RuntimeError(f"{select_out}: the selection holds already labeled ids")
        write_manifest(merged, pa.concat_arrays([labeled, selected]))
    return merged


def _evaluate(round_cfg: RoundConfig, folder: str, test_ids: pa.Array) -> float:
    """Test accuracy of a task model trained from scratch on the round's labeled set (cached)."""
    done = join(folder, "eval.json")
    if exists(done):
        return read_json(done)["accuracy"]
    labeled = read_manifest(round_cfg.labeled)
    inputs = RoundInputs(round_cfg, read_pool_meta(round_cfg.pool), labeled, join(folder, "eval"), test_ids)
    _, facts = train_task_model(inputs)
    accuracy = float(facts["task_last_epoch"]["eval_accuracy"])
    write_json(done, {"accuracy": accuracy, "labeled": len(labeled), "test": len(test_ids)})
    return accuracy


def aulc(fractions, accuracies) -> float:
    """Area under the learning curve (accuracy vs labeled fraction), trapezoidal, divided by the width
    of the fraction range: the mean accuracy over it, in [0, 1] (a single point: its accuracy)."""
    x, y = np.asarray(fractions, float), np.asarray(accuracies, float)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many fractions as accuracies, at least one; got {len(x)} and {len(y)}")
    if len(x) == 1:
        return float(y[0])
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def summarize(curves: pa.Table) -> list[dict]:
    """Per strategy: AULC mean and std over seeds and, where random ran with the same seeds, the mean
    and std of the per-seed difference AULC(strategy) - AULC(random) and how many seeds it is above 0."""
    by_run: dict[tuple[str, int], float] = {}
    rows = curves.to_pylist()
    for strategy, seed in sorted({(r["strategy"], r["seed"]) for r in rows}):
        points = [(r["labeled_fraction"], r["accuracy"]) for r in rows if (r["strategy"], r["seed"]) == (strategy, seed)]
        by_run[strategy, seed] = aulc(*zip(*points))
    summary = []
    for strategy in sorted({s for s, _ in by_run}):
        seeds = sorted(seed for s, seed in by_run if s == strategy)
        values = np.array([by_run[strategy, seed] for seed in seeds])
        paired = np.array([by_run[strategy, seed] - by_run["random", seed] for seed in seeds
                           if ("random", seed) in by_run])
        summary.append({"strategy": strategy, "seeds": len(seeds), "aulc_mean": values.mean(),
                        "aulc_std": values.std(ddof=1) if len(values) > 1 else 0.0,
                        "minus_random_mean": paired.mean() if len(paired) else float("nan"),
                        "minus_random_std": paired.std(ddof=1) if len(paired) > 1 else float("nan"),
                        "seeds_above_random": int((paired > 0).sum())})
    return summary


def report(curves: pa.Table) -> str:
    """Markdown tables of a curves table: AULC per strategy (best first), accuracy per fraction with the
    mean query time, accuracy minus random's paired by seed per fraction, and the game's vitals per round."""
    rows = curves.to_pylist()
    summary = {s["strategy"]: s for s in summarize(curves)}
    strategies = sorted(summary, key=lambda s: -summary[s]["aulc_mean"])
    fractions = sorted({r["labeled_fraction"] for r in rows})
    columns = [f"{100 * f:g}%" for f in fractions]
    accuracy = {(r["strategy"], r["seed"], r["labeled_fraction"]): r["accuracy"] for r in rows}

    def paired(strategy, fraction):
        return [a - accuracy["random", seed, f] for (s, seed, f), a in accuracy.items()
                if (s, f) == (strategy, fraction) and ("random", seed, f) in accuracy]

    tables = [
        _markdown(["strategy", "seeds", "AULC (mean ± std)", "minus random, paired (mean ± std)", "seeds above random"],
                  [[s, summary[s]["seeds"], _mean_std(summary[s]["aulc_mean"], summary[s]["aulc_std"], 4),
                    *(["–", "–"] if s == "random" else
                      [_mean_std(summary[s]["minus_random_mean"], summary[s]["minus_random_std"], 4, sign=True),
                       summary[s]["seeds_above_random"]])]
                   for s in strategies]),
        _markdown(["strategy", *columns, "query s / 100 (mean)"],
                  [[s, *(_stats(_measured(rows, "accuracy", strategy=s, labeled_fraction=f), 3) for f in fractions),
                    _mean(_measured(rows, "query_seconds_per_100", strategy=s))] for s in strategies]),
        _markdown(["strategy", *columns[1:]],
                  [[s, *(_stats(paired(s, f), 3, sign=True) for f in fractions[1:])]
                   for s in strategies if s != "random"])]
    vitals = [m for m in GAME_METRICS if _measured(rows, m)]
    game = []
    for s in sorted(strategies):
        for r in sorted({r["round"] for r in rows if r["strategy"] == s}):
            values = [_measured(rows, m, strategy=s, round=r) for m in vitals]
            if any(values):
                game.append([s, r, *(_mean(v, 3) for v in values)])
    if game:
        tables.append(_markdown(["strategy", "round", *vitals], game))
    return "\n\n".join(tables) + "\n"


def _measured(rows: list[dict], key: str, **match) -> list[float]:
    """``key``'s values in the rows that match, where measured (not missing, not NaN)."""
    values = (r.get(key) for r in rows if all(r[k] == v for k, v in match.items()))
    return [v for v in values if v is not None and not np.isnan(v)]


def _markdown(header: list, body: list[list]) -> str:
    lines = [header, ["---"] * len(header), *body]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def _mean_std(mean: float, std: float, digits: int, sign: bool = False) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{fmt.format(mean)} ± {std:.{digits}f}" if not np.isnan(std) else fmt.format(mean)


def _stats(values: list[float], digits: int, sign: bool = False) -> str:
    if not values:
        return ""
    return _mean_std(np.mean(values), np.std(values, ddof=1) if len(values) > 1 else float("nan"), digits, sign)


def _mean(values: list[float], digits: int = 1) -> str:
    return f"{np.mean(values):.{digits}f}" if values else ""


def write_results(out: str, curves: pa.Table) -> None:
    """curves.parquet / curves.csv, summary.csv, report.md and curves.png under ``out``."""
    import pyarrow.csv as pacsv

    write_parquet(join(out, "curves.parquet"), curves)
    summary = pa.Table.from_pylist(summarize(curves))
    for name, table in (("curves.csv", curves), ("summary.csv", summary)):
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        write_atomic(join(out, name), sink.getvalue().to_pybytes())
    write_atomic(join(out, "report.md"), report(curves).encode())
    write_atomic(join(out, "curves.png"), plot(curves))


def plot(curves: pa.Table) -> bytes:
    """PNG of ``figure(curves)``."""
    import io

    buf = io.BytesIO()
    figure(curves).savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def figure(curves: pa.Table):
    """Test accuracy vs labeled fraction, one panel per strategy (best AULC first): its mean over seeds
    with a band of +-1 std, over random's curve in grey where random ran. Panels rather than one axis
    because twenty curves within two points of each other are unreadable on one. A bare ``Figure``:
    no pyplot backend or global figure registry to set up or close."""
    from matplotlib.figure import Figure

    rows = curves.to_pylist()
    summary = {s["strategy"]: s for s in summarize(curves)}
    panels = [s for s in sorted(summary, key=lambda s: -summary[s]["aulc_mean"]) if s != "random"] or ["random"]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    over_random = "random" in summary and panels != ["random"]
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows))
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for ax, strategy in zip(axes.flat, panels):
        seeds = summary[strategy]["seeds"]
        title = f"{strategy} ({seeds} seed{'s' if seeds > 1 else ''})"
        if over_random:
            _band(ax, rows, "random", color="0.55")
            if not np.isnan(summary[strategy]["minus_random_mean"]):    # nan: no seed in common with random
                title += f"\nAULC − random {summary[strategy]['minus_random_mean']:+.4f}"
        _band(ax, rows, strategy, color="C0")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel("labeled, % of the training split")
    fig.supylabel("test accuracy (grey: random)" if over_random else "test accuracy")
    fig.tight_layout()
    return fig


def _band(ax, rows: list[dict], strategy: str, color) -> None:
    fractions = sorted({r["labeled_fraction"] for r in rows if r["strategy"] == strategy})
    acc = [_measured(rows, "accuracy", strategy=strategy, labeled_fraction=f) for f in fractions]
    mean = np.array([np.mean(a) for a in acc])
    std = np.array([np.std(a, ddof=1) if len(a) > 1 else 0.0 for a in acc])
    x = 100 * np.array(fractions)
    ax.plot(x, mean, marker="o", markersize=3, color=color, label=strategy)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
