"""The compose deployer: pure helpers always; a real Docker engine and a real vLLM container when one answers.

Docker tests carry `@pytest.mark.docker` and skip when no engine answers, the compose CLI or the
image is missing (set VLLMGRID_REQUIRE_DOCKER=1 to make that a failure, as CI does). Prepare with
scripts/docker-engine.sh and scripts/build-vllm-cpu-image.sh. Only three vLLM containers start
(two good configs and one that exits on a bad flag); the healthcheck, interrupt and restore tests
run tests/fake_vllm.py in the same image instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pytest_vllmgrid.client import ChatClient, RequestRecord
from pytest_vllmgrid.deploy import compose as compose_module
from pytest_vllmgrid.deploy.base import Deployment, DeploymentError
from pytest_vllmgrid.deploy.compose import (
    CONFIG_LABEL,
    CONTAINER_LOG_FILE,
    DEPLOYMENT_LOG_FILE,
    OVERRIDE_FILE,
    OWNER_LABEL,
    PROJECT_LABEL,
    REDACTED,
    ComposeDeployer,
    api_key_reference,
    container_base_url,
    death_reason_of,
    docker_client,
    owner_is_gone,
    owner_label,
    project_name_for,
    read_env_file,
    redact,
    referenced_variables,
    render_override,
)
from pytest_vllmgrid.deploy.options import DeployOptions
from pytest_vllmgrid.grid import Grid, ServerConfig, load_grid
from pytest_vllmgrid.vllm_argv import merge_command, option_value

REPO = Path(__file__).resolve().parent.parent
MEDIUM = REPO / "configs" / "compose" / "medium.yml"
SERVICE = "medium-qwen3"
IMAGE = os.environ.get("VLLMGRID_IMAGE", "pytest-vllmgrid/vllm-cpu:local")
REQUIRE_DOCKER = os.environ.get("VLLMGRID_REQUIRE_DOCKER") == "1"
SETUP_HINT = "run scripts/docker-engine.sh and scripts/build-vllm-cpu-image.sh"


# ---- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    """A file's content hash."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compose_grid(tmp: Path, compose: dict[str, Any], configs: list[dict], **top: Any) -> tuple[Grid, ComposeDeployer]:
    """Write a compose grid, load it, and build its deployer the way the plugin's session does."""
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump({"deployer": "compose", "compose": compose, "configs": configs, **top}))
    grid = load_grid(path)
    spec = grid.spec.compose
    options = DeployOptions(state_dir=tmp / "state", compose_file=spec.file, compose_service=spec.service,
                            compose_project=spec.project_name, compose_env_file=spec.env_file,
                            startup_timeout_s=top.get("startup_timeout_s"), min_free_disk_gb=1.0)
    return grid, ComposeDeployer(options, grid.spec)


def docker_unavailable() -> str | None:
    """Why the docker tests cannot run here, or None."""
    try:
        client = docker_client()
    except DeploymentError as exc:
        return exc.message
    if shutil.which("docker-compose") is None and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False).returncode != 0:
        return f"no docker compose CLI; {SETUP_HINT}"
    try:
        client.images.get(IMAGE)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        return f"image {IMAGE} is missing; {SETUP_HINT}"
    return None


@pytest.fixture(scope="module")
def docker_engine() -> Any:
    """A docker SDK client for an engine that answers, with the compose CLI and the image present."""
    reason = docker_unavailable()
    if reason is not None:
        if REQUIRE_DOCKER:
            pytest.fail(f"VLLMGRID_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(f"no usable Docker engine: {reason}")
    return docker_client()


def project_containers(client: Any, project: str) -> list[str]:
    """Names of every container (any state) of a compose project."""
    return [c.name for c in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})]


def remove_project(client: Any, project: str) -> None:
    """Safety net after a test: force-remove a project's containers and networks."""
    for container in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": f"{PROJECT_LABEL}={project}"}):
        network.remove()


