"""Hub model ids: the server goes offline only for the project's own models or when asked; a model that cannot
be loaded is one line at preflight, saying how to fetch it; a failed server's log tail is shown once."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from conftest import fake_grid, read_events
from pytest_vllmgrid.deploy import hub
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.deploy.process import ProcessDeployer
from pytest_vllmgrid.grid import ServerConfig

ONE_TEST = "def test_x(vllm_endpoint): pass"


def cached_model(hub_cache: Path, model: str) -> None:
    """Put a snapshot of `model` into a Hugging Face hub cache directory, as `hf download` leaves it."""
    repo = hub_cache / f"models--{model.replace('/', '--')}"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")


@pytest.fixture
def no_offline_env(monkeypatch):
    for name in hub.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)


def environment(model: str, tmp_path: Path, **options) -> dict[str, str]:
    return ProcessDeployer(DeployOptions(state_dir=tmp_path, **options)).environment(
        ServerConfig(name="a", index=0, params={}, model=model))


def test_a_hub_model_is_served_online(tmp_path, no_offline_env):
    env = environment("Qwen/Qwen3-0.6B", tmp_path)
    assert not any(name in env for name in hub.OFFLINE_ENV)


def test_the_projects_own_models_are_served_offline(tmp_path, no_offline_env):
    for model in ("@tiny", "@dummy:qwen3-32b"):
        assert environment(model, tmp_path)["HF_HUB_OFFLINE"] == "1"
        assert environment(model, tmp_path)["TRANSFORMERS_OFFLINE"] == "1"


def test_offline_when_asked(tmp_path, no_offline_env):
    assert environment("Qwen/Qwen3-0.6B", tmp_path, offline=True)["HF_HUB_OFFLINE"] == "1"


def test_the_users_own_offline_setting_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert environment("Qwen/Qwen3-0.6B", tmp_path)["HF_HUB_OFFLINE"] == "1"


def test_a_cached_model_passes_offline(tmp_path):
    cached_model(tmp_path / "hub", "org/cached")
    assert hub.model_problem("org/cached", {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}) is None


def test_an_uncached_model_offline_says_how_to_fetch_it(tmp_path):
    problem = hub.model_problem("org/uncached", {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert problem == (f"model 'org/uncached' is not in the local Hugging Face cache ({tmp_path / 'hub'}) and the "
                       "server runs offline (HF_HUB_OFFLINE=1): fetch it first with `huggingface-cli download "
                       "org/uncached` (or `hf download org/uncached`)")


def test_an_uncached_model_online_with_an_unreachable_hub_is_a_problem(tmp_path):
    problem = hub.model_problem("org/uncached", {"HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert "cannot be reached" in problem and "hf download org/uncached" in problem


def test_a_model_the_hub_does_not_have_is_a_problem(tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        problem = hub.model_problem("org/nonexistent", {"HF_HOME": str(tmp_path),
                                                        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"})
    finally:
        server.shutdown()
    assert problem.startswith("model 'org/nonexistent' is neither in the local Hugging Face cache nor on the hub")


def test_a_missing_local_path_is_a_problem(tmp_path):
    assert hub.model_problem(str(tmp_path / "nowhere"), {}) == f"model path {str(tmp_path / 'nowhere')!r} does not exist"


def test_preflight_refuses_an_uncached_model_with_vllm_offline(pytester, write_grid, events_file, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(pytester.path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    grid = write_grid(fake_grid([{"name": "base"}], model="Qwen/Qwen3-32B-AWQ"))
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-offline", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "preflight of the process deployer failed: model 'Qwen/Qwen3-32B-AWQ' is not in the local Hugging Face " \
           "cache" in err and "(--vllm-offline or the grid's `offline: true`)" in err
    assert "`huggingface-cli download Qwen/Qwen3-32B-AWQ` (or `hf download Qwen/Qwen3-32B-AWQ`)" in err
    assert read_events(events_file) == []


def test_grid_offline_key_serves_a_cached_model(pytester, write_grid, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "hub"))
    cached_model(pytester.path / "hub", "org/cached")
    grid = write_grid(fake_grid([{"name": "base"}], model="org/cached", offline=True))
    pytester.makepyfile(test_x="import os\ndef test_x(vllm_endpoint): pass")
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_failed_servers_log_tail_is_shown_once(pytester, write_grid):
    grid = write_grid(fake_grid([{"name": "base"}, {"name": "bad", "env": {"FAKE_VLLM_EXIT": "--bogus-flag"}}],
                                baseline="base"))
    pytester.makepyfile(test_x="def test_a(vllm_endpoint): pass\ndef test_b(vllm_endpoint): pass")
    result = pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=2)
    out = result.stdout.str()
    assert out.count("log lines ---") == 1 and out.count("\nvllm: error: unrecognized arguments: --bogus-flag\n") == 1
    assert "During handling of the above exception" not in out
    assert out.count("\ndeployment of bad failed: server for bad exited") == 2  # each test: one line


def test_the_hub_is_asked_for_the_environment_given_not_the_one_huggingface_hub_was_imported_in(tmp_path):
    """huggingface_hub fixes HF_HUB_OFFLINE at its first import: a process that imported it offline (CI did, in an
    earlier test) answered 'cannot be reached' for an online check against a hub that says 404."""
    import subprocess
    import sys

    script = (
        "import http.server, threading, huggingface_hub\n"
        "from pytest_vllmgrid.deploy import hub\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        f"print(hub.model_problem('org/nonexistent', {{'HF_HOME': {str(tmp_path)!r}, "
        "'HF_ENDPOINT': f'http://127.0.0.1:{s.server_port}'}))\n")
    import os

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.startswith("model 'org/nonexistent' is neither in the local Hugging Face cache nor on the hub"), \
        out.stdout + out.stderr
