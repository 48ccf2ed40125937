"""Wait until a server is really ready: alive, HTTP up, model listed, one real completion."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import httpx

from pytest_vllmgrid.deploy.base import DeploymentError, Endpoint, redact


@dataclass
class ReadyResult:
    """How readiness was reached."""

    seconds: float
    attempts: int
    first_ok_monotonic: float  # when the completion that proved readiness returned
    stages: dict[str, float]  # seconds from start until each stage passed


def wait_until_ready(
    endpoint: Endpoint,
    *,
    death_reason: Callable[[], str | None],
    timeout_s: float,
    poll_interval_s: float = 0.5,
    log_tail: Callable[[], str] = lambda: "",
    config_name: str = "",
    on_attempt: Callable[[int, str], None] | None = None,
    request_timeout_s: float = 30.0,
) -> ReadyResult:
    """Poll every `poll_interval_s` until the server answers a completion; fail at once if it dies."""
    start = time.monotonic()
    deadline = start + timeout_s
    attempts = 0
    stage = "http"
    stages: dict[str, float] = {}
    last_problem = "no answer yet"
    headers = endpoint.headers()
    with httpx.Client(timeout=httpx.Timeout(request_timeout_s, connect=2.0), headers=headers) as http:
        while True:
            reason = death_reason()
            if reason is not None:
                raise DeploymentError(
                    f"server for {config_name} exited during startup ({reason})",
                    config_name=config_name,
                    kind="oom" if "oom" in reason.lower() else "exited",
                    exit_code=_exit_code_of(reason),
                    log_tail=log_tail(),
                )
            now = time.monotonic()
            if now > deadline:
                raise DeploymentError(
                    f"server for {config_name} not ready after {timeout_s:.0f} s "
                    f"(stage {stage}: {last_problem})",
                    config_name=config_name,
                    kind="timeout",
                    log_tail=log_tail(),
                )
            attempts += 1
            # one probe never outlives the deadline: a server that accepts and never answers is bounded too
            http.timeout = httpx.Timeout(min(request_timeout_s, max(deadline - now, 0.5)), connect=2.0)
            stage, last_problem = _probe(http, endpoint, stage)
            last_problem = redact(last_problem, {endpoint.api_key or ""})  # a server may echo the auth header
            if on_attempt:
                on_attempt(attempts, f"{stage}: {last_problem}")
            if stage == "ready":
                done = time.monotonic()
                stages.setdefault("ready", done - start)
                return ReadyResult(done - start, attempts, done, stages)
            stages.setdefault(stage, time.monotonic() - start)
            time.sleep(max(0.0, min(poll_interval_s, deadline - time.monotonic())))


def _probe(http: httpx.Client, endpoint: Endpoint, stage: str) -> tuple[str, str]:
    """Advance through the stages from `stage`; returns (stage reached, what is still missing there, or for
    "ready" what answered: the deployment log's readiness line never ends empty)."""
    for name, check in _STAGES[[n for n, _ in _STAGES].index(stage):]:
        try:
            problem = check(http, endpoint)
        except httpx.HTTPError as exc:  # named with the stage whose request failed
            return name, f"{type(exc).__name__}: {str(exc)[:200]}"
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            return name, f"unreadable answer: {type(exc).__name__}: {str(exc)[:200]}"
        if problem:
            return name, problem
    return "ready", "/health, /v1/models and a completion answered"


def _health(http: httpx.Client, endpoint: Endpoint) -> str | None:
    """The HTTP server is up: /health answers 200."""
    resp = http.get(f"{endpoint.base_url}/health")
    return None if resp.status_code == 200 else f"/health answered {resp.status_code}"


def _models(http: httpx.Client, endpoint: Endpoint) -> str | None:
    """/v1/models lists the model clients will ask for."""
    resp = http.get(f"{endpoint.base_url}/v1/models")
    if resp.status_code != 200:
        return f"/v1/models answered {resp.status_code}"
    ids = [m.get("id") for m in resp.json().get("data", [])]
    return None if endpoint.model in ids else f"/v1/models lists {ids}, not {endpoint.model!r}"


def _completion(http: httpx.Client, endpoint: Endpoint) -> str | None:
    """One real completion comes back (seed 003: /health alone was not proof)."""
    resp = http.post(
        f"{endpoint.base_url}/v1/completions",
        json={"model": endpoint.model, "prompt": "ready", "max_tokens": 1, "temperature": 0},
    )
    if resp.status_code != 200:
        return f"/v1/completions answered {resp.status_code}: {resp.text[:200]}"
    return None if resp.json().get("choices") else "/v1/completions returned no choices"


_STAGES = (("http", _health), ("models", _models), ("completion", _completion))


def _exit_code_of(reason: str) -> int | None:
    """Pull 'exit code N' out of a death reason."""
    marker = "exit code "
    if marker in reason:
        digits = reason.split(marker, 1)[1].split()[0].strip(",;)")
        try:
            return int(digits)
        except ValueError:
            return None
    return None