def stream_chat(deployment: Deployment) -> RequestRecord:
    """One streamed chat completion against a deployment, as a benchmark sends it."""
    endpoint = deployment.endpoint

    async def send() -> RequestRecord:
        async with ChatClient(endpoint.base_url, endpoint.model, endpoint.api_key, timeout=60) as client:
            return await client.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
    return asyncio.run(send())


# ---- pure helpers: no Docker needed ------------------------------------------------------------


def test_merge_command_gives_a_flag_in_both_the_grids_value() -> None:
    base = ["--model", "/m", "--max-num-seqs", "16", "--max-model-len=2048", "--enforce-eager"]
    merged = merge_command(base, ["--max-num-seqs", "4", "--max-model-len", "1024"])
    assert merged == ["--model", "/m", "--enforce-eager", "--max-num-seqs", "4", "--max-model-len", "1024"]


def test_merge_command_replaces_a_switch_by_its_negation() -> None:
    merged = merge_command(["--enable-prefix-caching", "--dtype", "bfloat16"], ["--no-enable-prefix-caching"])
    assert merged == ["--dtype", "bfloat16", "--no-enable-prefix-caching"]


def test_merge_command_keeps_leading_positionals_and_variable_references() -> None:
    merged = merge_command(["serve", "${MODEL}", "--api-key", "${VLLM_API_KEY}"], ["--max-num-seqs", "2"])
    assert merged == ["serve", "${MODEL}", "--api-key", "${VLLM_API_KEY}", "--max-num-seqs", "2"]


def test_override_renders_the_command_as_a_yaml_list_with_json_intact() -> None:
    rope = '{"factor":4.0,"original_max_position_embeddings":32768,"rope_type":"yarn"}'  # seed bug #5
    text = render_override(SERVICE, ["--rope-scaling", rope, "--max-num-seqs", "4"], environment={"A": "1"},
                           labels={CONFIG_LABEL: "c"}, config_name="c")
    service = yaml.safe_load(text)["services"][SERVICE]
    assert service["command"] == ["--rope-scaling", rope, "--max-num-seqs", "4"]
    assert service["labels"] == {CONFIG_LABEL: "c"}


def test_override_escapes_dollar_in_grid_values_but_keeps_the_files_references(tmp_path: Path) -> None:
    compose_file = tmp_path / "c.yml"
    compose_file.write_text(yaml.safe_dump({"services": {SERVICE: {
        "image": "x", "command": ["--api-key", "${VLLM_API_KEY}"]}}}))
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE},
                                  [{"name": "c", "extra_args": ["--chat-template-content-format", "a$b"]}])
    command = yaml.safe_load(deployer.override_for(grid.configs[0]))["services"][SERVICE]["command"]
    assert command == ["--api-key", "${VLLM_API_KEY}", "--chat-template-content-format", "a$$b"]


def test_override_never_contains_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-" + secrets.token_hex(16)
    monkeypatch.setenv("VLLM_API_KEY", key)
    grid, deployer = compose_grid(tmp_path, {"file": str(MEDIUM), "service": SERVICE},
                                  [{"name": "c", "max_num_seqs": 4}])
    text = deployer.override_for(grid.configs[0])
    assert key not in text
    assert deployer.api_key() == ("VLLM_API_KEY", key)


def test_api_key_reference_is_found_in_the_command_or_the_environment() -> None:
    assert api_key_reference({"command": ["--api-key", "${KEY_MEDIUM}"]}) == ("KEY_MEDIUM", None)
    assert api_key_reference({"environment": {"VLLM_API_KEY": "${K:?set it}"}}) == ("K", None)
    assert api_key_reference({"environment": ["VLLM_API_KEY"]}) == ("VLLM_API_KEY", None)
    assert api_key_reference({"command": "--port 8000"}) == (None, None)


