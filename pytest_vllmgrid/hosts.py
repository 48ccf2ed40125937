"""The pytest side of one grid over several hosts (`--tx ssh=...`): pytest-xdist's hooks on the controller and the
workers, and the config scheduler's answer to a lost host. Imported only where pytest-xdist is (plugin.py); the
plain parts (spec checks, shipping files, the preflight run on a host) are remote.py's. docs/scale-out.md."""

from __future__ import annotations

import dataclasses
from typing import Any

import execnet
import pytest
from xdist.scheduler import LoadScopeScheduling

from pytest_vllmgrid import remote
from pytest_vllmgrid.manifest import package_version
from pytest_vllmgrid.progress import config_of_nodeid
from pytest_vllmgrid.session import STASH_KEY, GridSession

RETIRED_ENV = "VLLMGRID_RETIRED"  # the spec of a worker xdist starts in place of one whose host is lost


def _gs(config: pytest.Config) -> GridSession:
    return config.stash[STASH_KEY]


class LostHostScheduling(LoadScopeScheduling):
    """xdist's scope scheduler (the scope is set by plugin.py: one config), where a worker that dies mid-config
    fails that config instead of running it again elsewhere; the configs it had queued go back to the others,
    or fail too when its host is lost; a worker xdist starts in place of one on a lost host gets no work."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        self.abandoned: dict[str, list[str]] = {}  # crashed test id -> the tests that will not run with it

    def add_node(self, node: Any) -> None:
        super().add_node(node)
        if node.workerinput.get("vllm_retired"):
            node.shutdown()

    def remove_node(self, node: Any) -> str | None:
        workload = self.assigned_work.pop(node)
        pending = [(scope, unit) for scope, unit in workload.items() if not all(unit.values())]
        if not pending:
            return None
        host = node.workerinput.get("vllm_host") or remote.host_of(node.gateway.spec)
        host_lost = host in _gs(self.config).hosts.lost
        (_, running), queued = pending[0], pending[1:]  # a worker runs its configs in the order sent
        left = [nodeid for nodeid, done in running.items() if not done]
        crashitem, self.abandoned[left[0]] = left[0], left[1:]
        for scope, unit in queued:
            if host_lost:  # no worker will come back there, and the others may already be told to finish
                self.abandoned[crashitem] += [nodeid for nodeid, done in unit.items() if not done]
            else:
                self.workqueue[scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return crashitem


# ---- controller --------------------------------------------------------------------------------------

def check_tx(config: pytest.Config) -> None:
    """--tx without -n/--dist distributes (xdist would run everything on the controller); a malformed spec is a
    one-line UsageError naming it."""
    given = list(getattr(config.option, "tx", None) or [])
    if not given or config.option.numprocesses == 0 or hasattr(config, "workerinput"):  # a worker runs, not spreads
        return
    for spec in remote.expand_tx(given):
        problem = remote.tx_problem(spec)
        if problem:
            raise pytest.UsageError(problem)
    if config.option.dist == "no":
        config.option.dist = "load"  # the config scheduler replaces xdist's anyway


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list) -> None:
    """Before any worker starts: the command line remote workers get (remote.worker_args says why)."""
    if not any(remote.is_remote(spec) for spec in specs):
        return
    args, moved = remote.worker_args([str(a) for a in config.invocation_params.args], config.args)
    config.invocation_params = dataclasses.replace(config.invocation_params, args=tuple(args))
    _gs(config).worker_paths = moved


def configure_node(node: Any) -> None:
    """xdist controller, before a worker starts: where its results go (the controller's directory when it shares
    this filesystem, else shipped back), its position on its host (its GPU slice), and on another host the host's
    preflight; a host that fails it is a UsageError naming it, before anything deploys."""
    gs = _gs(node.config)
    spec = node.gateway.spec
    host = remote.host_of(spec)
    if gs.worker_paths is not None:
        node.workerinput["vllm_collect_args"] = list(gs.worker_paths)
    if spec.env.get(RETIRED_ENV):
        node.workerinput["vllm_retired"] = True
        return
    node.workerinput["vllm_local_index"] = gs.hosts.take(host)
    if not remote.is_remote(spec):
        node.workerinput["vllm_results_dir"] = str(gs.results_path())
        return
    node.workerinput["vllm_ship_results"] = True
    node.workerinput["vllm_host"] = host
    if gs.grid is None:
        return
    if node.config.getoption("vllm_resume"):
        node.workerinput["vllm_resume_skip"] = sorted(gs.resume_skip_names())  # every worker deselects alike
    problems = remote.run_host_preflight(node.gateway, _preflight_request(gs, node))
    if problems:
        raise pytest.UsageError(f"{remote.host_label(spec)}: preflight failed: {'; '.join(problems)}")


def _preflight_request(gs: GridSession, node: Any) -> dict[str, Any]:
    opt = node.config.getoption
    from pytest_vllmgrid.deploy import deployer_kinds

    return {
        "grid_option": opt("vllm_grid"), "grid_ini": node.config.getini("vllm_grid") or None,
        "grid_hash": gs.grid.file_hash, "package_version": package_version("pytest-vllmgrid"),
        "overrides": {"model": opt("vllm_model"), "baseline": opt("vllm_baseline"), "deployer": opt("vllm_deployer"),
                      "deployer_kinds": list(deployer_kinds(node.config.hook)),
                      "replicas": int(opt("vllm_replicas") or 1), "endpoint_url": opt("vllm_endpoint_url")},
        "local_indexes": [node.workerinput["vllm_local_index"]], "gpus_per_config": opt("vllm_gpus_per_config"),
        "min_free_disk_gb": float(opt("vllm_min_free_disk_gb") or 5.0), "offline": bool(opt("vllm_offline")),
        "python": node.gateway.spec.python,
    }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """A worker ended: keep what it shipped at its end; one that died on a host that no longer answers is not
    started there again (xdist's replacement becomes a local worker given no work)."""
    gs = _gs(node.config)
    gs.receive_results(getattr(node, "workeroutput", {}).get(remote.SHIPPED))
    spec = node.gateway.spec
    gs.hosts.release(remote.host_of(spec), node.workerinput.get("vllm_local_index"))
    if error is None or not remote.is_remote(spec) or node.workerinput.get("vllm_retired"):
        return
    why = remote.host_reachable(spec)
    if why is None:
        return
    host = remote.host_of(spec)
    gs.hosts.lost[host] = f"{remote.host_label(spec)} was lost ({error}; reconnecting: {why})"
    gs.terminal_line(f"\nvllmgrid: {gs.hosts.lost[host]}: its running config fails, no worker starts there again")
    node.gateway.spec = execnet.XSpec(f"popen//execmodel=main_thread_only//env:{RETIRED_ENV}={host}")


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """The test a dead worker was running: its config fails with the reason (in the results too), and the tests
    of that config (and of the configs a lost host had queued) are reported as not run, for the same reason."""
    config = sched.config
    gs = _gs(config)
    if gs.grid is None:
        return
    names = gs.grid.names
    spec = report.node.gateway.spec  # on a lost host already xdist's local stand-in: the host is in workerinput
    reason = gs.hosts.lost.get(report.node.workerinput.get("vllm_host") or remote.host_of(spec)) or \
        f"worker {report.node.gateway.id} on {remote.host_label(spec)} crashed"
    name = config_of_nodeid(crashitem, names)
    report.when = "call"  # counted like a benchmark's outcome (progress lines, the summary)
    report.longrepr = f"{reason} while running config {name}; the config failed"
    failed = {name}
    for nodeid in getattr(sched, "abandoned", {}).pop(crashitem, []):
        other = config_of_nodeid(nodeid, names)
        failed.add(other)
        rep = pytest.TestReport(nodeid=nodeid, location=(nodeid.split("::")[0], None, nodeid), keywords={},
                                outcome="failed", when="call",
                                longrepr=f"not run: {reason} while running config {name}")
        rep.node = report.node
        config.hook.pytest_runtest_logreport(report=rep)
    for lost in sorted(n for n in failed if n):
        gs.config_lost(lost, f"{reason} while running config {name}" if lost == name else
                       f"not run: {reason} while running config {name}")


class ShippedResults:
    """xdist controller: the result files remote workers ship on their test reports, written into the results
    directory and taken off the report (junitxml and other plugins never see them)."""

    def __init__(self, gs: GridSession) -> None:
        self.gs = gs

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        shipped = [value for key, value in report.user_properties if key == remote.SHIPPED]
        if not shipped:
            return
        report.user_properties[:] = [(k, v) for k, v in report.user_properties if k != remote.SHIPPED]
        for files in shipped:
            self.gs.receive_results(files)


# ---- worker ----------------------------------------------------------------------------------------------

def configure_worker(config: pytest.Config) -> None:
    """A worker collects the test paths the controller moved off its command line (relative to its chdir)."""
    paths = getattr(config, "workerinput", {}).get("vllm_collect_args")
    if paths is not None:
        config.args = list(paths) or config.args


def ship_on(report: pytest.TestReport, gs: GridSession) -> None:
    """A remote worker: its changed result files ride on this report to the controller."""
    files = gs.ship_results()
    if files:
        report.user_properties.append((remote.SHIPPED, files))


def ship_at_end(config: pytest.Config, gs: GridSession) -> None:
    """A remote worker's last files go in its workeroutput; its scratch copy is then removed."""
    if gs.shipment is None or not hasattr(config, "workeroutput"):
        return
    config.workeroutput[remote.SHIPPED] = gs.ship_results()
    gs.shipment.discard()
