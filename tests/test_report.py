"""HTML report and plots: built from synthetic results stores (no vLLM), self-contained, one plot per data kind."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import pytest

from conftest import REPO, fake_grid
from test_gate import latencies, placed, store_run, throughput_measurement, ttft_measurement
from pytest_vllmgrid.measurement import LOWER, Measurement
from pytest_vllmgrid.results import ResultsStore, TestResult
from pytest_vllmgrid.report import Report, build_report, terminal_table, write_reports
from pytest_vllmgrid.report.html import markdown_fragment_html, render_store_html
from pytest_vllmgrid.report.plots import (kv_cache_png, latency_distributions_png, measurement_png, merged_telemetry,
                                          report_plots, telemetry_png, throughput_png, ttft_png, turn_ttft_png)
from pytest_vllmgrid.telemetry import DeviceInfo, GpuReading, Sample, TelemetrySeries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINKS = re.compile(r"""\b(src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def external_links(text: str, attributes: tuple[str, ...] = ("src", "href")) -> list[str]:
    """src/href values that would load or lead outside the file (anything but data: URIs and anchors)."""
    return [value for attr, value in LINKS.findall(text)
            if attr.lower() in attributes and value and not value.startswith(("data:", "#"))]


def kv_measurement(miss_ms: float, hit_ms: float, seed: int) -> Measurement:
    """A stored kv_cache-like measurement."""
    m = Measurement(method="synthetic")
    m.add_sample("ttft_miss_ms", latencies(miss_ms, seed, 12), "ms", LOWER, headline=True)
    m.add_sample("ttft_hit_ms", latencies(hit_ms, seed + 1, 12), "ms", LOWER, headline=True)
    return m


def conversation_measurement(turns: int, seed: int) -> Measurement:
    """A long_conversation-like measurement: per-turn TTFT of two conversations in info."""
    m = Measurement(method="synthetic")
    series = [[20.0 + 3 * t + i + seed for t in range(turns)] for i in range(2)]
    series[1][-1] = None  # a failed last turn
    m.add_sample("ttft_ms", [v for row in series for v in row if v is not None], "ms", LOWER)
    m.info["turn_ttft_ms"] = series
    return m


def gpu_series(started_at: float, util: list[float]) -> dict:
    """A recorded telemetry series as bench.finish() stores it."""
    device = DeviceInfo(0, "GPU-00000000", "Test GPU", 80_000.0, 700.0)
    samples = [Sample(float(t), (GpuReading(u, 1000.0 + 10 * t, 80_000.0, 50.0, 300.0, 700.0, 1500),))
               for t, u in enumerate(util)]
    return TelemetrySeries(available=True, interval_s=1.0, started_at=started_at, devices=[device],
                           samples=samples).to_dict()


@pytest.fixture
def full_run(tmp_path: Path):
    """Two configs with every kind of data the plots use."""
    def tests(scale: float, seed: int) -> dict:
        ttft = ttft_measurement(latencies(80 * scale, seed))
        ttft.telemetry_series = gpu_series(1_700_000_000.0 + seed, [50, 90, 70])
        return {"ttft[short]": ttft, "ttft[long]": ttft_measurement(latencies(300 * scale, seed + 1)),
                "kv_cache": kv_measurement(600 * scale, 60 * scale, seed + 2),
                "throughput[1]": throughput_measurement(latencies(500 * scale, seed + 3), concurrency=1),
                "throughput[4]": throughput_measurement(latencies(800 * scale, seed + 4), concurrency=4),
                "long_conversation": conversation_measurement(6, seed + 5)}
    return store_run(tmp_path / "run", {"baseline": tests(1.0, 10), "prefix_caching": tests(0.8, 20)},
                     params={"prefix_caching": {"enable_prefix_caching": True}})


def test_report_html_is_written_beside_the_markdown(full_run) -> None:
    paths = write_reports(full_run)
    assert paths["html"] == full_run.root / "report.html" and paths["html"].is_file()
    assert paths["markdown"].is_file() and paths["json"].is_file()


def test_report_json_is_the_reports_dump_and_reads_back_as_one(full_run) -> None:
    report = build_report(full_run)
    data = json.loads(write_reports(full_run)["json"].read_text())
    assert data == report.model_dump(mode="json") and Report.model_validate(data) == report
    assert "extensions" not in data  # only when a report hook returned something
    baseline = next(row for row in data["configs"] if row["name"] == data["baseline"])
    assert not any("vs_baseline_pct" in m or "vs_baseline_ci_pct" in m for m in baseline["metrics"].values())
    other = next(row for row in data["configs"] if row["name"] != data["baseline"])
    assert len(other["metrics"]["ttft[short].ttft_ms"]["vs_baseline_ci_pct"]) == 2


def test_report_html_is_self_contained(full_run) -> None:
    text = write_reports(full_run)["html"].read_text()
    assert external_links(text) == []
    assert "<link" not in text and "<script" not in text and "@import" not in text and "url(" not in text


def test_report_html_embeds_every_plot_as_a_png_data_uri(full_run) -> None:
    text = write_reports(full_run)["html"].read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 6
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    for caption in ("TTFT per config", "KV cache MISS vs HIT", "Throughput vs concurrency", "TTFT per turn",
                    "Latency distributions", "GPU telemetry over time"):
        assert caption in text


def test_report_html_has_the_ranking_recommendation_and_details(full_run) -> None:
    text = write_reports(full_run)["html"].read_text()
    assert "<h2>Ranking</h2>" in text and "<h2>Recommendation</h2>" in text and "Details per config" in text
    assert "prefix_caching" in text and "Δ" in text and "GPU telemetry" in text


def test_report_html_escapes_stored_text(tmp_path: Path) -> None:
    measurement = ttft_measurement(latencies(80, 1))
    measurement.warnings = ["<script>alert(1)</script>"]
    store = store_run(tmp_path / "run", {"baseline": {"ttft[short]": measurement}})
    text = render_store_html(store, build_report(store))
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_report_html_shows_the_regression_gate_from_the_manifest(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"baseline": {"ttft[short]": ttft_measurement(latencies(80, 1))}})
    verdict = {"config": "baseline", "metric": "ttft[short].ttft_ms", "statistic": "p50", "status": "regression",
               "allowed_pct": 10.0, "unit": "ms", "old": 80.0, "new": 104.0, "change_pct": 30.0, "ci_low_pct": 20.0,
               "ci_high_pct": 41.0, "n_old": 30, "n_new": 30, "significant": True}
    store.update_manifest(regression_gate={"compared_with": "/runs/old", "verdicts": [verdict], "failed": 1})
    text = render_store_html(store, build_report(store))
    assert "Regression gate" in text and "/runs/old" in text and "REGRESSION" in text and "+30.0%" in text