def test_preflight_names_a_missing_api_key_variable_and_the_env_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    env_file = tmp_path / "vllm.env"
    env_file.write_text("OTHER=1\n")
    _, deployer = compose_grid(tmp_path, {"file": str(MEDIUM), "service": SERVICE, "env_file": str(env_file)},
                                  [{"name": "c"}])
    with pytest.raises(DeploymentError) as caught:
        deployer._check_api_key(deployer.service_definition())
    assert caught.value.kind == "preflight"
    assert "VLLM_API_KEY" in caught.value.message and str(env_file) in caught.value.message


def test_api_key_is_read_from_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    env_file = tmp_path / "vllm.env"
    env_file.write_text("# comment\nexport VLLM_API_KEY='from-env-file'\n")
    _, deployer = compose_grid(tmp_path, {"file": str(MEDIUM), "service": SERVICE, "env_file": str(env_file)},
                                  [{"name": "c"}])
    deployer._check_api_key(deployer.service_definition())
    assert deployer.api_key() == ("VLLM_API_KEY", "from-env-file")
    assert read_env_file(env_file) == {"VLLM_API_KEY": "from-env-file"}


def test_env_file_is_read_as_compose_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLMGRID_TEST_HOST", "from-environment")
    monkeypatch.delenv("VLLMGRID_TEST_UNSET", raising=False)
    env_file = tmp_path / "vllm.env"
    env_file.write_text("\n".join([
        "# comment", "", "PLAIN=value # inline comment", 'DOUBLE="two words"', "SINGLE='a \"b\" # c'",
        "export EXPORTED=yes", "FROM_FILE=${PLAIN}-x", "FROM_ENV=${VLLMGRID_TEST_HOST}",
        "DEFAULTED=${VLLMGRID_TEST_UNSET:-fallback}", "NAME_ONLY", "EMPTY=", ""]))
    assert read_env_file(env_file) == {
        "PLAIN": "value", "DOUBLE": "two words", "SINGLE": 'a "b" # c', "EXPORTED": "yes",
        "FROM_FILE": "value-x", "FROM_ENV": "from-environment", "DEFAULTED": "fallback", "EMPTY": ""}


def test_referenced_variables_name_each_reference_and_whether_it_has_a_default() -> None:
    assert referenced_variables("${A} $B ${C:-x} ${D-y} ${E:?needed} $$F ${G?}") == [
        ("A", False), ("B", False), ("C", True), ("D", True), ("E", False), ("G", False)]
    assert referenced_variables(["--api-key", "${KEY}", 8000]) == [("KEY", False)]
    assert referenced_variables("no references") == []


def test_redact_replaces_every_secret() -> None:
    assert redact("key=abcd1234 again abcd1234", {"abcd1234"}) == f"key={REDACTED} again {REDACTED}"


def test_grid_paths_are_relative_to_the_grid_file(tmp_path: Path) -> None:
    (tmp_path / "compose").mkdir()
    shutil.copy(MEDIUM, tmp_path / "compose" / "medium.yml")
    grid, deployer = compose_grid(tmp_path, {"file": "compose/medium.yml", "service": SERVICE}, [{"name": "c"}])
    deployer._grid_dir = grid.path.parent
    assert deployer.compose_file == tmp_path / "compose" / "medium.yml"
    assert project_name_for(deployer.compose_file) == "compose"


def test_plan_shows_the_compose_command_and_override_without_docker(tmp_path: Path) -> None:
    grid, deployer = compose_grid(tmp_path, {"file": str(MEDIUM), "service": SERVICE, "project_name": "p"},
                                  [{"name": "c", "max_num_seqs": 4}])
    plan = deployer.plan(grid.configs[0])
    assert plan["compose"][-3:] == ["up", "-d", SERVICE] and "-p" in plan["compose"]
    assert option_value(plan["command"], "max_num_seqs") == "4"
    assert "max-num-seqs" in plan["override"]


