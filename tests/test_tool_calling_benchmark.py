"""benchmarks/test_tool_calling.py end to end against the fake vLLM in tool_calls mode (it always streams a
get_weather call for Paris): the weather request succeeds, the current-time request calls functions it does not offer,
and the stored examples show the failing call first, with its finish reason."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, fake_grid

pytest_plugins = ["pytester"]


def test_the_tool_calling_benchmark_classifies_calls_and_keeps_a_failing_example(pytester: pytest.Pytester,
                                                                                   write_grid) -> None:
    shutil.copy(REPO / "benchmarks" / "test_tool_calling.py", pytester.path / "test_tool_calling.py")
    grid = write_grid(fake_grid([{"name": "baseline"}], env={"FAKE_VLLM_MODE": "tool_calls"},
                                benchmarks={"warmup": 1, "tool_repetitions": 3, "max_tokens": 8}))
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider",
                                           "-k", "weather-auto or current_time-auto")
    assert result.parseoutcomes().get("passed") == 2, result.stdout.str()[-3000:]
    tests = json.loads((pytester.path / "out" / "baseline.json").read_text())["tests"]
    weather = tests["tool_calling[weather-auto]"]["measurement"]
    clock = tests["tool_calling[current_time-auto]"]["measurement"]
    assert weather["info"]["outcomes"]["success"] == 3 and weather["metrics"]["success_rate_pct"]["value"] == 100
    assert [e["outcome"] for e in weather["info"]["examples"]] == ["success"]
    # get_weather and get_time are not among the functions the current-time request offers
    assert clock["info"]["outcomes"]["unknown_function"] == 3 and clock["metrics"]["success_rate_pct"]["value"] == 0
    failing = clock["info"]["examples"][0]
    assert failing["outcome"] == "unknown_function" and failing["finish_reason"] == "tool_calls"
    assert failing["tool_calls"][0]["function"]["name"] == "get_weather"
