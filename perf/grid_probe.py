"""A pytest plugin for perf/grid_breakdown.py: timestamps of a grid run's phases, nothing else.

Loaded with `-p grid_probe` (perf/ on PYTHONPATH). It wraps, without changing behaviour:
GridSession.deploy / teardown (each config's start-up and shutdown), ChatClient._request (every
benchmark request's send and end), pytest_vllmgrid.report.write_reports, and the test phases;
at exit it writes everything, in time.monotonic() seconds, to $VLLMGRID_PROBE_OUT as JSON.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import httpx
import pytest

from pytest_vllmgrid import report
from pytest_vllmgrid.bench import BenchContext
from pytest_vllmgrid.measurement import Measurement
from pytest_vllmgrid.telemetry import TelemetrySampler
from pytest_vllmgrid.client import ChatClient
from pytest_vllmgrid.progress import config_of_nodeid
from pytest_vllmgrid.session import STASH_KEY, GridSession

EVENTS: dict[str, Any] = {"imported": time.monotonic(), "deploy": {}, "teardown": {}, "tests": [],
                          "requests": [], "reports": None, "calls": []}
_current = {"config": None}


def _timed(store: dict[str, Any], method: Any) -> Any:
    """Wrap GridSession.deploy/teardown: keep (start, end) per config name."""

    @functools.wraps(method)
    def wrapper(self: GridSession, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return method(self, cfg, *args, **kwargs)
        finally:
            store.setdefault(cfg.name, [start, time.monotonic()])
    return wrapper


def _timed_request(method: Any) -> Any:
    """Wrap ChatClient._request: keep every request's (start, end, config)."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return await method(*args, **kwargs)
        finally:
            EVENTS["requests"].append([start, time.monotonic(), _current["config"]])
    return wrapper


def _timed_span(function: Any, done: Any) -> Any:
    """Wrap a function: call done(start, end, *args, **kwargs) after each call, even one that raised."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            done(start, time.monotonic(), *args, **kwargs)
    return wrapper


def _timed_reports(function: Any) -> Any:
    """Keep the span of the (single) report writing."""
    return _timed_span(function, lambda start, end, *a, **k: EVENTS.__setitem__("reports", [start, end]))


def _timed_call(name: Any, function: Any) -> Any:
    """Wrap a function: keep (name, start, end, config); `name` may be a callable of the arguments."""
    def done(start: float, end: float, *args: Any, **kwargs: Any) -> None:
        label = name(*args, **kwargs) if callable(name) else name
        EVENTS["calls"].append([label, start, end, _current["config"]])
    return _timed_span(function, done)


def _http_label(method: str) -> Any:
    return lambda url, *args, **kwargs: f"httpx.{method} {httpx.URL(str(url)).path}"


def _client_label(method: str) -> Any:
    return lambda self, url, *args, **kwargs: f"httpx.Client.{method} {httpx.URL(str(url)).path}"


httpx.get = _timed_call(_http_label("get"), httpx.get)
httpx.post = _timed_call(_http_label("post"), httpx.post)
httpx.Client.get = _timed_call(_client_label("get"), httpx.Client.get)  # type: ignore[method-assign]
httpx.Client.post = _timed_call(_client_label("post"), httpx.Client.post)  # type: ignore[method-assign]
BenchContext.metrics = _timed_call("BenchContext.metrics (GET /metrics + parse)",  # type: ignore[method-assign]
                                   BenchContext.metrics)
TelemetrySampler.start = _timed_call("telemetry start", TelemetrySampler.start)  # type: ignore[method-assign]
TelemetrySampler.stop = _timed_call("telemetry stop", TelemetrySampler.stop)  # type: ignore[method-assign]
Measurement.add_sample = _timed_call("Measurement.add_sample", Measurement.add_sample)  # type: ignore[method-assign]
BenchContext.finish = _timed_call("BenchContext.finish", BenchContext.finish)  # type: ignore[method-assign]
BenchContext.check_thresholds = _timed_call("BenchContext.check_thresholds",  # type: ignore[method-assign]
                                            BenchContext.check_thresholds)
GridSession.deploy = _timed(EVENTS["deploy"], GridSession.deploy)  # type: ignore[method-assign]
GridSession.teardown = _timed(EVENTS["teardown"], GridSession.teardown)  # type: ignore[method-assign]
ChatClient._request = _timed_request(ChatClient._request)  # type: ignore[method-assign]
report.write_reports = _timed_reports(report.write_reports)


def pytest_collection_finish(session: pytest.Session) -> None:
    EVENTS["collected"] = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    grid = item.config.stash[STASH_KEY].grid
    _current["config"] = config_of_nodeid(item.nodeid, grid.names if grid else [])
    start = time.monotonic()
    yield
    EVENTS["tests"].append([item.nodeid, _current["config"], start, time.monotonic()])


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    start = time.monotonic()
    yield
    EVENTS["sessionfinish"] = [start, time.monotonic()]


def pytest_unconfigure(config: pytest.Config) -> None:
    EVENTS["unconfigure"] = time.monotonic()
    out = os.environ.get("VLLMGRID_PROBE_OUT")
    if out:
        with open(out, "w") as handle:
            json.dump(EVENTS, handle)
