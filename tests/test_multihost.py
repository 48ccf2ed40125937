"""One grid over two hosts through pytest-xdist's SSH gateways (--tx ssh=...), for real: each "host" is its own
OpenSSH sshd on a loopback address (127.0.0.2, 127.0.0.3) with its own host key, port, authorized_keys, working
directory (a copy of the suite) and venv path; the servers are tests/fake_vllm.py through the process deployer.
Results travel back on xdist's channel only: the controller's --results-dir is the one results directory.

Without /usr/sbin/sshd these skip, saying so; .ci/run installs OpenSSH and sets VLLMGRID_REQUIRE_SSHD=1, so there a
missing or broken sshd fails them instead. The real-vLLM wall-time comparison (one host vs two) is opt-in:
VLLMGRID_MULTIHOST_REAL=1 (it takes minutes on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAKE_VLLM, REPO
from loopback_sshd import start_hosts, sshd_problem

pytest.importorskip("xdist")

ADDRESSES = {"hostA": "127.0.0.2", "hostB": "127.0.0.3"}
SUITE = """
import os, time
from pathlib import Path

def test_where(vllm_config, vllm_session, vllm_endpoint):
    # on the host: this run's results go to the worker's own scratch, under its working directory
    assert Path(vllm_session.results_path()).is_relative_to(Path.cwd() / ".vllmgrid" / "scratch")
    assert (Path(vllm_session.results_path()) / f"{vllm_config.name}.json").is_file()

def test_hold(vllm_config, vllm_endpoint):
    hold = Path.cwd() / "HOLD"  # the kill test makes one host hold its config here until it is killed
    if hold.exists():
        (Path.cwd() / f"holding-{vllm_config.name}").write_text(str(os.getpid()))
        time.sleep(120)
