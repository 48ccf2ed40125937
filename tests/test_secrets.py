"""With an API key set, no artefact of a run may contain it: results, server logs, reports, JUnit XML, pytest-html,
the terminal, owned-process records, the manifest, a dry run, the compose override, a rebuilt report."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, fake_grid, servers_using
from reliability import reliability_case

pytestmark = pytest.mark.timeout(240)

KEY_ENV = "VLLMGRID_TEST_API_KEY"
KEY_IN_USE = """
import os
import psutil


def test_key_travels_in_the_servers_environment_never_its_argv(vllm_deployment):
    key = os.environ["VLLMGRID_TEST_API_KEY"]
    server = psutil.Process(vllm_deployment.describe["pid"])
    assert server.environ().get("VLLM_API_KEY") == key
    assert key not in " ".join(server.cmdline())
    assert vllm_deployment.endpoint.api_key == key
"""


def hits(key: str, *roots: Path, texts: dict[str, str]) -> list[str]:
    """Every file under `roots` and every named text containing the key (or a 16-character piece of it)."""
    needles = [key.encode(), key[-16:].encode()]
    found = [name for name, text in texts.items() if any(n.decode() in text for n in needles)]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and any(n in path.read_bytes() for n in needles):
                found.append(str(path))
    return found


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh key in $VLLMGRID_TEST_API_KEY; owned-process records go to a private cache dir."""
    key = "sk-vllmgrid-" + secrets.token_hex(20)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("VLLMGRID_CACHE_DIR", str(tmp_path / "cache"))
    return key


def test_no_artefact_of_a_run_with_faults_contains_the_api_key(pytester, write_grid, events_file, api_key, tmp_path):
    with reliability_case("secrets", "API key in every artefact of a faulty run", "the key reaches the server (env "
                          "VLLM_API_KEY, Bearer header) and appears in no file, report or output, even when the "
                          "server echoes it in errors during readiness and benchmarks, and when it crashes") as case:
        shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
        (pytester.path / "test_key.py").write_text(KEY_IN_USE)
        echo = {"FAKE_VLLM_MODE": "http_500", "FAKE_VLLM_ECHO_AUTH": "1"}
        grid = write_grid(fake_grid([
            {"name": "base", "env": {"FAKE_NAME": "base"}},
            {"name": "echo_at_ready", "priority": 1, "env": {"FAKE_NAME": "echo_at_ready", **echo}},
            {"name": "echo_mid_run", "priority": 2,
             "env": {"FAKE_NAME": "echo_mid_run", "FAKE_VLLM_FAULT_AFTER": "1", **echo}},
            {"name": "crash", "priority": 3, "env": {"FAKE_NAME": "crash", "FAKE_VLLM_MODE": "crash_after_n"}},
        ], baseline="base", api_key_env=KEY_ENV, startup_timeout_s=3))
        result = pytester.runpytest_subprocess(
            "--grid", str(grid), "--results-dir", "out", "--junitxml", "junit.xml", "--html", "pytest-report.html",
            "--self-contained-html", "-rA", "-v", "-l", "--tb=long", "-p", "no:hypothesispytest", timeout=180)
        outcomes = result.parseoutcomes()
        case.observe(f"run: {outcomes}")
        echoed = (pytester.path / "out" / "echo_at_ready.json").read_text()
        assert "[REDACTED]" in echoed, "the server echoed the Authorization header during readiness"
        case.observe("the readiness error quoted the echoed header as [REDACTED]")
        assert outcomes.get("passed") == 5, result.stdout.str()[-3000:]  # base 3, the key test of 2 more
        assert "test_key.py::test_key_travels_in_the_servers_environment_never_its_argv[base] PASSED" in \
            result.stdout.str()
        case.observe("key verified in the server's environment, absent from its argv")
        dry = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-dry-run", "-p", "no:hypothesispytest")
        rebuilt = subprocess.run([sys.executable, "-m", "pytest_vllmgrid.cli", "report", "out"], cwd=pytester.path,
                                 capture_output=True, text=True, timeout=120)
        found = hits(api_key, pytester.path, tmp_path / "cache", texts={
            "pytest stdout": result.stdout.str(), "pytest stderr": result.stderr.str(),
            "dry-run output": dry.stdout.str() + dry.stderr.str(), "vllmgrid report": rebuilt.stdout + rebuilt.stderr})
        files = [p for p in pytester.path.rglob("*") if p.is_file()]
        kinds = sorted({p.suffix or p.name for p in files})
        case.observe(f"scanned {len(files)} files ({', '.join(kinds)}) + terminal, dry run, `vllmgrid report`: "
                     f"{len(found)} hit(s)")
        assert found == []
        assert case.check_processes(servers_using(events_file)) == []
        assert case.check_results(pytester.path / "out", ["base", "echo_at_ready", "echo_mid_run", "crash"]) == []


def test_the_compose_override_and_plan_never_contain_the_api_key(tmp_path, api_key, monkeypatch):
    from pytest_vllmgrid.deploy import DeployOptions
    from pytest_vllmgrid.deploy.compose import ComposeDeployer
    from pytest_vllmgrid.grid import load_grid

    with reliability_case("secrets", "API key and the compose override", "the rendered override and the dry-run "
                          "plan reference the key by variable name only") as case:
        monkeypatch.setenv("VLLM_API_KEY", api_key)
        medium = REPO / "configs" / "compose" / "medium.yml"
        grid_path = tmp_path / "grid.yaml"
        grid_path.write_text(yaml.safe_dump({"deployer": "compose", "api_key_env": KEY_ENV, "configs": [
            {"name": "c", "max_num_seqs": 4}], "compose": {"file": str(medium), "service": "medium-qwen3"}}))
        grid = load_grid(grid_path)
        options = DeployOptions(state_dir=tmp_path / "state", compose_file=str(medium), compose_service="medium-qwen3",
                                api_key_env=KEY_ENV, api_key=api_key)
        deployer = ComposeDeployer(options, grid.spec)
        override = deployer.override_for(grid.configs[0])
        plan = json.dumps(deployer.plan(grid.configs[0]), default=str)
        case.observe(f"override {len(override)} chars, plan {len(plan)} chars: key present "
                     f"{api_key in override or api_key in plan}")
        assert api_key not in override and api_key not in plan