def test_the_port_is_read_from_the_command_compose_ran_not_the_files_reference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLMGRID_TEST_PORT", raising=False)
    (tmp_path / ".env").write_text("VLLMGRID_TEST_PORT=8123\n")  # compose reads it: the container runs 8123
    compose_file = tmp_path / "c.yml"
    compose_file.write_text(yaml.safe_dump({"services": {SERVICE: {
        "image": "x", "command": ["--served-model-name", "m", "--port", "${VLLMGRID_TEST_PORT:-8000}"]}}}))
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE}, [{"name": "c"}])

    @dataclass
    class Container:  # what the docker SDK returns for the container compose started (attrs: `docker inspect`)
        attrs: dict[str, Any]
        name: str = "c-1"

        def reload(self) -> None:
            pass
    started = compose_module._Started("c", tmp_path, compose_module.DeploymentLog(None, set()), container=Container(
        {"Config": {"Cmd": ["--served-model-name", "m", "--port", "8123"]}, "HostConfig": {"NetworkMode": "host"},
         "State": {"Status": "running"}}))
    assert deployer._endpoint_for(grid.configs[0], started).base_url == "http://127.0.0.1:8123"


def test_base_url_comes_from_host_networking_or_the_published_port() -> None:
    host = {"HostConfig": {"NetworkMode": "host"}}
    published = {"HostConfig": {"NetworkMode": "bridge"},
                 "NetworkSettings": {"Ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18000"}]}}}
    assert container_base_url(host, 8001) == "http://127.0.0.1:8001"
    assert container_base_url(published, 8000) == "http://127.0.0.1:18000"
    assert container_base_url(published, 9000) is None


