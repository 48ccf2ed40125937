"""Readiness progress as the deployment log shows it: every stage line says what was seen, the last one too."""

from __future__ import annotations

from fault_server import FaultServer

from pytest_vllmgrid.deploy.readiness import wait_until_ready
from pytest_vllmgrid.endpoint import Endpoint


def test_the_ready_line_says_what_answered() -> None:
    seen: list[str] = []
    with FaultServer("ok") as server:
        wait_until_ready(Endpoint(server.base_url, "fault-model"), death_reason=lambda: None, timeout_s=10, poll_interval_s=0.05,
                         on_attempt=lambda attempt, text: seen.append(text))
    assert seen[-1] == "ready: /health, /v1/models and a completion answered"
