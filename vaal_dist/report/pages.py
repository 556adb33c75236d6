"""A round's ``report.html`` and an experiment's ``experiment.html``: what ran, what it picked, what it cost.

The round page shows run.json's facts, the selected images in rank order (the first ``SHEET_LIMIT`` as
thumbnails read from the pool by id) and the distribution of the pool's scores with the cut-off marked, from
the sample scoring kept (``scoring.topk.RunningSample``), written beside it as ``scores-sample.parquet``.
Strategies that choose from embeddings (Core-set, BADGE, TypiClust, Cluster-Margin) stream no per-image
scores, and their page says so instead.

Both pages are written atomically (``pool.storage.write_atomic``): a reader sees a whole page or none.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaal_dist.experiment_report import summarize
from vaal_dist.pool.io import PoolMeta
from vaal_dist.pool.shards import write_parquet
from vaal_dist.pool.storage import exists, join, read_json, resolve, retrying, write_atomic
from vaal_dist.redaction import redact
from vaal_dist.report.html import Fact, Series, Thumb, contact_sheet, esc, facts, histogram_svg, line_chart_svg, \
    page, table
from vaal_dist.report.thumbnails import data_urls
from vaal_dist.round_files import RECORD, REPORT, SCORES_SAMPLE, SELECTION, read_selection
from vaal_dist.scoring.topk import ScoreSample

EXPERIMENT_REPORT = "experiment.html"
SHEET_LIMIT = 500           # thumbnails on a page; the rest are counted

log = logging.getLogger(__name__)


def write_round_report(out: str, pool: str, meta: PoolMeta, record: dict, ids: np.ndarray, scores: np.ndarray,
                       sample: ScoreSample | None, limit: int = SHEET_LIMIT) -> str:
    """Write ``scores-sample.parquet`` (when there is a sample) and ``report.html`` under ``out``; returns
    the report's URI. ``ids``/``scores``: the selection, best first; ``pool``: the unredacted pool URI."""
    start = time.perf_counter()
    if sample is not None:
        write_parquet(join(out, SCORES_SAMPLE), pa.table(
            {"id": pa.array(sample.ids, pa.string()), "score": pa.array(sample.scores, pa.float64())},
            metadata={"limit": str(sample.limit)}))
    shown = [str(i) for i in ids[:limit]]
    urls = data_urls(pool, meta, shown)
    thumbs = [_thumb(rank, float(score), i, urls.get(i, LookupError("not in the pool")))
              for rank, (i, score) in enumerate(zip(shown, scores), start=1)]
    uri = join(out, REPORT)
    write_atomic(uri, round_page(record, thumbs, np.asarray(scores, np.float64), sample).encode())
    log.info("wrote %s in %.1f s", redact(uri), time.perf_counter() - start)
    return uri


def write_missing_round_report(out: str, pool: str, meta: PoolMeta) -> str | None:
    """The report of a complete round that has none, from its files; None when it has one."""
    uri = join(out, REPORT)
    if exists(uri):
        return None
    selection = read_selection(out)
    sample_uri = join(out, SCORES_SAMPLE)
    sample = None
    if exists(sample_uri):
        table = _read_table(sample_uri)
        sample = ScoreSample(np.asarray(table.column("id").to_pylist(), str), table.column("score").to_numpy(),
                             int(table.schema.metadata[b"limit"]))
    return write_round_report(out, pool, meta, read_json(join(out, RECORD)),
                              np.asarray(selection.column("id").to_pylist(), str),
                              selection.column("score").to_numpy(), sample)


def _read_table(uri: str) -> pa.Table:
    fs, path = resolve(uri)
    return retrying(f"cannot read {uri!r}", lambda: pq.read_table(path, filesystem=fs))


def _thumb(rank: int, score: float, image_id: str, url: str | Exception) -> Thumb:
    if isinstance(url, Exception):
        return Thumb(rank, score, image_id, None, f"{type(url).__name__}: {url}")
    return Thumb(rank, score, image_id, url)


