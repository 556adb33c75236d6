"""What an experiment's learning curves say: the AULC and its summary per strategy, Markdown tables and a
plot, written beside the curves as ``curves.parquet``, ``curves.csv``, ``summary.csv``, ``report.md`` and
``curves.png``. A curves table has one row per strategy, seed and round (``experiment.run_experiment``)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import join, write_atomic

# Per-round facts of the selecting round's last training epoch: is the adversarial game being played?
# VAE recon and KL bounded; D's labeled-vs-unlabeled AUC (d_auc) above 0.5 - at 0.5 D cannot tell the
# sets apart and its scores rank nothing. AALU: its VAE's recon+KL and the assistant's AUC (a_auc).
GAME_METRICS = ("recon", "kl", "disc_loss", "d_labeled", "d_unlabeled", "d_auc", "recon_kl", "a_auc")


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
    mean query time, accuracy minus random's paired by seed per fraction, accuracy minus a logistic regression
    on the same labeled pixels (a starved judge shows there), and the game's vitals per round."""
    rows = curves.to_pylist()
    summary = {s["strategy"]: s for s in summarize(curves)}
    strategies = sorted(summary, key=lambda s: -summary[s]["aulc_mean"])
    fractions = sorted({r["labeled_fraction"] for r in rows})
    columns = [f"{100 * f:g}%" for f in fractions]
    accuracy = {(r["strategy"], r["seed"], r["labeled_fraction"]): r["accuracy"] for r in rows}

    def paired(strategy, fraction):
        return [a - accuracy["random", seed, f] for (s, seed, f), a in accuracy.items()
                if (s, f) == (strategy, fraction) and ("random", seed, f) in accuracy]

    def over_pixels(strategy, fraction):
        return [r["accuracy"] - r["pixel_logreg_accuracy"] for r in rows
                if (r["strategy"], r["labeled_fraction"]) == (strategy, fraction)
                and _measured([r], "pixel_logreg_accuracy")]

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
    if _measured(rows, "pixel_logreg_accuracy"):
        tables.append(_markdown(["minus logistic regression on the same pixels", *columns],
                                [[s, *(_stats(over_pixels(s, f), 3, sign=True) for f in fractions)]
                                 for s in strategies]))
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
