"""pytest hooks and options of pytest-vllmgrid (entry point pytest11); logic lives in plain modules."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pytest_vllmgrid import gate
from pytest_vllmgrid.load import interrupt_running_loop
from pytest_vllmgrid.progress import config_of_nodeid
from pytest_vllmgrid.results import result_key
from pytest_vllmgrid.session import INTERRUPTED, STASH_KEY, STOP_REASON, GridSession

pytest_plugins = ["pytest_vllmgrid.fixtures"]

# (option, ini key / dest, help, kwargs)
_OPTIONS: list[tuple[list[str], str, str, dict]] = [
    (["--grid", "--vllm-grid"], "vllm_grid", "grid file (JSON or YAML) of vLLM server configs; "
     "default: the ini key vllm_grid, else the embedded CPU tiny-model grid", {}),
    (["--results-dir", "--vllm-results-dir"], "vllm_results_dir",
     "where results and reports go (default results/<timestamp>/ under the rootdir)", {}),
    (["--vllm-model"], "vllm_model", "override the grid's model (path or id)", {}),
    (["--vllm-baseline"], "vllm_baseline", "override the grid's baseline config name", {}),
    (["--vllm-deployer"], "vllm_deployer", "override the grid's deployer: process, compose or endpoint",
     {"choices": ["process", "compose", "endpoint"]}),
    (["--vllm-startup-timeout"], "vllm_startup_timeout", "seconds to wait for a server to be ready "
     "(default: the grid's startup_timeout_s, 600)", {"type": float}),
    (["--vllm-api-key-env"], "vllm_api_key_env", "name of the environment variable holding the API key", {}),
    (["--vllm-compose-file", "--compose-file"], "vllm_compose_file", "compose file of the vLLM service", {}),
    (["--vllm-compose-service"], "vllm_compose_service", "compose service running vLLM", {}),
    (["--vllm-compose-project"], "vllm_compose_project", "compose project name", {}),
    (["--vllm-compose-env-file"], "vllm_compose_env_file", "env file passed to compose", {}),
    (["--vllm-endpoint-url"], "vllm_endpoint_url", "base URL of an already-running server (deployer endpoint)", {}),
    (["--vllm-min-free-disk-gb"], "vllm_min_free_disk_gb", "compose preflight: free disk needed (GB)",
     {"type": float, "default": 5.0}),
    (["--vllm-restore"], "vllm_restore", "compose: bring the user's original service back up at the end",
     {"action": "store_true"}),
    (["--vllm-repetitions"], "vllm_repetitions", "measured requests per metric (benchmark setting repetitions)",
     {"type": int}),
    (["--vllm-warmup"], "vllm_warmup", "warm-up requests sent and discarded before measuring", {"type": int}),
    (["--vllm-bench"], "vllm_bench", "benchmark setting KEY=VALUE (repeatable), e.g. prefix_tokens=2048",
     {"action": "append"}),
    (["--vllm-thresholds"], "vllm_thresholds", "thresholds file (YAML/JSON); default: the grid's `thresholds:`", {}),
    (["--vllm-baseline-run"], "vllm_baseline_run", "judge relative thresholds against the baseline of this "
     "stored results directory instead of this run's", {}),
    (["--vllm-dry-run"], "vllm_dry_run", "validate grid and thresholds, run the deployer's preflight, print each "
     "config's exact command line and estimated duration; deploy nothing", {"action": "store_true"}),
    (["--vllm-stop-when-met"], "vllm_stop_when_met", "skip the remaining configs once one meets the thresholds "
     "file's `goal` (also the grid key stop_when_met)", {"action": "store_true"}),
    (["--vllm-gpus-per-config"], "vllm_gpus_per_config", "with pytest -n N: GPUs each worker's server gets, "
     "a disjoint slice of CUDA_VISIBLE_DEVICES (or NVML's list)", {"type": int}),
    (["--vllm-port-base"], "vllm_port_base", "with pytest -n N: worker gwI serves on ports BASE+100*I..+99 "
     "(default 20000)", {"type": int}),
    (["--vllm-resume", "--resume"], "vllm_resume", "resume an interrupted run (DIR, or the latest under "
     "results/ when no DIR is given): configs complete with the same config hash are skipped",
     {"nargs": "?", "const": "latest"}),
    (["--vllm-compare"], "vllm_compare", "regression gate: compare every benchmark with the same config/test of "
     "this stored results directory (a comparison table is printed); repeatable or comma-separated for several "
     "runs of the same deployment (recommended: the last 3), judged with the run as the unit",
     {"action": "append"}),
    (["--vllm-compare-fail"], "vllm_compare_fail", "regression gate METRIC:PCT (repeatable; PCT in percent), e.g. "
     "ttft_p50:10, throughput:5, ttft[long].ttft_ms:p95:15: fail a benchmark whose metric is worse than "
     "--vllm-compare's by more than PCT and significantly (CI of the change: across runs when several are "
     "compared, else a bootstrap of the raw samples)",
     {"action": "append"}),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """One group, one prefix; every option also an ini key of the same name."""
    group = parser.getgroup("vllmgrid", "vLLM grid benchmarks (pytest-vllmgrid)")
    for flags, dest, help_text, kwargs in _OPTIONS:
        kwargs = dict(kwargs)
        default = kwargs.pop("default", None)
        group.addoption(*flags, dest=dest, default=None, help=help_text, **kwargs)
        parser.addini(dest, help=help_text, default=default)


def _getopt(config: pytest.Config, dest: str):
    """Command line first, then ini, with the option's type."""
    value = config.getoption(dest, None)
    if value is None or value is False:
        ini = config.getini(dest)
        if ini not in (None, "", []):
            if isinstance(ini, str) and ini.lower() in ("true", "false"):
                return ini.lower() == "true"
            return ini
    return value