def test_plots_are_pngs(full_run) -> None:
    report, results = build_report(full_run), full_run.all_configs()
    for png in (ttft_png(report), kv_cache_png(report), throughput_png(report), latency_distributions_png(report),
                turn_ttft_png(results), telemetry_png(results)):
        assert png is not None and png.startswith(PNG_SIGNATURE)


def test_a_plot_whose_data_is_absent_is_skipped(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"baseline": {"ttft[short]": ttft_measurement(latencies(80, 1))}})
    report, results = build_report(store), store.all_configs()
    assert kv_cache_png(report) is None and throughput_png(report) is None
    assert turn_ttft_png(results) is None and telemetry_png(results) is None
    assert [caption for caption, _ in report_plots(report, results)] == [
        "TTFT per config, p50 with 95% bootstrap CI", "Latency distributions (raw samples)"]


def test_an_empty_store_yields_no_plots(tmp_path: Path) -> None:
    store = store_run(tmp_path / "run", {"baseline": {}})
    assert report_plots(build_report(store), store.all_configs()) == []


def test_telemetry_of_a_configs_benchmarks_is_joined_on_one_clock() -> None:
    tests = [TestResult(measurement=Measurement(method="m", telemetry_series=series)) for series in (
        gpu_series(1000.0, [10, 20]), gpu_series(1010.0, [30, 40, 50]), {"available": False, "reason": "no GPU"})]
    merged = merged_telemetry(tests)
    assert [s.t for s in merged.samples] == [0.0, 1.0, 10.0, 11.0, 12.0]
    assert merged_telemetry(tests[2:]) is None