def test_death_reason_names_exit_code_oom_kill_and_restart() -> None:
    running = {"State": {"Status": "running", "Running": True}, "RestartCount": 0}
    exited = {"State": {"Status": "exited", "ExitCode": 2}, "RestartCount": 0}
    oom = {"State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True}, "RestartCount": 0}
    restarted = {"State": {"Status": "running", "ExitCode": 1}, "RestartCount": 1}
    assert death_reason_of(running, 0) is None
    assert death_reason_of(exited, 0) == "container exited (exit code 2)"
    assert "OOM-killed" in death_reason_of(oom, 0)
    assert "restarted" in death_reason_of(restarted, 0)


def test_owner_label_tells_a_live_run_from_a_killed_one() -> None:
    host, pid, started = owner_label().split(":")
    assert not owner_is_gone(owner_label())
    assert owner_is_gone(f"{host}:{pid}:{float(started) - 100:.2f}")  # same pid, another process
    assert not owner_is_gone(f"another-host:{pid}:0")  # other hosts' containers are not ours to judge


def test_no_engine_gives_a_preflight_error_saying_how_to_start_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(DeploymentError) as caught:
        docker_client()
    assert caught.value.kind == "preflight"
    assert "no Docker engine answers" in caught.value.message and "scripts/docker-engine.sh" in caught.value.message


# ---- a real engine, real vLLM: two good configs around one that exits on a bad flag --------------


@dataclass
class ConfigOutcome:
    """What deploying one config through compose gave."""

    deployment: Deployment | None = None
    error: DeploymentError | None = None
    seconds: float = 0.0
    chat: RequestRecord | None = None
    container_cmd: list[str] = field(default_factory=list)
    unauthenticated_status: int | None = None
    down_seconds: float | None = None


@dataclass
class ComposeRun:
    """The outcome of running a three-config grid through compose on the example medium.yml."""

    project: str
    api_key: str
    workdir: Path
    outcomes: dict[str, ConfigOutcome]
    file_hash_before: str
    file_hash_after: str
    left_after: list[str]


@pytest.fixture(scope="module")
def compose_run(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRun]:
    """Deploy seqs4, bad_flag, seqs8_noprefix in turn through compose, as the plugin would."""
    tmp = tmp_path_factory.mktemp("compose_run")
    project = f"vgtest{os.getpid()}"
    key = "sk-" + secrets.token_hex(16)
    env_file = tmp / "vllm.env"
    env_file.write_text(f"VLLM_API_KEY={key}\n")  # only there: compose must get it through --env-file
    grid, deployer = compose_grid(
        tmp, {"file": str(MEDIUM), "service": SERVICE, "project_name": project, "env_file": str(env_file)},
        [{"name": "seqs4", "max_num_seqs": 4, "max_model_len": 1024},
         {"name": "bad_flag", "extra_args": ["--no-such-flag"]},
         {"name": "seqs8_noprefix", "max_num_seqs": 8, "enable_prefix_caching": False}],
        model="@tiny", startup_timeout_s=360)
    before = sha256(MEDIUM)
    outcomes: dict[str, ConfigOutcome] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VLLM_API_KEY", raising=False)
        mp.setenv("VLLMGRID_PORT", str(free_port()))
        try:
            deployer.preflight(grid)
            for cfg in grid.configs:
                outcomes[cfg.name] = deploy_and_measure(deployer, cfg, tmp / "results" / cfg.name)
            left = project_containers(docker_engine, project)
        finally:
            for outcome in outcomes.values():
                if outcome.deployment is not None:
                    outcome.deployment.teardown()
            remove_project(docker_engine, project)
    yield ComposeRun(project, key, tmp / "results", outcomes, before, sha256(MEDIUM), left)


def deploy_and_measure(deployer: ComposeDeployer, cfg: ServerConfig, workdir: Path) -> ConfigOutcome:
    """Deploy one config, send it a streamed chat and an unauthenticated request, tear it down."""
    outcome = ConfigOutcome()
    start = time.monotonic()
    try:
        outcome.deployment = deployer.deploy(cfg, workdir)
    except DeploymentError as exc:
        outcome.error = exc
        outcome.seconds = time.monotonic() - start
        return outcome
    outcome.seconds = time.monotonic() - start
    outcome.chat = stream_chat(outcome.deployment)
    outcome.container_cmd = deployer.containers(config_name=cfg.name)[0].attrs["Config"]["Cmd"]
    outcome.unauthenticated_status = httpx.get(f"{outcome.deployment.endpoint.base_url}/v1/models").status_code
    down_start = time.monotonic()
    outcome.deployment.teardown()
    outcome.down_seconds = time.monotonic() - down_start
    return outcome


@pytest.mark.docker
def test_each_good_config_serves_a_streamed_chat_completion(compose_run: ComposeRun) -> None:
    for name in ("seqs4", "seqs8_noprefix"):
        chat = compose_run.outcomes[name].chat
        assert chat is not None and chat.ok, (name, chat and chat.error)
        assert chat.ttft is not None and chat.completion_tokens and chat.completion_tokens > 0


@pytest.mark.docker
def test_the_container_runs_the_grids_flags_over_the_files(compose_run: ComposeRun) -> None:
    cmd = compose_run.outcomes["seqs4"].container_cmd
    assert option_value(cmd, "max_num_seqs") == "4" and "16" not in cmd
    assert option_value(cmd, "max_model_len") == "1024"
    assert option_value(cmd, "served_model_name") == SERVICE and "--enforce-eager" in cmd
    other = compose_run.outcomes["seqs8_noprefix"].container_cmd
    assert option_value(other, "max_num_seqs") == "8" and "--no-enable-prefix-caching" in other


@pytest.mark.docker
def test_a_bad_flag_fails_fast_quoting_vllms_unrecognized_arguments_line(compose_run: ComposeRun) -> None:
    outcome = compose_run.outcomes["bad_flag"]
    assert outcome.deployment is None and outcome.error is not None
    assert outcome.error.kind == "exited" and outcome.error.exit_code == 2
    assert "unrecognized arguments: --no-such-flag" in outcome.error.summary()
    assert outcome.error.log_path == compose_run.workdir / "bad_flag" / CONTAINER_LOG_FILE
    assert outcome.seconds < 90


@pytest.mark.docker
def test_the_config_after_a_failed_one_still_deploys(compose_run: ComposeRun) -> None:
    outcome = compose_run.outcomes["seqs8_noprefix"]
    assert outcome.error is None and outcome.chat is not None and outcome.chat.ok


@pytest.mark.docker
def test_the_users_compose_file_is_byte_identical_afterwards(compose_run: ComposeRun) -> None:
    assert compose_run.file_hash_after == compose_run.file_hash_before


@pytest.mark.docker
def test_no_container_of_the_project_is_left(compose_run: ComposeRun) -> None:
    assert compose_run.left_after == []


@pytest.mark.docker
def test_each_config_keeps_its_override_container_log_and_deployment_log(compose_run: ComposeRun) -> None:
    for name in ("seqs4", "bad_flag", "seqs8_noprefix"):
        folder = compose_run.workdir / name
        assert (folder / OVERRIDE_FILE).is_file() and (folder / DEPLOYMENT_LOG_FILE).is_file()
        assert (folder / CONTAINER_LOG_FILE).stat().st_size > 0, name
    assert "Application startup complete" in (compose_run.workdir / "seqs4" / CONTAINER_LOG_FILE).read_text()


@pytest.mark.docker
def test_the_api_key_is_enforced_and_written_nowhere(compose_run: ComposeRun) -> None:
    assert compose_run.outcomes["seqs4"].unauthenticated_status == 401
    for path in compose_run.workdir.rglob("*"):
        if path.is_file():
            assert compose_run.api_key not in path.read_text(errors="replace"), path
    assert compose_run.api_key not in compose_run.outcomes["bad_flag"].error.details()


@pytest.mark.docker
def test_startup_and_down_seconds_are_recorded(compose_run: ComposeRun) -> None:
    for name in ("seqs4", "seqs8_noprefix"):
        outcome = compose_run.outcomes[name]
        assert 0 < outcome.deployment.startup_seconds <= outcome.seconds
        assert outcome.deployment.describe["teardown_seconds"] >= 0
        print(f"{name}: ready after {outcome.deployment.startup_seconds:.1f} s "
              f"(healthy {outcome.deployment.describe['healthy_after_s']} s), down {outcome.down_seconds:.1f} s")
    print(f"bad_flag: failed after {compose_run.outcomes['bad_flag'].seconds:.1f} s")


# ---- a real engine, a fake vLLM (tests/fake_vllm.py) in the same image ---------------------------


def stub_compose_file(folder: Path, port: int, healthcheck: str) -> Path:
    """A compose file whose service runs the fake vLLM on the host network, with a given healthcheck."""
    folder.mkdir(parents=True, exist_ok=True)
    mounts = sorted({os.environ.get("VLLMGRID_PYTHON_HOME") or compose_module.host_variables()["VLLMGRID_PYTHON_HOME"],
                     compose_module.host_variables()["VLLMGRID_VENV"], str(REPO)})
    service = {
        "image": IMAGE,
        "entrypoint": ["${VLLMGRID_PYTHON}", str(REPO / "tests" / "fake_vllm.py"), "serve", "stub-model"],
        "command": ["--served-model-name", "stub", "--port", str(port), "--max-num-seqs", "16"],
        "volumes": [f"{path}:{path}:ro" for path in mounts],
        "network_mode": "host",
        "init": True,
        "healthcheck": {"test": ["CMD", healthcheck], "interval": "1s", "timeout": "2s", "retries": 1},
    }
    path = folder / "stub.yml"
    path.write_text(yaml.safe_dump({"services": {SERVICE: service}}, sort_keys=False))
    return path


@pytest.fixture
def stub_project(docker_engine: Any) -> Iterator[str]:
    """A unique compose project name, force-removed after the test whatever happened."""
    project = f"vgstub{os.getpid()}{secrets.token_hex(3)}"
    yield project
    remove_project(docker_engine, project)


@pytest.mark.docker
def test_a_failing_healthcheck_times_out_naming_it_with_the_container_log(
        docker_engine: Any, stub_project: str, tmp_path: Path) -> None:
    compose_file = stub_compose_file(tmp_path / "stub", free_port(), "false")
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE,
                                             "project_name": stub_project},
                                  [{"name": "unhealthy"}], model="stub-model", startup_timeout_s=15)
    deployer.preflight(grid)
    with pytest.raises(DeploymentError) as caught:
        deployer.deploy(grid.configs[0], tmp_path / "results")
    assert caught.value.kind == "timeout"
    assert "healthcheck" in caught.value.message and "'unhealthy'" in caught.value.message
    assert "fake vllm: serve stub-model" in caught.value.log_tail
    assert (tmp_path / "results" / CONTAINER_LOG_FILE).is_file()
    assert project_containers(docker_engine, stub_project) == []