def round_page(record: dict, thumbs: list[Thumb], selected_scores: np.ndarray, sample: ScoreSample | None) -> str:
    """The page of a round from its run.json ``record``, the first thumbnails, every selected score (best
    first) and the score sample."""
    cfg, pool = record["config"], record["pool"]
    budget = record["budget"]
    title = f"vaal_dist round: {cfg['strategy']}, {budget:,} of {pool['unlabeled']:,} unlabeled images selected"
    return page(title, [
        "<h2>Run</h2>", facts(_round_facts(record)),
        "<h2>Score distribution</h2>", _distribution(record, selected_scores, sample),
        f"<h2>Selected images, best first ({min(len(thumbs), budget):,} of {budget:,} shown)</h2>",
        contact_sheet(thumbs, budget),
    ])


def _round_facts(record: dict) -> list[Fact]:
    cfg, pool, timings = record["config"], record["pool"], record["timings"]
    per_100 = record["per_100_query_seconds"]
    scoring = record.get("scoring", {})
    throughput = scoring.get("throughput_images_per_second")
    rows = [
        Fact("strategy", cfg["strategy"], element_id="strategy"),
        Fact("preset, seed", f"{cfg.get('preset')}, seed {cfg.get('seed')}"),
        Fact("pool", f"{pool['uri']} ({pool['encoding']})"),
        Fact("images", f"{pool['images']:,}: {pool['labeled']:,} labeled, {pool['unlabeled']:,} unlabeled, "
                       f"{pool['held_out']:,} held out"),
        Fact("budget", f"{record['budget']:,}", record["budget"], "budget"),
        Fact("query time per 100 selected", f"{per_100:.2f} s", per_100, "per-100"),
        Fact("train", f"{timings['train_seconds']:.1f} s", timings["train_seconds"], "train-seconds"),
        Fact("score", f"{timings['score_seconds']:.1f} s", timings["score_seconds"], "score-seconds"),
        Fact("merge", f"{timings['merge_seconds']:.2f} s", timings["merge_seconds"], "merge-seconds"),
        Fact("total", f"{timings['total_seconds']:.1f} s", timings["total_seconds"], "total-seconds"),
        Fact("scoring", f"{scoring.get('candidates_folded', 0):,} candidate rows folded"
                        + (f", {throughput:,.0f} images/s" if throughput else "")),
    ]
    train = record.get("train", {})
    models = {"model": train} if "last_epoch" in train else train    # a record of one model's facts
    for model, trained in sorted(models.items()):
        rows.append(Fact(f"trained: {model}", _last_epoch(trained)))
    rows += [Fact("cluster", ", ".join(f"{v:g} {k}" for k, v in sorted(record.get("cluster", {}).items()))),
             Fact("versions", ", ".join(f"{k} {v}" for k, v in sorted(record.get("versions", {}).items()))),
             Fact("inputs fingerprint", record.get("inputs_fingerprint", "")[:16])]
    return rows


def _last_epoch(trained: dict) -> str:
    last = trained.get("last_epoch") or {}
    numbers = [f"{k} {v:.4g}" for k, v in sorted(last.items()) if isinstance(v, (int, float)) and k != "epoch"]
    return f"epoch {last.get('epoch', '?')}: " + ", ".join(numbers) if last else "trained"