"""


def fake_host_grid(names: list[str]) -> dict:
    """Each host serves with its own copy of the fake vLLM ({grid_dir}: the host's working directory)."""
    return {"model": "fake-model", "served_model_name": "tiny", "deployer": "process",
            "vllm_command": ["{python}", "{grid_dir}/fake_vllm.py", "serve"], "startup_timeout_s": 30,
            "benchmarks": {"repetitions": 3, "warmup": 1, "max_tokens": 8},
            "configs": [{"name": n, "env": {"FAKE_NAME": n}} for n in names]}


@pytest.fixture
def hosts(tmp_path: Path):
    """Two sshd "hosts", stopped at teardown; the ssh_config that reaches them by alias."""
    problem = sshd_problem()
    if problem:
        if os.environ.get("VLLMGRID_REQUIRE_SSHD"):
            pytest.fail(f"VLLMGRID_REQUIRE_SSHD is set but sshd cannot run: {problem}")
        pytest.skip(f"no loopback ssh hosts: {problem}")
    started, ssh_config = start_hosts(tmp_path / "hosts", Path(sys.prefix), ADDRESSES)
    yield started, ssh_config
    for host in started:
        host.stop()


def tx(host, ssh_config: Path, python: Path | None = None) -> list[str]:
    return ["--tx", f"ssh={host.alias}//ssh_config={ssh_config}//python={python or host.venv / 'bin' / 'python'}"
                    f"//chdir={host.workdir}"]


def place_suite(directory: Path, grid: dict) -> None:
    """The same suite and grid in a directory (the controller's, or a host's working directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test_x.py").write_text(SUITE)
    (directory / "grid.json").write_text(json.dumps(grid))
    for source in (FAKE_VLLM, FAKE_VLLM.parent / "fault_server.py"):
        shutil.copy(source, directory / source.name)


def controller(tmp_path: Path, started, grid: dict) -> Path:
    ctl = tmp_path / "controller"
    for where in [ctl, *(h.workdir for h in started)]:
        place_suite(where, grid)
    return ctl


def pytest_argv(started, ssh_config: Path, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "test_x.py", "--grid", "grid.json", "--results-dir", "out",
            "-p", "no:cacheprovider", "-p", "no:randomly", "--timeout", "150"]
    for host in started:
        argv += tx(host, ssh_config)
    return argv + list(extra)


def results_left_on(host) -> list[str]:
    """Files on a host that are results (config JSON, logs, reports, manifests), outside the suite copied there."""
    suite = {"test_x.py", "grid.json", "fake_vllm.py", "fault_server.py", "HOLD"}
    out = []
    for path in host.workdir.rglob("*"):
        rel = path.relative_to(host.workdir)
        if path.is_dir() or rel.parts[0] in ("pytest", "_pytest", "__pycache__") or rel.name in suite \
                or rel.name.startswith("holding-"):
            continue  # xdist's own rsync of pytest itself, bytecode, the suite
        out.append(str(rel))
    return out


def test_two_configs_on_two_hosts_report_on_the_controller_only(hosts, tmp_path):
    started, ssh_config = hosts
    ctl = controller(tmp_path, started, fake_host_grid(["a", "b"]))
    proc = subprocess.run(pytest_argv(started, ssh_config), cwd=ctl, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout
    out = ctl / "out"
    ran_on = {}
    for name in ("a", "b"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["status"] == "complete"
        assert set(result["tests"]) == {"where", "hold"}
        ran_on[name] = result["deployment"]["xdist_host"]
        log = Path(result["deployment"]["log_path"])
        assert log == (out / name / "server.log").resolve() and "non-default args" in log.read_text()
    assert sorted(ran_on.values()) == ["hostA", "hostB"]  # one config per host
    assert {c["name"] for c in json.loads((out / "report.json").read_text())["configs"]} == {"a", "b"}
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    for host in started:  # nothing of the run stays on a host: its scratch was shipped and removed
        assert results_left_on(host) == []
        assert not (host.workdir / "out").exists()


def test_a_host_killed_mid_config_fails_that_config_and_the_other_completes(hosts, tmp_path):
    started, ssh_config = hosts
    host_a, host_b = started
    ctl = controller(tmp_path, started, fake_host_grid(["a", "b"]))
    (host_b.workdir / "HOLD").write_text("hold the config in test_hold until the host dies")
    log = (tmp_path / "controller.log").open("w")
    proc = subprocess.Popen(pytest_argv(started, ssh_config), cwd=ctl, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not list(host_b.workdir.glob("holding-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        holding = list(host_b.workdir.glob("holding-*"))
        assert holding, (tmp_path / "controller.log").read_text()[-3000:]
        victim = holding[0].name.removeprefix("holding-")
        killed = host_b.kill()  # sshd, its session, the worker and its server, all at once
        assert len(killed) >= 3
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "controller.log").read_text()
    other = "a" if victim == "b" else "b"
    assert proc.returncode == 1, output[-4000:]
    assert re.search(r"vllmgrid: host hostB \(--tx ssh=hostB\) was lost .*its running config fails", output), output
    assert f"FAILED test_x.py::test_hold[{victim}]" in output
    assert re.search(rf"host hostB \(--tx ssh=hostB\) was lost \(.*\) while running config {victim}; the config "
                     "failed", output), output[-3000:]
    out = ctl / "out"
    lost = json.loads((out / f"{victim}.json").read_text())
    assert lost["status"] == "failed"
    assert "host hostB (--tx ssh=hostB) was lost" in lost["errors"][-1]["message"]
    assert lost["tests"]["where"]["status"] == "passed"  # what it finished before the host died came back
    done = json.loads((out / f"{other}.json").read_text())
    assert done["status"] == "complete" and done["deployment"]["xdist_host"] == "hostA"
    assert set(done["tests"]) == {"where", "hold"}
    report = json.loads((out / "report.json").read_text())
    assert {c["name"]: c["status"] for c in report["configs"]} == {victim: "failed", other: "complete"}
    assert results_left_on(host_a) == []


def test_a_malformed_tx_is_one_line_naming_it(tmp_path):
    place_suite(tmp_path, fake_host_grid(["a"]))
    for spec, says in (("ssh=hostA//pyhton=/x/python", "unknown key 'pyhton'"),
                       ("ssh=//python=/x/python", "ssh= needs a host"),
                       ("ssh=h//ssh_config=/nonexistent/cfg", "ssh_config /nonexistent/cfg does not exist")):
        proc = subprocess.run([sys.executable, "-m", "pytest", "test_x.py", "--grid", "grid.json", "--tx", spec,
                               "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        assert errors == [f"ERROR: --tx {spec!r}: " + errors[0].split(": ", 2)[2]] and says in errors[0], proc.stderr
    assert not (tmp_path / "results").exists()


def venv_without_vllm(base: Path) -> Path:
    """A venv with this one's packages but vLLM: its site-packages links every entry except vllm's."""
    base_python = Path(os.path.realpath(sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = base / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (base / "bin").mkdir()
    (base / "bin" / "python").symlink_to(base_python)
    (base / "pyvenv.cfg").write_text(f"home = {base_python.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {sys.version.split()[0]}\n")
    ours = Path(sys.prefix) / "lib" / version / "site-packages"
    for entry in ours.iterdir():
        if not entry.name.lower().startswith("vllm"):
            (site / entry.name).symlink_to(entry)
    return base / "bin" / "python"


def test_a_host_without_vllm_stops_the_run_before_anything_deploys(hosts, tmp_path):
    started, ssh_config = hosts
    grid = {"model": "@tiny", "served_model_name": "tiny", "deployer": "process", "startup_timeout_s": 60,
            "configs": [{"name": "a"}, {"name": "b"}]}  # the default launcher: vLLM itself
    ctl = controller(tmp_path, started, grid)
    no_vllm = venv_without_vllm(tmp_path / "novllm")
    argv = [sys.executable, "-m", "pytest", "test_x.py", "--grid", "grid.json", "--results-dir", "out",
            "-p", "no:cacheprovider", *tx(started[0], ssh_config), *tx(started[1], ssh_config, python=no_vllm)]
    proc = subprocess.run(argv, cwd=ctl, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ERROR: host hostB (--tx ssh=hostB): preflight failed: vLLM is not importable by {no_vllm}" in proc.stderr
    assert not (ctl / "out").exists()  # nothing deployed, nothing written
    assert results_left_on(started[0]) == [] and results_left_on(started[1]) == []


REAL_GRID = """name: multihost-tiny
model: "@tiny"
served_model_name: tiny
deployer: process
startup_timeout_s: 600
baseline: baseline
env: {VLLM_CPU_KVCACHE_SPACE: "1"}
defaults: {enforce_eager: true, max_model_len: 2048}
configs:
  - {name: baseline, enable_prefix_caching: false}
  - {name: prefix_caching, enable_prefix_caching: true}
"""


@pytest.mark.vllm
@pytest.mark.skipif(not os.environ.get("VLLMGRID_MULTIHOST_REAL"), reason="real vLLM on one host vs two: minutes; "
                    "set VLLMGRID_MULTIHOST_REAL=1 (docs/scale-out.md has the figures)")
def test_real_vllm_two_configs_one_host_vs_two(hosts, tmp_path):
    started, ssh_config = hosts
    times = {}
    for label, used in (("one host", started[:1]), ("two hosts", started)):
        ctl = tmp_path / label.replace(" ", "-")
        for where in [ctl, *(h.workdir for h in used)]:
            where.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / "benchmarks" / "test_ttft.py", where / "test_ttft.py")
            (where / "grid.yaml").write_text(REAL_GRID)
        argv = [sys.executable, "-m", "pytest", "test_ttft.py", "-k", "short", "--grid", "grid.yaml", "--results-dir",
                "out", "-p", "no:cacheprovider", "--vllm-repetitions", "6", "--vllm-warmup", "1",
                "--vllm-thresholds", str(REPO / "tests" / "data" / "no-thresholds.yaml"), "-rxX"]
        for host in used:
            argv += tx(host, ssh_config)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=ctl, capture_output=True, text=True, timeout=1200)
        times[label] = round(time.monotonic() - start, 1)
        (tmp_path / f"{label.replace(' ', '-')}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        results = {n: json.loads((ctl / "out" / f"{n}.json").read_text()) for n in ("baseline", "prefix_caching")}
        assert all(r["status"] == "complete" for r in results.values())
        assert len({r["deployment"]["xdist_host"] for r in results.values()}) == len(used)
        times[label + " startup s"] = [r["deployment"]["startup_time_seconds"] for r in results.values()]
        for host in used:
            shutil.rmtree(host.workdir)
            host.workdir.mkdir()
    print(f"\nmultihost wall times: {json.dumps(times)}")
    record = os.environ.get("VLLMGRID_MULTIHOST_TIMES")
    if record:
        Path(record).write_text(json.dumps(times, indent=2))


def test_resume_on_the_controllers_directory_reruns_only_the_unfinished_config(hosts, tmp_path):
    started, ssh_config = hosts
    grid = fake_host_grid(["a", "b"])
    grid["vllm_command"] = [sys.executable, str(FAKE_VLLM), "serve"]  # the same path on every host: the same config
    ctl = controller(tmp_path, started, grid)  # hash ({grid_dir} would differ from host to host)
    first = subprocess.run(pytest_argv(started, ssh_config), cwd=ctl, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout[-3000:]
    out = ctl / "out"
    interrupted = json.loads((out / "b.json").read_text())
    interrupted["status"] = "interrupted"  # as a Ctrl+C during b would leave it
    (out / "b.json").write_text(json.dumps(interrupted))
    kept = (out / "a.json").read_bytes()
    again = subprocess.run(pytest_argv(started, ssh_config, "--resume"), cwd=ctl, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "2 passed" in again.stdout and "[2 items]" in again.stdout  # only b's tests, on whichever host
    assert (out / "a.json").read_bytes() == kept  # the complete config was not touched
    rerun = json.loads((out / "b.json").read_text())
    assert rerun["status"] == "complete" and rerun["timestamp"] >= interrupted["timestamp"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumes"]) == 1
    assert manifest["resumes"][0]["configs"] == ["b"]


def test_gpu_sets_are_sliced_per_host_not_by_global_worker_number(hosts, tmp_path):
    """Two workers on each host, 2 GPUs per config out of each host's 4: gw2 and gw3 are that host's workers 0
    and 1 (devices 0,1 and 2,3); sliced by the global number they would ask for devices 4..7 and fail."""
    started, ssh_config = hosts
    ctl = controller(tmp_path, started, fake_host_grid(["a", "b", "c", "d"]))
    argv = [sys.executable, "-m", "pytest", "test_x.py", "--grid", "grid.json", "--results-dir", "out",
            "-p", "no:cacheprovider", "--vllm-gpus-per-config", "2", "--timeout", "150"]
    for host in started:
        argv += ["--tx", f"2*ssh={host.alias}//ssh_config={ssh_config}//python={host.venv / 'bin' / 'python'}"
                         f"//chdir={host.workdir}//env:CUDA_VISIBLE_DEVICES=0,1,2,3"]
    proc = subprocess.run(argv, cwd=ctl, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    placed = {}
    for name in "abcd":
        result = json.loads((ctl / "out" / f"{name}.json").read_text())
        deployment = result["deployment"]
        assert result["status"] == "complete" and "xdist_host" in deployment, (name, result, proc.stdout[-3000:])
        placed[name] = (deployment["xdist_host"], deployment["worker"], ",".join(deployment["gpu_devices"]))
    assert {gpus for _, _, gpus in placed.values()} <= {"0,1", "2,3"}
    by_worker = {(host, worker): gpus for host, worker, gpus in placed.values()}
    for host in ("hostA", "hostB"):  # a host's two workers got disjoint halves of its devices
        sets = [gpus for (h, _), gpus in by_worker.items() if h == host]
        assert len(sets) == len(set(sets)), placed
    assert any(worker in ("gw2", "gw3") for _, worker, _ in placed.values()), placed


def test_a_shipped_file_outside_the_results_directory_is_refused_and_changed_files_ship_once(tmp_path):
    from pytest_vllmgrid import remote

    scratch = tmp_path / "scratch"
    (scratch / "a").mkdir(parents=True)
    (scratch / "a.json").write_text('{"deployment": {"log_path": "/h/work/.vllmgrid/scratch/uid1/gw0/a/server.log"}}')
    (scratch / "a" / "server.log").write_text("x" * (remote.MAX_SHIPPED_CHARS + 10))
    (scratch / "manifest.json").write_text("{}")
    shipment = remote.Shipment(scratch)
    first = shipment.changed()
    assert sorted(first) == ["a.json", "a/server.log"]  # never the worker's manifest
    assert len(first["a/server.log"]) == remote.MAX_SHIPPED_CHARS  # a long log ships its tail
    assert shipment.changed() == {}  # unchanged files are not shipped again
    out = tmp_path / "out"
    remote.receive(out, first)
    assert json.loads((out / "a.json").read_text())["deployment"]["log_path"] == f"{out.resolve()}/a/server.log"
    for bad in ("../escape.json", "/abs.json", "manifest.json"):
        with pytest.raises(ValueError, match="outside the results directory"):
            remote.receive(out, {bad: "{}"})
    assert not (tmp_path / "escape.json").exists()


def test_paths_on_the_command_line_reach_remote_workers_as_given(tmp_path):
    from pytest_vllmgrid import remote

    (tmp_path / "g.yaml").write_text("")
    (tmp_path / "benchmarks").mkdir()
    exists = lambda p: (tmp_path / p).exists()  # noqa: E731
    args = ["benchmarks", "--grid", "g.yaml", "-k", "short", "--results-dir=out", "-c", "g.yaml"]
    assert remote.worker_args(args, ["benchmarks"], exists) == (
        ["--grid=g.yaml", "-k", "short", "--results-dir=out", "-cg.yaml"], ["benchmarks"])