@pytest.mark.docker
def test_an_interrupted_deploy_leaves_no_container(docker_engine: Any, stub_project: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    compose_file = stub_compose_file(tmp_path / "stub", free_port(), "true")
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE,
                                             "project_name": stub_project},
                                  [{"name": "interrupted"}], model="stub-model", startup_timeout_s=30)

    def interrupt(*args: Any, **kwargs: Any) -> None:
        assert project_containers(docker_engine, stub_project), "the container should be up when Ctrl+C comes"
        raise KeyboardInterrupt
    monkeypatch.setattr(compose_module, "wait_until_ready", interrupt)
    with pytest.raises(KeyboardInterrupt):
        deployer.deploy(grid.configs[0], tmp_path / "results")
    assert project_containers(docker_engine, stub_project) == []


@pytest.mark.docker
def test_restore_brings_back_the_users_unmodified_service(docker_engine: Any, stub_project: str,
                                                          tmp_path: Path) -> None:
    compose_file = stub_compose_file(tmp_path / "stub", free_port(), "true")
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE,
                                             "project_name": stub_project},
                                  [{"name": "seqs2", "max_num_seqs": 2}], model="stub-model", startup_timeout_s=30)
    deployer.preflight(grid)
    deployment = deployer.deploy(grid.configs[0], tmp_path / "results")
    assert option_value(deployer.containers()[0].attrs["Config"]["Cmd"], "max_num_seqs") == "2"
    deployment.teardown()
    message = deployer.restore()
    (container,) = deployer.containers()
    assert container.status == "running" and "healthy" in message
    assert option_value(container.attrs["Config"]["Cmd"], "max_num_seqs") == "16"
    assert CONFIG_LABEL not in container.labels