def _distribution(record: dict, selected_scores: np.ndarray, sample: ScoreSample | None) -> str:
    if sample is None or len(sample.ids) == 0 or len(selected_scores) == 0:
        return f'<p id="no-distribution" class="note">{esc(_why_no_distribution(record["config"]["strategy"]))}</p>'

    cut_off = float(selected_scores[-1])
    above = int((sample.scores >= cut_off).sum())
    n = len(sample.scores)
    what = (f"all {n:,} scores" if n >= record["pool"]["unlabeled"] else
            f"a uniform sample of {n:,} of the scored images' scores (chosen by a hash of the id; {SCORES_SAMPLE})")
    return (histogram_svg(sample.scores, cut_off) +
            f'<p class="note">{esc(what)}. Cut-off: {cut_off:.6g}, the score of rank {len(selected_scores):,} (the last selected); '
            f"bars at or above it in red. {above:,} of these {n:,} ({above / n:.1%}) are at or above it; the round "
            f"selected {len(selected_scores):,} of {record['pool']['unlabeled']:,} unlabeled images "
            f"({len(selected_scores) / max(record['pool']['unlabeled'], 1):.1%}).</p>")


def _why_no_distribution(strategy: str) -> str:
    from vaal_dist.strategies import STRATEGIES
    from vaal_dist.strategies.base import TopKStrategy

    if strategy in STRATEGIES and not issubclass(STRATEGIES[strategy], TopKStrategy):
        return (f"No score distribution: {strategy} chooses its images together (from embeddings or clusters), "
                f"not by a score streamed for each image; the scores in {SELECTION} are its own measure of "
                "each pick.")
    return f"No score distribution: this round kept no sample of the scores ({SCORES_SAMPLE} is missing)."


def write_experiment_report(out: str, curves: pa.Table) -> str:
    """``experiment.html`` under ``out`` from the experiment's curves table; returns its URI."""
    uri = join(out, EXPERIMENT_REPORT)
    write_atomic(uri, experiment_page(curves).encode())
    return uri


def experiment_page(curves: pa.Table) -> str:
    """Learning curves (mean accuracy over seeds per strategy), the AULC summary, and links to every
    selecting round's report."""
    rows = curves.to_pylist()
    summary = sorted(summarize(curves), key=lambda s: -s["aulc_mean"])
    series = []
    for s in summary:
        fractions = sorted({r["labeled_fraction"] for r in rows if r["strategy"] == s["strategy"]})
        accuracy = [np.mean([r["accuracy"] for r in rows if (r["strategy"], r["labeled_fraction"]) == (s["strategy"], f)])
                    for f in fractions]
        series.append(Series(s["strategy"], [100 * f for f in fractions], accuracy))
    return page("vaal_dist experiment: learning curves", [
        "<h2>Learning curves</h2>",
        line_chart_svg(series, "labeled, % of the training split", "test accuracy (mean over seeds)"),
        "<h2>Summary (area under the learning curve)</h2>",
        table(["strategy", "seeds", "AULC mean", "AULC std", "minus random (mean)", "minus random (std)",
               "seeds above random"],
              [[s["strategy"], s["seeds"], _number(s["aulc_mean"]), _number(s["aulc_std"]),
                _number(s["minus_random_mean"]), _number(s["minus_random_std"]), s["seeds_above_random"]]
               for s in summary], "summary"),
        "<h2>Rounds</h2>", _round_links(rows),
    ])


def _number(value: float | None) -> float | str:
    return round(float(value), 4) if _measured(value) else "–"


def _measured(value: float | None) -> bool:
    """Not missing (a column an earlier invocation's rows lack) and not NaN (a round that did not select)."""
    return value is not None and not np.isnan(value)


def _round_links(rows: list[dict]) -> str:
    """Per strategy and seed, a link to the report of each round that selected (relative to the page)."""
    items = []
    for strategy, seed in sorted({(r["strategy"], r["seed"]) for r in rows}):
        rounds = sorted(r["round"] for r in rows if (r["strategy"], r["seed"]) == (strategy, seed)
                        and _measured(r.get("query_seconds_per_100")))
        links = " · ".join(f'<a href="{esc(f"runs/{strategy}/seed-{seed}/round-{k}/select/{REPORT}")}">'
                           f'round {esc(k)}</a>' for k in rounds)
        items.append(f"<li>{esc(strategy)}, seed {esc(seed)}: {links or 'no selecting round yet'}</li>")
    return f'<ul id="round-links">{"".join(items)}</ul>'
