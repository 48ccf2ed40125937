"""report.html as a browser lays it out (issue 17.6): headless Chromium renders the H200 run's report at 1400 px and
at a phone's width; a script injected into a copy writes element positions into the DOM, which --dump-dom returns.

Skipped when chromium is not installed, unless VLLMGRID_REQUIRE_CHROMIUM=1 (.ci/run sets it once it installed
Debian's chromium), where its absence fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import copy_run

from pytest_vllmgrid.report import write_reports

H200_RUN = Path(__file__).parent / "data" / "h200_run"
WIDE, PHONE = (1400, 900), (390, 844)

# Writes the layout figures into <pre id="layout"> once the page has loaded.
MEASURE = """<script>
window.addEventListener('load', function () {
  function box(el) { if (!el) return null; var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, left: r.left, width: r.width, height: r.height}; }
  var wrap = document.getElementById('ranking'), cell = wrap.querySelector('td.sticky');
  var out = {viewport: window.innerWidth, height: window.innerHeight,
    scrollWidth: document.documentElement.scrollWidth, recommendation: box(document.getElementById('recommendation')),
    ranking: box(wrap), rankingTable: box(wrap.querySelector('table')),
    firstPlot: box(document.querySelector('figure img')),
    anomalyLines: document.querySelectorAll('#anomalies > li').length,
    navTargets: Array.prototype.map.call(document.querySelectorAll('p.nav a'), function (a) {
      var el = document.querySelector(a.getAttribute('href')); return el ? el.getBoundingClientRect().top + window.scrollY : -1; })};
  wrap.scrollLeft = 300;
  out.scrolled = wrap.scrollLeft;
  out.stickyLeft = cell.getBoundingClientRect().left - wrap.getBoundingClientRect().left;
  wrap.scrollLeft = 0;
  var pre = document.createElement('pre'); pre.id = 'layout'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
# Chromium's headless window is at least 500 px wide: a phone's width is laid out in an iframe of that width.
FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="{src}" style="border:0;width:{w}px;height:{h}px"></iframe>
<script>document.getElementById('f').addEventListener('load', function () {{
  var pre = document.createElement('pre'); pre.id = 'layout';
  pre.textContent = this.contentDocument.getElementById('layout').textContent; document.body.appendChild(pre);
}});</script></body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (apt-get install -y chromium) to check report.html's layout"
        if os.environ.get("VLLMGRID_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"VLLMGRID_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The H200 run's report.html, with the measuring script, and its report.json."""
    root = tmp_path_factory.mktemp("layout")
    store = copy_run(H200_RUN, root / "h200")
    paths = write_reports(store)
    page = root / "measured.html"
    page.write_text(paths["html"].read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
                    encoding="utf-8")
    return page, json.loads(paths["json"].read_text())


def run_chromium(chromium: str, size: tuple[int, int], *args: str) -> str:
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--allow-file-access-from-files", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def layout(chromium: str, page: Path, size: tuple[int, int]) -> dict:
    """The figures MEASURE wrote, with the page laid out `size[0]` px wide."""
    target = page
    if size[0] < 500:
        target = page.with_name(f"frame{size[0]}.html")
        target.write_text(FRAME.format(src=page.name, w=size[0], h=size[1]), encoding="utf-8")
    dom = run_chromium(chromium, (max(size[0], 500), size[1]), "--dump-dom", target.as_uri())
    found = re.search(r'<pre id="layout">([^<]*)</pre>', dom)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    return struct.unpack(">II", data[16:24])


def test_at_1400_px_recommendation_ranking_and_plots_come_first_and_nothing_scrolls_sideways(
        chromium: str, report_page: tuple[Path, dict]) -> None:
    page, _ = report_page
    box = layout(chromium, page, WIDE)
    assert box["viewport"] == 1400
    assert box["scrollWidth"] <= 1400 and box["rankingTable"]["width"] <= box["ranking"]["width"] <= 1400
    assert box["recommendation"]["top"] < box["ranking"]["top"] < box["firstPlot"]["top"]
    assert box["firstPlot"]["top"] < 1.5 * box["height"]
    assert len(box["navTargets"]) == 4 and box["firstPlot"]["top"] < min(box["navTargets"])  # links below the plots


def test_at_a_phone_width_the_page_fits_and_the_config_column_stays_while_the_table_scrolls(
        chromium: str, report_page: tuple[Path, dict]) -> None:
    page, _ = report_page
    box = layout(chromium, page, PHONE)
    assert box["viewport"] == PHONE[0] and box["scrollWidth"] <= PHONE[0]
    assert box["ranking"]["width"] <= PHONE[0] < box["rankingTable"]["width"]  # the table scrolls in its box
    assert box["scrolled"] == 300 and abs(box["stickyLeft"]) <= 1  # the config column did not move away


def test_anomalies_are_one_line_per_kind_and_config(chromium: str, report_page: tuple[Path, dict]) -> None:
    page, report = report_page
    box = layout(chromium, page, WIDE)
    warnings = sum(len(row["warnings"]) for row in report["configs"])
    groups = {(g["kind"], g["config"]) for g in report["anomalies"]}
    assert box["anomalyLines"] == len(report["anomalies"]) == len(groups) < warnings
    assert sum(g["count"] for g in report["anomalies"]) == warnings


def test_screenshots_are_pngs_of_the_requested_width(chromium: str, report_page: tuple[Path, dict],
                                                     tmp_path: Path) -> None:
    page, _ = report_page
    for width, height in (WIDE, PHONE):
        shot = tmp_path / f"report-{width}.png"
        run_chromium(chromium, (width, height), f"--screenshot={shot}", page.as_uri())
        assert png_size(shot) == (width, height)