@pytest.mark.docker
def test_preflight_removes_containers_a_killed_run_left(docker_engine: Any, stub_project: str,
                                                          tmp_path: Path) -> None:
    dead_owner = owner_label().rsplit(":", 1)[0] + ":0.00"
    docker_engine.containers.create(IMAGE, ["sleep", "60"], labels={
        PROJECT_LABEL: stub_project, "com.docker.compose.service": SERVICE, CONFIG_LABEL: "c", OWNER_LABEL: dead_owner})
    compose_file = stub_compose_file(tmp_path / "stub", free_port(), "true")
    grid, deployer = compose_grid(tmp_path, {"file": str(compose_file), "service": SERVICE,
                                             "project_name": stub_project}, [{"name": "c"}], model="stub-model")
    deployer.preflight(grid)
    assert len(deployer.reaped) == 1
    assert project_containers(docker_engine, stub_project) == []


@pytest.mark.docker
def test_preflight_rejects_a_file_compose_cannot_read(docker_engine: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"services": {SERVICE: {"image": IMAGE, "ports": "not-a-list"}}}))
    grid, deployer = compose_grid(tmp_path, {"file": str(broken), "service": SERVICE}, [{"name": "c"}],
                                  model="stub-model")
    with pytest.raises(DeploymentError) as caught:
        deployer.preflight(grid)
    assert caught.value.kind == "preflight" and "config` rejects" in caught.value.message


@pytest.mark.docker
def test_preflight_names_a_service_the_file_lacks(docker_engine: Any, tmp_path: Path) -> None:
    grid, deployer = compose_grid(tmp_path, {"file": str(MEDIUM), "service": "medium"}, [{"name": "c"}])
    with pytest.raises(DeploymentError) as caught:
        deployer.preflight(grid)
    assert "has no service 'medium'" in caught.value.message and SERVICE in caught.value.message
