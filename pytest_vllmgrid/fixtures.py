"""Fixtures users touch: vllm_config, vllm_deployment, vllm_endpoint, vllm_record (thin: call modules)."""

from __future__ import annotations

import os
from typing import Callable

import pytest

from pytest_vllmgrid.bench import BenchContext
from pytest_vllmgrid.deploy.base import DeploymentError, Deployment
from pytest_vllmgrid.endpoint import Endpoint
from pytest_vllmgrid.grid import ServerConfig
from pytest_vllmgrid.results import TestResult, result_key
from pytest_vllmgrid.session import STASH_KEY, GridSession
from pytest_vllmgrid.telemetry import TelemetrySampler

FAIL_LOG_LINES = 30


@pytest.fixture(scope="session")
def vllm_session(request: pytest.FixtureRequest) -> GridSession:
    """The run's shared state (grid, deployer, results store)."""
    return request.config.stash[STASH_KEY]


@pytest.fixture(scope="session")
def vllm_config(request: pytest.FixtureRequest) -> ServerConfig:
    """The grid config under test (the plugin parametrizes this by the grid)."""
    if not hasattr(request, "param"):
        pytest.fail("vllm_config is parametrized by pytest-vllmgrid's grid; it cannot be used here", pytrace=False)
    return request.param


@pytest.fixture(scope="session")
def vllm_deployment(vllm_config: ServerConfig, vllm_session: GridSession):
    """Deploy the config once for all its tests; always torn down before the next config deploys."""
    reason = vllm_session.skip_for_goal(vllm_config)
    if reason:
        pytest.skip(reason)
    try:
        deployment, failed = vllm_session.deploy(vllm_config), None
    except DeploymentError as exc:
        deployment, failed = None, exc  # failed below: inside `except` pytest would print exc as the context too
    if failed is not None:
        fail_deployment(vllm_session, vllm_config, failed)
    try:
        yield deployment
    finally:
        vllm_session.teardown(vllm_config)


def fail_deployment(session: GridSession, config: ServerConfig, exc: DeploymentError) -> None:
    """Fail a config's tests with the deploy's one-line reason. The log tail is shown once: on the terminal as the
    deploy fails (every test of the config repeats the fixture's error); an xdist worker has no terminal, so
    there it goes in the error."""
    tail = "\n".join(exc.log_tail.splitlines()[-FAIL_LOG_LINES:])
    tail_block = f"\n--- last {FAIL_LOG_LINES} log lines ---\n{tail}" if tail else ""
    reason = f"{exc.summary()}; full log: {exc.log_path}" if exc.log_path else exc.summary()
    if session.is_worker:
        pytest.fail(f"deployment of {config.name} failed: {reason}{tail_block}", pytrace=False)
    session.terminal_line(f"\nvllmgrid: {config.name}: deployment failed: {reason}{tail_block}")
    pytest.fail(f"deployment of {config.name} failed: {reason}", pytrace=False)


@pytest.fixture
def vllm_endpoint(vllm_deployment: Deployment) -> Endpoint:
    """The live server's endpoint; fails at once if the server died since the last test."""
    reason = vllm_deployment.death_reason()
    if reason is not None:
        tail = "\n".join(vllm_deployment.log_tail().splitlines()[-FAIL_LOG_LINES:])
        pytest.fail(f"server for {vllm_deployment.config_name} is gone ({reason}); "
                    f"log: {vllm_deployment.log_path}\n{tail}", pytrace=False)
    return vllm_deployment.endpoint


@pytest.fixture
def vllm_record(request: pytest.FixtureRequest, vllm_config: ServerConfig,
                vllm_session: GridSession) -> Callable[..., None]:
    """`vllm_record(test)` hands this benchmark's measured record to the run; it is written once, with the
    test's outcome."""
    key = result_key(request.node)

    def record(test: TestResult) -> None:
        vllm_session.record_measurement(vllm_config.name, key, test)
    return record


@pytest.fixture
def kv_prefix_tokens(vllm_session: GridSession) -> int:
    """The KV-cache benchmark's prefix length: `prefix_tokens`, unless `kv_prefix_tokens` lists several (then
    the plugin parametrizes this argument, one test per length)."""
    return vllm_session.bench_settings().prefix_tokens


@pytest.fixture
def vllm_bench(request: pytest.FixtureRequest, vllm_endpoint: Endpoint, vllm_deployment: Deployment,
               vllm_config: ServerConfig, vllm_session: GridSession, vllm_record: Callable[[TestResult], None]):
    """Settings, a streaming client, /metrics windows, GPU telemetry and recording for one benchmark."""
    settings = vllm_session.bench_settings()
    gpus = vllm_session.gpu_set()
    devices = ",".join(gpus) if gpus is not None else vllm_config.env.get(
        "CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    sampler = TelemetrySampler(interval_s=settings.telemetry_interval_s, devices=devices).start()
    key = result_key(request.node)
    rules = vllm_session.thresholds()
    ctx = BenchContext(endpoint=vllm_endpoint, config=vllm_config, settings=settings, record=vllm_record,
                       sampler=sampler, alert_thresholds=vllm_session.alert_thresholds(), thresholds=rules,
                       test_key=key, baseline=lambda own: vllm_session.baseline_measurement(key, vllm_config.name, own),
                       fail_on_gpu_alerts=rules.spec.telemetry.fail, http=vllm_deployment.http())
    try:
        yield ctx
    finally:
        ctx.stop_telemetry()