def pytest_unconfigure(config: pytest.Config) -> None:
    """Forget this run's session (pytester runs several in one process)."""
    gs = config.stash.get(STASH_KEY, None)
    if gs in _PROGRESS_SESSIONS:
        _PROGRESS_SESSIONS.remove(gs)


def pytest_configure(config: pytest.Config) -> None:
    """Create the run's session object and turn SIGTERM into a clean interrupt."""
    config.addinivalue_line("markers", "vllm_benchmark(name): a benchmark measured against each grid config")
    for _, dest, _, _ in _OPTIONS:  # fold ini values into the option namespace: one lookup everywhere
        setattr(config.option, dest, _getopt(config, dest))
    config.stash[STASH_KEY] = GridSession(config)
    gate.configure_gate(config)
    if config.getoption("htmlpath", None):
        from pytest_vllmgrid.report.html import PytestHtmlSections

        config.pluginmanager.register(PytestHtmlSections(config), "vllmgrid-html")
    _PROGRESS_SESSIONS.append(config.stash[STASH_KEY])
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _sigterm_to_interrupt(signum, frame) -> None:
    """SIGTERM is Ctrl+C: a KeyboardInterrupt, except during a benchmark, whose event loop is asked to cancel
    its main task and raise KeyboardInterrupt once it has unwound (load.interrupt_running_loop says why)."""
    if not interrupt_running_loop():
        raise KeyboardInterrupt("SIGTERM")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate an explicitly given grid before collecting anything."""
    gs = session.config.stash[STASH_KEY]
    if session.config.getoption("vllm_grid") or session.config.getini("vllm_grid"):
        gs.load()
        gs.bench_settings()
        gs.thresholds()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The grid and where results go."""
    gs = config.stash[STASH_KEY]
    if gs.grid is None:
        return []
    return [f"vllmgrid: grid {gs.grid.path} ({len(gs.grid.configs)} configs, baseline {gs.grid.baseline}, "
            f"deployer {gs.grid.deployer})"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `vllm_config` by the grid, session-scoped, ids = config names."""
    if "vllm_config" not in metafunc.fixturenames:
        return
    grid = metafunc.config.stash[STASH_KEY].load()
    metafunc.parametrize("vllm_config", list(grid.configs), ids=[c.name for c in grid.configs],
                         scope="session", indirect=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With pytest -n N, every test of one config goes to one worker, configs in run order (baseline first).

    A scope-per-config scheduler (xdist's LoadScopeScheduling keyed by config name), rather than
    `--dist loadgroup`: loadgroup renames node ids, which pytest 9 no longer honours.
    """
    from xdist.scheduler import LoadScopeScheduling

    names = config.stash[STASH_KEY].load().names

    class ConfigScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return config_of_nodeid(nodeid, names) or nodeid

    return ConfigScheduling(config, log)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """On --resume, deselect configs already complete."""
    gs = config.stash[STASH_KEY]
    if gs.grid is not None and config.getoption("vllm_resume"):
        _deselect_completed(config, gs, items)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker writes into the controller's results directory (made by the first worker
    that deploys a config: a run without grid tests leaves nothing behind)."""
    gs = node.config.stash[STASH_KEY]
    node.workerinput["vllm_results_dir"] = str(gs.results_path())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Preflight the deployer before the first deploy; count tests for the progress lines."""
    gs = session.config.stash[STASH_KEY]
    if gs.grid is None or gs.is_worker:
        return
    selected = [item for item in session.items if _item_config(item) is not None]
    if selected and not session.config.option.collectonly and not session.config.getoption("vllm_dry_run"):
        gs.get_deployer()  # a failing preflight is a UsageError here, before anything starts
    gs.start_progress([item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Under xdist the controller learns the test ids from the workers."""
    gs = node.config.stash[STASH_KEY]
    if gs.progress is None and gs.grid is not None:
        gs.start_progress(list(ids))


def pytest_runtest_logstart(nodeid: str, location) -> None:
    """A test starts: the first of a config means its server is being deployed."""
    gs = _session_of_progress()
    if gs is not None:
        gs.progress.test_started(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Progress: ready time, each benchmark's mark, the config's end and the ETA."""
    gs = _session_of_progress()
    if gs is None:
        return
    props = dict(report.user_properties)
    outcome = "error" if report.when == "setup" and report.failed else report.outcome
    gs.progress.test_finished(report.nodeid, report.when, outcome, props.get("vllmgrid_deploy"),
                              props.get("vllmgrid_headline"))


_PROGRESS_SESSIONS: list = []


def _session_of_progress():
    """The GridSession whose progress is being shown in this process, if any."""
    gs = _PROGRESS_SESSIONS[-1] if _PROGRESS_SESSIONS else None
    return gs if gs is not None and gs.progress is not None else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """--vllm-dry-run: preflight, print each selected config's plan and estimate, run nothing."""
    config = session.config
    if not config.getoption("vllm_dry_run"):
        return None
    gs = config.stash[STASH_KEY]
    if gs.grid is None:
        return True
    names = {c.name for item in session.items if (c := _item_config(item)) is not None}
    for line in gs.dry_run_lines(names, tests=len(session.items)):
        gs._terminal_line(line)
    return True


def _deselect_completed(config: pytest.Config, gs, items: list[pytest.Item]) -> None:
    """Drop the tests of configs whose stored result is complete with the same config hash."""
    gs.results_root()
    done = gs.store.completed_hashes() if gs.store else {}
    skip_names = {c.name for c in gs.grid.configs if done.get(c.name) == c.config_hash()}
    if not skip_names:
        return
    kept, dropped = [], []
    for item in items:
        cfg = _item_config(item)
        (dropped if cfg is not None and cfg.name in skip_names else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        gs._terminal_line(f"vllmgrid: resume: {len(skip_names)} config(s) already complete: "
                          f"{', '.join(sorted(skip_names))}")
        if not kept:
            config.stash[NOTHING_LEFT] = True
            gs._terminal_line("vllmgrid: resume: nothing left to run; the run is complete (reports rewritten)")


def _item_config(item: pytest.Item):
    """The grid config an item runs against, or None."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("vllm_config") if callspec else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After a benchmark passed, fail it when --vllm-compare finds a significant regression."""
    result = yield
    cfg = _item_config(item)
    if cfg is not None:
        gate.check_regression(item.config, item.config.stash[STASH_KEY].store, cfg.name, result_key(item))
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Store each benchmark's outcome with its config; stop the run if the baseline failed."""
    outcome = yield
    report = outcome.get_result()
    cfg = _item_config(item)
    if cfg is None:
        return
    gs = item.config.stash[STASH_KEY]
    run = gs.runs.get(cfg.name)
    if report.when == "setup" and run is not None and run.deployment is not None and not run.reported:
        run.reported = True
        report.user_properties.append(("vllmgrid_deploy", {
            "startup_time_seconds": round(run.deployment.startup_seconds, 1)}))
    if report.when == "call" or (report.when == "setup" and not report.passed):
        status = "passed" if report.passed else ("skipped" if report.skipped else
                                                 ("failed" if report.when == "call" else "error"))
        message = None if report.passed else _one_line(report)
        gs.record_outcome(cfg.name, result_key(item), status, message, report.duration)
    reason = item.config.stash.get(STOP_REASON, None)
    if reason:
        item.session.shouldstop = reason


def _one_line(report: pytest.TestReport) -> str:
    """A failure's reason on one line: no traceback, no assertion rewriting's detail, no log tail."""
    longrepr = report.longrepr
    if hasattr(longrepr, "reprcrash") and longrepr.reprcrash is not None:
        return (longrepr.reprcrash.message.strip().splitlines() or [""])[0]
    if isinstance(longrepr, tuple):  # skipped: (path, line, reason)
        return str(longrepr[-1])
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tear down every server, then write the manifest and the reports."""
    config = session.config
    gs = config.stash[STASH_KEY]
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        config.stash[INTERRUPTED] = True
    gs.teardown_all()
    if gs.is_worker:
        return
    if gs.store is None and gs._results_path is not None and any(gs._results_path.glob("*.json")):
        gs.load()
        gs.results_root()  # xdist controller: the workers filled it
    if gs.grid is None or gs.store is None:
        return
    status = "interrupted" if config.stash.get(INTERRUPTED, False) else (
        "failed" if config.stash.get(STOP_REASON, None) else "complete")
    gs.write_manifest(status)
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and config.stash.get(NOTHING_LEFT, False):
        session.exitstatus = pytest.ExitCode.OK  # resuming a finished run succeeds (a CI retry), not "no tests"
    gate.record_run(config, gs.store)
    from pytest_vllmgrid.report import write_reports

    config.stash[REPORT_PATHS] = write_reports(gs.store, gs.grid)


REPORT_PATHS = pytest.StashKey[dict]()
NOTHING_LEFT = pytest.StashKey[bool]()  # --resume found every selected config complete


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The ranked table and where each report file is."""
    gs = config.stash[STASH_KEY]
    paths = config.stash.get(REPORT_PATHS, None)
    if not paths or gs.store is None:
        return
    from pytest_vllmgrid.report import terminal_table

    terminalreporter.section("vllmgrid")
    for line in terminal_table(gs.store, gs.grid):
        terminalreporter.write_line(line)
    reason = config.stash.get(STOP_REASON, None)
    if reason:
        terminalreporter.write_line(f"run stopped: {reason}", red=True)
    for kind, path in paths.items():
        terminalreporter.write_line(f"{kind} report: {Path(path)}")
    for line, bad in gate.terminal_lines(config, gs.store):
        terminalreporter.write_line(line, red=bad)
