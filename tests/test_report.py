"""The score sample scoring keeps (any split of the stream, any actor, the same rows), and the HTML reports
built from hand-made inputs: thumbnails read by id, the count of the rest, escaping, nothing loaded from
elsewhere, the cut-off, the experiment's curves. The page in a real browser: test_report_browser.py."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Page, make_raw_pool, png_bytes
from vaal_dist.pool.io import PoolMeta, read_pool_meta, write_pool
from vaal_dist.pool.shards import write_parquet
from vaal_dist.report.html import Thumb, contact_sheet, histogram_svg
from vaal_dist.report.pages import experiment_page, round_page, write_missing_round_report, write_round_report
from vaal_dist.round import RoundResult
from vaal_dist.round_files import REPORT, SCORES_SAMPLE
from vaal_dist.scoring.ids import sample_priorities, uniform_scores
from vaal_dist.scoring.spec import ScorerSpec
from vaal_dist.scoring.stream import BatchTopK
from vaal_dist.scoring.topk import RunningSample, ScoreSample, top_k
from vaal_dist.strategies.random import RandomScorer


def full_sample(ids, scores, size):
    """The textbook answer: sort every row by (priority descending, id), keep the first ``size``."""
    priorities = sample_priorities(ids)
    order = sorted(range(len(ids)), key=lambda i: (-priorities[i], ids[i]))[:size]
    return [ids[i] for i in order], [scores[i] for i in order]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("size", [1, 37, 500, 3000])
def test_a_sample_kept_by_actors_over_any_split_is_the_full_streams(seed, size):
    rng = np.random.default_rng(seed)
    n = 2000
    ids = np.array([f"{v:06d}" for v in rng.permutation(n)])
    scores = rng.normal(size=n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 40), replace=False))
    actors = [RunningSample(size, fold_at=0) for _ in range(3)]
    driver, sent = RunningSample(size, fold_at=int(rng.integers(1, 300))), 0
    for b, (block_ids, block_scores) in enumerate(zip(np.split(ids, cuts), np.split(scores, cuts))):
        priorities = sample_priorities(block_ids)
        keep = actors[b % 3].add(block_ids, priorities, block_scores)
        driver.add(block_ids[keep], priorities[keep], block_scores[keep])
        sent += int(keep.sum())
        if b == 1:   # a restarted actor's batch, delivered again: kept once
            driver.add(block_ids[keep], priorities[keep], block_scores[keep])
    got = driver.result()
    want_ids, want_scores = full_sample(list(ids), list(scores), size)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_array_equal(got.scores, want_scores)


def test_an_actor_sends_few_rows_once_its_sample_is_full():
    actor, sent = RunningSample(50, fold_at=0), 0
    ids = np.array([f"id-{i}" for i in range(20_000)])
    for batch in np.split(ids, 400):
        sent += int(actor.add(batch, sample_priorities(batch), np.zeros(len(batch))).sum())
    # A row is sent when it beats the threshold of the last fold (every 50 rows sent): about size x (1 +
    # ln(rows / size)) = 50 x 7 = 350 rows plus up to a fold's lag, for uniform priorities (fixed ids here, so
    # one deterministic count); 2,000 is far above that and 10 times below sending everything.
    assert sent < 2_000


def test_sample_priorities_are_uniform_and_not_the_random_strategys_scores():
    ids = np.array([f"img-{i}" for i in range(20_000)])
    p = sample_priorities(ids)
    np.testing.assert_array_equal(p, sample_priorities(ids[::-1])[::-1])     # the id alone decides
    assert 0 <= p.min() and p.max() < 1
    # 20,000 uniform draws: the mean's std is 0.29 / sqrt(20,000) = 0.002; 0.01 is 5 std.
    assert abs(p.mean() - 0.5) < 0.01
    for seed in (0, 1, 2**32 - 1):
        # The random strategy's top 200 and the sample's top 200 of 20,000 share 2 ids when independent
        # (200 x 200 / 20,000); all 200 if one were the other.
        top_random = set(top_k(ids, uniform_scores(ids, seed), 200)[0])
        top_sample = set(top_k(ids, p, 200)[0])
        assert len(top_random & top_sample) < 20


def test_batch_top_k_sends_its_top_rows_and_its_samples_entrants():
    actor = BatchTopK(ScorerSpec(RandomScorer, {"seed": 5}), k=4, sample_size=30)
    ids = np.array([f"x{i:04d}" for i in range(600)], dtype=object)
    best, sample = [], RunningSample(30)
    for batch in np.split(ids, 12):
        rows = actor({"id": batch})
        assert rows["top"].sum() == 4 and (rows["error"] == "").all()
        best += list(zip(rows["id"][rows["top"]], rows["score"][rows["top"]]))
        sample.add(rows["id"][rows["sampled"]], rows["priority"][rows["sampled"]], rows["score"][rows["sampled"]])
    scores = RandomScorer(5)({"id": ids})
    want_ids, want_scores = full_sample(list(ids.astype(str)), list(scores), 30)
    got = sample.result()
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_array_equal(got.scores, want_scores)
    top_ids, _ = top_k(*zip(*best), 4)
    np.testing.assert_array_equal(top_ids, top_k(ids, scores, 4)[0])


def record(strategy="random", budget=10, unlabeled=90, per_100=1.2345678):
    return {"config": {"strategy": strategy, "preset": "cpu", "seed": 0}, "budget": budget,
            "pool": {"uri": "pool", "encoding": "raw", "images": 100, "labeled": 10, "unlabeled": unlabeled,
                     "held_out": 0},
            "timings": {"train_seconds": 1.0, "score_seconds": 2.0, "merge_seconds": 0.01, "total_seconds": 3.5},
            "scoring": {"candidates_folded": 40, "throughput_images_per_second": 45.0},
            "train": {}, "per_100_query_seconds": per_100, "versions": {"vaal_dist": "0"}, "cluster": {"CPU": 2.0}}


def test_a_round_report_shows_the_first_thumbnails_read_by_id_and_counts_the_rest(tmp_path):
    ids = make_raw_pool(tmp_path / "pool", 40, size=8, shards=3)
    chosen = ids[[33, 2, 17, 25, 8, 39, 0, 11, 30, 21]]           # from every shard, not in pool order
    scores = np.linspace(0.9, 0.5, len(chosen))
    sample = ScoreSample(ids[:30], np.linspace(0, 1, 30), 10_000)
    uri = write_round_report(str(tmp_path / "out"), str(tmp_path / "pool"), read_pool_meta(str(tmp_path / "pool")),
                             record(), chosen, scores, sample, limit=4)
    text = (tmp_path / "out" / REPORT).read_text()
    page = Page(text)
    figures = page.having(**{"class": "thumb"})
    assert uri.endswith(REPORT) and [a["data-rank"] for _, a in figures] == ["1", "2", "3", "4"]
    images = [a for t, a in page.elements if t == "img"]
    assert [a["alt"] for a in images] == list(chosen[:4])            # rank order, each its own image
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert page.having(id="more")[0][1]["data-count"] == "6" and "6 more selected images" in text
    assert float(page.having(id="per-100")[0][1]["data-value"]) == 1.2345678
    assert float(page.having(id="cut-off")[0][1]["data-value"]) == 0.5
    written = pq.read_table(tmp_path / "out" / SCORES_SAMPLE)
    assert written.column("id").to_pylist() == list(ids[:30]) and written.schema.metadata[b"limit"] == b"10000"


def test_encoded_images_become_thumbnails_and_an_undecodable_one_says_why(tmp_path):
    rng = np.random.default_rng(0)
    images = {"big.png": png_bytes(rng, 200), "small.png": png_bytes(rng, 16), "text": b"not an image"}
    write_pool(str(tmp_path / "pool"), [pa.table({"id": list(images), "image": list(images.values())})], PoolMeta())
    write_round_report(str(tmp_path / "out"), str(tmp_path / "pool"), PoolMeta(), record(budget=4),
                       np.array(["text", "big.png", "small.png", "gone"]), np.array([4.0, 3.0, 2.0, 1.0]), None)
    page = Page((tmp_path / "out" / REPORT).read_text())
    assert {a["alt"]: a["src"][:22] for t, a in page.elements if t == "img"} == {
        "big.png": "data:image/jpeg;base64", "small.png": "data:image/png;base64,"}   # 96 px JPEG; 16 px PNG
    text = (tmp_path / "out" / REPORT).read_text()
    assert "cannot show: RefusedImage: not a JPEG or PNG image" in text and "not in the pool" in text
    assert len(page.having(**{"class": "thumb"})) == 4 and not (tmp_path / "out" / SCORES_SAMPLE).exists()


def test_ids_are_escaped_and_nothing_is_loaded_from_elsewhere():
    hostile = 'a<b>&"c\'<script>alert(1)</script>'
    thumbs = [Thumb(1, 0.5, hostile, "data:image/png;base64,AAAA"), Thumb(2, 0.25, hostile + "2", None, "<bad>")]
    rec = record(strategy="random", budget=2)
    rec["pool"]["uri"] = 'https://host/<pool>&"'
    text = round_page(rec, thumbs, np.array([0.5, 0.25]), ScoreSample(np.array(["x", "y"]), np.array([0.1, 0.6]), 2))
    page = Page(text)
    assert "<script" not in text and hostile not in text
    assert page.captions == [f"#1 · 0.5{hostile}", f"#2 · 0.25{hostile}2"]
    assert [a["alt"] for t, a in page.elements if t == "img"] == [hostile]
    assert_self_contained(text)


def assert_self_contained(text: str) -> None:
    """No element loads anything: every src is a data: URL, no stylesheet, script or CSS url(), and every link
    is relative."""
    page = Page(text)
    assert all(a["src"].startswith("data:") for _, a in page.elements if "src" in a)
    assert not [t for t, _ in page.elements if t in ("script", "link", "iframe", "object", "embed")]
    assert "url(" not in text and "@import" not in text
    assert all("://" not in a["href"] and not a["href"].startswith("//") for _, a in page.elements if "href" in a)
    assert not re.search(r"(src|href|xmlns)=\"(https?:)?//", text)


def test_the_histogram_marks_the_cut_off_and_colours_the_selected_side():
    scores = np.arange(100) / 100                     # 0.00 ... 0.99: 30 at or above 0.7
    svg = histogram_svg(scores, cut_off=0.7, bins=10)
    bars = [(fill, int(count)) for fill, count in re.findall(r'<rect [^>]*fill="(#[0-9a-f]+)"><title>[^<]*: (\d+)<', svg)]
    assert [fill for fill, _ in bars] == ["#1f77b4"] * 8 + ["#d62728"] * 3     # ceil(0.7 / 0.099), ceil(0.29 / 0.099)
    assert sum(c for f, c in bars if f == "#d62728") == 30 and sum(c for _, c in bars) == 100
    assert svg.startswith('<svg width="640" height="220"')
    xs = [float(x) for x in re.findall(r'<rect x="([0-9.]+)"', svg)]
    assert xs == sorted(xs) and 50 <= xs[0] and xs[-1] < 620                 # left to right inside the plot
    assert 'id="cut-off"' in svg and "cut-off 0.7" in svg
    assert 'id="cut-off"' in histogram_svg(np.full(5, 2.0), cut_off=2.0)    # one value: a range around it


def test_a_strategy_without_streamed_scores_says_so():
    text = round_page(record(strategy="coreset", budget=1), [Thumb(1, 3.0, "a", None, "x")], np.array([3.0]), None)
    assert Page(text).having(id="no-distribution") and "coreset chooses its images together" in text
    assert 'id="cut-off"' not in text


@pytest.mark.parametrize("unlabeled", [99, 100, 101])
def test_the_distribution_says_all_scores_only_when_the_sample_holds_every_unlabeled_image(unlabeled):
    sample = ScoreSample(np.array([f"i{k}" for k in range(100)]), np.linspace(0, 1, 100), limit=100)
    text = round_page(record(budget=1, unlabeled=unlabeled), [Thumb(1, 1.0, "i99", None, "x")], np.array([1.0]),
                      sample)
    assert ("all 100 scores" in text) == (unlabeled <= 100)
    assert ("a uniform sample of 100" in text) == (unlabeled > 100)


def test_the_count_of_the_rest_is_left_out_when_every_image_is_shown():
    assert 'id="more"' not in contact_sheet([Thumb(1, 1.0, "a", None, "x")], 1)


def test_a_complete_round_without_a_report_gets_one_from_its_files(tmp_path):
    ids = make_raw_pool(tmp_path / "pool", 20, size=8, shards=2)
    out = tmp_path / "round"
    write_parquet(str(out / "selection.parquet"), pa.table({"id": ids[:3], "score": [3.0, 2.0, 1.0],
                                                           "rank": [1, 2, 3]}))
    (out / "run.json").write_text(json.dumps(record(strategy="vaal", budget=3)))
    meta = read_pool_meta(str(tmp_path / "pool"))
    assert write_missing_round_report(str(out), str(tmp_path / "pool"), meta) == str(out / REPORT)
    text = (out / REPORT).read_text()
    assert len(Page(text).having(**{"class": "thumb"})) == 3 and "kept no sample" in text
    assert write_missing_round_report(str(out), str(tmp_path / "pool"), meta) is None     # once


def test_a_round_result_names_its_report_beside_the_selection():
    assert RoundResult("s3://b/r/selection.parquet?region=x", {}).report == "s3://b/r/report.html?region=x"


def test_the_experiment_page_draws_each_strategys_mean_curve_and_links_its_rounds():
    rows = [{"strategy": s, "seed": seed, "round": r, "labeled_fraction": f, "accuracy": a + 0.01 * seed,
             "query_seconds_per_100": 1.0 if r < 2 else float("nan")}
            for s, base in (("random", 0.5), ("vaal<&>", 0.6)) for seed in (0, 1)
            for r, (f, a) in enumerate(zip((0.1, 0.15, 0.2), (base, base + 0.1, base + 0.2)))]
    rows.append({"strategy": "entropy", "seed": 0, "round": 0, "labeled_fraction": 0.1, "accuracy": 0.4})  # an
    text = experiment_page(pa.Table.from_pylist(rows))         # earlier invocation's row: no query time column
    page = Page(text)
    series = page.having(**{"class": "series"})
    assert [a["data-name"] for _, a in series] == ["vaal<&>", "random", "entropy"]     # best AULC first
    assert len([t for t, _ in page.elements if t == "circle"]) == 3 + 3 + 1
    assert text.count("<tr>") == 1 + 3                                      # header + one row per strategy
    links = [a["href"] for t, a in page.elements if t == "a"]
    assert links == [f"runs/{s}/seed-{seed}/round-{r}/select/report.html"
                     for s in ("random", "vaal<&>") for seed in (0, 1) for r in (0, 1)]
    assert "entropy, seed 0: no selecting round yet" in text
    assert_self_contained(text)


def test_the_experiment_page_escapes_whatever_curves_parquet_holds(tmp_path):
    """A curves.parquet written by someone else: a strategy name, a seed and a round that are markup. The page
    shows them as text; no element of theirs appears (the tags the page itself draws are all there is)."""
    hostile = {"strategy": "<script>alert(1)</script>", "seed": "<script>alert(2)</script>",
               "round": '<img src=x onerror="alert(3)">'}
    rows = [{**hostile, "labeled_fraction": 0.1, "accuracy": 0.5, "query_seconds_per_100": 1.0}]
    write_parquet(str(tmp_path / "curves.parquet"), pa.Table.from_pylist(rows))
    text = experiment_page(pq.read_table(tmp_path / "curves.parquet"))
    page = Page(text)
    assert "<script" not in text and "<img" not in text
    assert {t for t, _ in page.elements} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "svg",
                                             "line", "text", "g", "polyline", "circle", "rect", "table", "thead",
                                             "tbody", "tr", "th", "td", "ul", "li", "a"}
    assert ("&lt;script&gt;alert(1)&lt;/script&gt;, seed &lt;script&gt;alert(2)&lt;/script&gt;: <a href=" in text
            and "round &lt;img src=x onerror=&quot;alert(3)&quot;&gt;</a>" in text)
