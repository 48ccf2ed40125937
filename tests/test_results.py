"""The typed result model: every earlier run on disk still loads, reports the same and feeds the gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_run

from pytest_vllmgrid.report import write_reports
from pytest_vllmgrid.results import (SCHEMA_VERSION, ConfigResult, Measurement, ResultsStore, SchemaError,
                                     TestResult, read_config_result)

V1_RUN = Path(__file__).parent / "data" / "v1_cpu_run"  # the default CPU job, written by the schema-1 code


@pytest.fixture
def v1_copy(tmp_path: Path) -> ResultsStore:
    return copy_run(V1_RUN, tmp_path / "run")


def test_a_schema_1_run_loads_as_typed_results(v1_copy: ResultsStore) -> None:
    results = v1_copy.all_configs()
    assert set(results) == {"baseline", "prefix_caching", "chunked_prefill"}
    kv = results["prefix_caching"].tests["kv_cache"]
    assert kv.status == "passed" and kv.cache_acceleration is not None
    accel = kv.metric("acceleration")
    assert accel is not None and accel.kind == "value" and accel.validity == "valid"
    assert accel.ci is not None and accel.ci[0] < accel.value < accel.ci[1]
    assert len(kv.measurement.samples["ttft_hit_ms"]) == kv.metric("ttft_hit_ms").n
    assert results["baseline"].status == "complete"


def ranking_rows(markdown: str) -> dict[str, list[str]]:
    table = markdown.split("## Ranking", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return {row[1].strip("*"): row for row in rows}


def test_a_schema_1_run_renders_the_figures_it_had(v1_copy: ResultsStore) -> None:
    """The run's report, as the schema-1 code wrote it, against today's rendering of the same files: same
    ranking and the same cells; what changed by design: a percentage's Δ is in points, not a % of a %."""
    before = ranking_rows((V1_RUN / "report_v1.md").read_text())
    write_reports(v1_copy)
    after = ranking_rows((v1_copy.root / "report.md").read_text())
    assert list(after) == list(before) == ["prefix_caching", "baseline", "chunked_prefill"]
    for name in before:
        assert after[name][:9] == before[name][:9]  # rank, params, status, startup, KV MISS and HIT cells
    assert before["chunked_prefill"][14] == "+3119.2%" and after["chunked_prefill"][14].startswith("+484.0 pts")


def test_a_schema_1_run_resumes_as_complete(v1_copy: ResultsStore) -> None:
    assert set(v1_copy.completed_hashes()) == {"baseline", "prefix_caching", "chunked_prefill"}
    assert v1_copy.manifest().status == "complete"


def test_a_schema_1_run_feeds_vllmgrid_compare(v1_copy: ResultsStore) -> None:
    cli = [sys.executable, "-m", "pytest_vllmgrid.cli", "compare", str(V1_RUN), "--", str(v1_copy.root),
           "--fail", "ttft_hit:10%"]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2), result.stderr
    assert "kv_cache.ttft_hit_ms" in result.stdout


def test_a_saved_result_reads_back_equal(v1_copy: ResultsStore) -> None:
    original = v1_copy.load_config("baseline")
    v1_copy.save(original)
    raw = json.loads(v1_copy.config_path("baseline").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    again = v1_copy.load_config("baseline")
    assert again.model_dump(exclude={"updated"}) == original.model_dump(exclude={"updated"})


def test_a_result_from_a_newer_schema_is_refused_with_the_file_named() -> None:
    with pytest.raises(SchemaError, match=r"x\.json: schema_version 99 is newer"):
        read_config_result({"schema_version": 99, "config_name": "a", "timestamp": "t"}, "x.json")


def test_a_wrong_field_type_names_the_field() -> None:
    with pytest.raises(SchemaError, match=r"field 'tests\.kv\.status'"):
        read_config_result({"schema_version": 2, "config_name": "a", "timestamp": "t",
                            "tests": {"kv": {"status": 3}}}, "x.json")


def test_each_test_record_is_written_once_per_test(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.reset_config("a", {"name": "a", "params": {}})
    m = Measurement(method="m")
    m.add_sample("ttft_ms", [1.0, 2.0, 3.0], "ms", "lower", headline=True)
    store.write_test("a", "ttft[short]", TestResult(status="passed", measurement=m))
    loaded = store.load_config("a")
    assert isinstance(loaded, ConfigResult)
    assert loaded.tests["ttft[short]"].metric("ttft_ms").p50 == 2.0