def test_a_benchmarks_own_plot_covers_its_sample_metrics() -> None:
    png = measurement_png(ttft_measurement(latencies(80, 1)), "baseline / ttft[short]")
    assert png.startswith(PNG_SIGNATURE)
    assert measurement_png(Measurement(method="none"), "nothing") is None


def test_markdown_tables_and_bullets_become_html() -> None:
    text = markdown_fragment_html("## T\n\n| a | b |\n|---|---:|\n| `x` | 1 \\| 2 |\n\n- **warn** <b>")
    assert "<h3>T</h3>" in text and "<th>a</th>" in text and "<td><code>x</code></td>" in text
    assert "<td>1 | 2</td>" in text and "<li><strong>warn</strong> &lt;b&gt;</li>" in text


def test_pytest_html_gets_a_summary_section_and_per_test_extras(pytester, write_grid):
    pytester.makepyfile(benchmarks_ttft=(REPO / "benchmarks" / "test_ttft.py").read_text())
    pytester.makeini("[pytest]\npython_files = benchmarks_*.py\n")
    grid = write_grid(fake_grid([{"name": "baseline"}, {"name": "other", "env": {"FAKE_VLLM_TTFT_MS": "15"}}]))
    result = pytester.runpytest_subprocess("benchmarks_ttft.py", "--grid", str(grid), "--results-dir", "out",
                                           "--html", "ph.html", "--self-contained-html", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    text = (pytester.path / "ph.html").read_text()
    assert 'class="vllmgrid"' in text and "Recommendation" in text and "TTFT per config" in text
    assert text.count("data:image/png;base64,") >= 4 + 2  # one extra per benchmark, plots in the summary
    assert "ttft[short] samples" in text
    assert external_links(text, ("src",)) == []  # pytest-html's own footer links to its PyPI page
    summary = text[text.index('<div class="vllmgrid">'):]
    assert external_links(summary[:summary.index("</div>")]) == []
    assert not (pytester.path / "assets").exists()


def kv_run(tmp_path: Path, hits: dict[str, float], *, invalid: str | None = None, seed: int = 0):
    """Configs with a kv_cache HIT sample around the given medians; `invalid` marks one config's figure."""
    runs = {}
    for i, (name, hit_ms) in enumerate(hits.items()):
        m = kv_measurement(60.0, hit_ms, seed + 10 * i)
        if name == invalid:
            m.metrics["ttft_hit_ms"].validity = "invalid"
            m.metrics["ttft_hit_ms"].validity_reason = "12 of 12 responses arrived in one burst"
        runs[name] = {"kv_cache": m}
    return store_run(tmp_path / "run", runs, baseline=next(iter(hits)))


def test_a_config_whose_primary_figure_is_invalid_is_not_ranked_and_is_named(tmp_path: Path) -> None:
    report = build_report(kv_run(tmp_path, {"base": 60.0, "fast": 10.0, "faster": 5.0}, invalid="faster"))
    ranks = {row.name: row.rank for row in report.configs}
    assert ranks["faster"] is None and ranks["fast"] == 1
    assert [n.name for n in report.left_out] == ["faster"] and "burst" in report.left_out[0].reason
    assert report.recommendation.startswith("Deploy fast") and "Not ranked (figure not valid): faster" in \
        report.recommendation


def test_configs_whose_intervals_overlap_get_no_winner(tmp_path: Path) -> None:
    report = build_report(kv_run(tmp_path, {"base": 60.0, "a": 30.0, "b": 30.5}))
    assert report.optimal.separated_from_runner_up is False
    assert report.recommendation.startswith("No significant difference on kv_cache.ttft_hit_ms between")


def test_a_percentage_changes_in_points_not_in_percent(tmp_path: Path) -> None:
    def conv(pct: float) -> Measurement:
        m = Measurement(method="synthetic")
        m.add_value("degradation_pct", pct, "%", LOWER, headline=True, ci=(pct - 5, pct + 5))
        return m
    store = store_run(tmp_path / "run", {"base": {"long_conversation": conv(2.0)},
                                         "b": {"long_conversation": conv(10.0)}}, baseline="base")
    metric = next(r for r in build_report(store).configs if r.name == "b").metrics["long_conversation.degradation_pct"]
    assert metric.vs_baseline_pct is None and metric.vs_baseline_pts == 8.0
    assert metric.vs_baseline_ci_pts == [-2.0, 18.0]


def judged(store, config: str, acceleration: float, status: str) -> None:
    """Give a stored config a kv_cache.acceleration >= 1.5 verdict (as judge.judge_bound words it)."""
    from pytest_vllmgrid.results import Verdict

    word = {"pass": "ok", "fail": "FAILED"}[status]
    verdict = Verdict(metric="kv_cache.acceleration", config=config, passed=status == "pass", status=status,
                      message=f"kv_cache.acceleration value = {acceleration} x >= 1.5 x required: {word}")
    store.update_config(config, lambda r: r.tests["kv_cache"].thresholds.append(verdict))


def with_goal(store, *goal: str):
    """The run's manifest as the session writes it when the thresholds file has a `goal:`."""
    store.update_manifest(goal=list(goal))
    return store


def recommendation_line(markdown: str) -> str:
    return markdown.split("## Recommendation\n\n", 1)[1].splitlines()[0]


def test_a_recommended_config_that_misses_its_own_criteria_says_so(tmp_path: Path) -> None:
    store = kv_run(tmp_path, {"base": 60.0, "fast": 10.0})
    judged(store, "fast", 1.33, "fail")
    report = build_report(store)
    assert report.optimal.name == "fast" and report.optimal.meets_goal is None  # no goal in this run
    assert report.recommendation.startswith("fast is the best measured on kv_cache.ttft_hit_ms (")
    assert "), but it does NOT meet its own criteria: kv_cache.acceleration value = 1.33 x >= 1.5 x required: " \
        "FAILED." in report.recommendation
    assert "Deploy" not in report.recommendation


def test_the_best_config_missing_the_goal_is_named_with_its_shortfall_in_every_output(tmp_path: Path) -> None:
    store = with_goal(kv_run(tmp_path, {"base": 60.0, "fast": 10.0}), "kv_cache.acceleration")
    judged(store, "fast", 1.33, "fail")
    shortfall = ("), but it does NOT meet the goal: kv_cache.acceleration value = 1.33 x >= 1.5 x required: "
                 "FAILED; no config meets the goal.")
    paths = write_reports(store)
    markdown = paths["markdown"].read_text()
    line = recommendation_line(markdown)
    assert line.startswith("fast is the best measured on kv_cache.ttft_hit_ms (") and line.endswith(shortfall)
    assert "## Optimal configuration" not in markdown  # the recommendation is not said twice
    data = json.loads(paths["json"].read_text())
    assert data["optimal"]["meets_goal"] is False and data["goal"] == ["kv_cache.acceleration"]
    assert data["optimal"]["goal_unmet"] == ["kv_cache.acceleration value = 1.33 x >= 1.5 x required: FAILED"]
    assert data["goal_met_by"] == [] and data["configs"][0]["goal_unmet"] == data["optimal"]["goal_unmet"]
    first_sentence = data["recommendation"].split("; no config meets the goal.")[0]
    assert first_sentence.startswith("fast is the best measured") and "but it does NOT meet the goal" in first_sentence
    html_text = paths["html"].read_text()
    assert f'<p class="rec">fast is the best measured on kv_cache.ttft_hit_ms (' in html_text
    assert "but it does NOT meet the goal: kv_cache.acceleration" in html_text and "Optimal configuration" not in html_text
    [line] = [line for line in terminal_table(store) if line.startswith("recommendation:")]
    assert line.startswith("recommendation: fast is the best measured") and "does NOT meet the goal" in line


def test_a_config_meeting_the_goal_is_named_beside_a_faster_one_that_does_not(tmp_path: Path) -> None:
    store = with_goal(kv_run(tmp_path, {"base": 60.0, "fast": 10.0, "steady": 30.0}), "kv_cache.acceleration")
    judged(store, "fast", 1.33, "fail")
    judged(store, "steady", 2.0, "pass")
    report = build_report(store)
    assert report.optimal.name == "fast" and report.goal_met_by == ["steady"]
    assert report.recommendation.endswith("FAILED; the goal is met by steady.")


def test_a_goal_metric_never_judged_on_the_best_config_is_a_shortfall(tmp_path: Path) -> None:
    report = build_report(with_goal(kv_run(tmp_path, {"base": 60.0, "fast": 10.0}), "kv_cache.acceleration"))
    assert report.optimal.meets_goal is False
    assert report.optimal.goal_unmet == ["kv_cache.acceleration: not judged on fast"]


def test_a_best_config_meeting_the_goal_is_recommended_without_a_caveat(tmp_path: Path) -> None:
    store = with_goal(kv_run(tmp_path, {"base": 60.0, "fast": 10.0}), "kv_cache.acceleration")
    judged(store, "fast", 2.95, "pass")
    report = build_report(store)
    assert report.optimal.meets_goal is True and report.optimal.caveat == ""
    assert report.recommendation.startswith("Deploy fast:") and "NOT" not in report.recommendation
    markdown = write_reports(store)["markdown"].read_text()
    assert markdown.split("## Recommendation\n\n", 1)[1].splitlines()[2] == \
        "- fast meets the goal: kv_cache.acceleration"


GOAL_NO_CONFIG_MEETS = """
thresholds:
  ttft.ttft_ms: {max: 0.001}
goal: [ttft.ttft_ms]
"""


def test_the_terminal_summary_says_the_recommended_config_misses_the_goal(pytester, write_grid):
    pytester.makepyfile(benchmarks_ttft=(REPO / "benchmarks" / "test_ttft.py").read_text())
    pytester.makeini("[pytest]\npython_files = benchmarks_*.py\n")
    (pytester.path / "th.yaml").write_text(GOAL_NO_CONFIG_MEETS)
    grid = write_grid(fake_grid([{"name": "baseline"}, {"name": "other", "env": {"FAKE_VLLM_TTFT_MS": "15"}}],
                                thresholds="th.yaml"))
    result = pytester.runpytest_subprocess("benchmarks_ttft.py", "--grid", str(grid), "--results-dir", "out",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)  # 0.001 ms is out of reach
    result.stdout.fnmatch_lines(["recommendation: * is the best measured on *, but it does NOT meet the goal: "
                                 "ttft*ttft_ms p50 = *; no config meets the goal.*"])
    store = ResultsStore(pytester.path / "out")
    assert store.manifest().goal == ["ttft.ttft_ms"]
    assert {r.deployment.host for r in store.all_configs().values()} == {socket.gethostname()}
    assert "CAUTION" not in result.stdout.str()  # one machine: no cross-machine note


GPU_A, GPU_B = "GPU-8c3f5e1a-1111-2222-3333-444455556666", "GPU-1d2e3f4a-1111-2222-3333-444455556666"


def test_configs_measured_on_different_machines_are_marked_beside_the_ranking(tmp_path: Path) -> None:
    store = kv_run(tmp_path, {"base": 60.0, "fast": 10.0, "chunked": 55.0})
    for name, host, gpu in (("base", "h200-a", GPU_A), ("chunked", "h200-a", GPU_A), ("fast", "h200-b", GPU_B)):
        placed(store, name, host, [gpu])
    note = ("measured on different machines: base, chunked on h200-a (GPU-8c3f5e1a); fast on h200-b "
            "(GPU-1d2e3f4a): the comparison crosses machines")
    paths = write_reports(store)
    markdown = paths["markdown"].read_text()
    ranking = markdown.split("## Ranking", 1)[1].split("\n## ", 1)[0]
    assert f"**Caution: {note}.**" in ranking
    data = json.loads(paths["json"].read_text())
    assert data["crosses_machines"] is True and data["machines_note"] == note
    assert {row["name"]: (row["host"], row["gpu_uuids"]) for row in data["configs"]}["fast"] == ("h200-b", [GPU_B])
    assert data["recommendation"].endswith(f"Caution: {note}.")
    assert f'<p class="bad"><strong>Caution: {note}.</strong></p>' in paths["html"].read_text()
    assert f"CAUTION: {note}" in terminal_table(store)


def test_two_gpu_sets_of_one_host_are_different_machines(tmp_path: Path) -> None:
    store = placed(placed(kv_run(tmp_path, {"base": 60.0, "fast": 10.0}), "base", "h200", [GPU_A]), "fast", "h200",
                   [GPU_B])
    assert build_report(store).crosses_machines is True


def test_configs_measured_on_one_machine_get_no_machine_note(tmp_path: Path) -> None:
    store = kv_run(tmp_path, {"base": 60.0, "fast": 10.0})
    for name in ("base", "fast"):
        placed(store, name, "h200-a", [GPU_A])
    report = build_report(store)
    assert report.crosses_machines is False and report.machines_note == ""
    assert "machine" not in write_reports(store)["markdown"].read_text()
    assert not any("CAUTION" in line for line in terminal_table(store))


def test_a_config_whose_machine_was_not_recorded_is_named_as_unknown(tmp_path: Path) -> None:
    store = placed(kv_run(tmp_path, {"base": 60.0, "fast": 10.0}), "fast", "h200-a", [GPU_A])
    report = build_report(store)  # base: a result from before hosts were recorded
    assert report.crosses_machines is False
    assert report.machines_note.startswith("base: machine not recorded (an older result), so whether the comparison "
                                           "with h200-a (GPU-8c3f5e1a) crosses machines cannot be told")


def test_twin_deployments_measure_the_noise_that_a_difference_must_exceed(tmp_path: Path) -> None:
    store = kv_run(tmp_path, {"base": 60.0, "base~2": 55.0, "b": 52.0})
    store.update_config("base~2", lambda r: setattr(r, "config_hash", "hash-base"))  # same flags as base
    report = build_report(store)
    [noise] = [n for n in report.noise if n.metric == "kv_cache.ttft_hit_ms"]
    assert [sorted(p.split(" vs ")) for p in noise.pairs] == [["base", "base~2"]] and 5.0 < noise.spread_pct < 30.0
    b_row = next(r for r in report.configs if r.name == "b")
    assert b_row.metrics["kv_cache.ttft_hit_ms"].vs_baseline_ci_pct[1] < 0  # beats the baseline on requests...
    assert report.optimal.significant_vs_baseline is False  # ...but not beyond two deployments' spread
    assert "## Between-deployment noise" in write_reports(store)["markdown"].read_text()


def test_a_run_without_twins_judges_beyond_the_noise_a_stored_a_a_run_measured(tmp_path: Path) -> None:
    twins = kv_run(tmp_path / "aa", {"base": 60.0, "base~2": 55.0})
    twins.update_config("base~2", lambda r: setattr(r, "config_hash", "hash-base"))
    store = kv_run(tmp_path / "new", {"base": 60.0, "b": 52.0})
    alone = build_report(store)
    assert alone.noise == [] and alone.optimal.significant_vs_baseline is True  # request-level noise only
    store.update_manifest(noise_from=[str(twins.root)])  # what --vllm-noise-from writes
    report = build_report(store)
    [noise] = [n for n in report.noise if n.metric == "kv_cache.ttft_hit_ms"]
    assert noise.source == str(twins.root) and noise.pairs[0].endswith("(run)") and 5.0 < noise.spread_pct < 30.0
    assert report.optimal.significant_vs_baseline is False
    markdown = write_reports(store)["markdown"].read_text()
    assert f"taken from the stored run(s) given with --vllm-noise-from: {twins.root}" in markdown


def test_noise_reference_dirs_are_checked_before_use(tmp_path: Path) -> None:
    from pytest_vllmgrid.report.model import noise_reference_dirs

    with pytest.raises(ValueError, match=r"^--vllm-noise-from .*nowhere: not a results directory"):
        noise_reference_dirs([str(tmp_path / "nowhere")])
    plain = kv_run(tmp_path / "plain", {"base": 60.0, "b": 52.0})
    with pytest.raises(ValueError, match="no two deployments of identical flags measured the same figure there"):
        noise_reference_dirs([str(plain.root)])
    twins = kv_run(tmp_path / "aa", {"base": 60.0, "base~2": 55.0})
    twins.update_config("base~2", lambda r: setattr(r, "config_hash", "hash-base"))
    assert noise_reference_dirs([f"{twins.root},{twins.root}"]) == [str(twins.root)] * 2
