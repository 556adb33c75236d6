"""A real round's report.html in a real browser: Debian's headless Chromium renders it, a screenshot is taken,
and the rendered DOM is checked against the round's files."""
import io
import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import Page, round_config
from vaal_dist.pool.default import build_default_pool
from vaal_dist.report.pages import SHEET_LIMIT
from vaal_dist.round import run_round
from vaal_dist.round_files import REPORT

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y "
                                                          "chromium; the README's test command installs it)")]


def chromium(tmp_path, *args: str) -> bytes:
    # nothing leaves the machine: no background requests or component updates, every http(s) request sent to
    # a closed port (file:// pages load without a proxy)
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--disable-background-networking", "--disable-component-update", "--no-first-run",
                             "--proxy-server=127.0.0.1:9", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                             *args],
                            capture_output=True, timeout=120, check=True)
    return result.stdout


def test_a_rounds_report_renders_its_selection_and_its_record(ray_local, tmp_path):
    pool, labeled = str(tmp_path / "pool"), str(tmp_path / "labeled.parquet")
    build_default_pool(pool, labeled, size=32)                  # the embedded 5,000 MNIST digits, 500 labeled
    budget = 600                                                # more than the sheet shows: the rest is counted
    result = run_round(round_config(pool, labeled, tmp_path / "round", budget=budget, strategy="random"))
    report = tmp_path / "round" / REPORT
    assert result.report == str(report)

    dom = Page(chromium(tmp_path, "--dump-dom", report.as_uri()).decode())
    thumbs = dom.having(**{"class": "thumb"})
    assert len(thumbs) == min(budget, SHEET_LIMIT) == 500
    selection = pq.read_table(tmp_path / "round" / "selection.parquet").to_pydict()
    assert [a["alt"] for t, a in dom.elements if t == "img"] == selection["id"][:500]      # rank order
    assert dom.having(id="more")[0][1]["data-count"] == str(budget - 500)
    record = json.loads((tmp_path / "round" / "run.json").read_text())
    assert float(dom.having(id="per-100")[0][1]["data-value"]) == record["per_100_query_seconds"]
    assert float(dom.having(id="cut-off")[0][1]["data-value"]) == selection["score"][-1]
    assert not dom.having(id="no-distribution")

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri())
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10      # drawn: not one blank colour
