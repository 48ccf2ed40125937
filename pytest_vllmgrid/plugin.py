"""pytest hooks and options of pytest-vllmgrid (entry point pytest11); logic lives in plain modules."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pytest_vllmgrid import gate
from pytest_vllmgrid.deploy import Deployment
from pytest_vllmgrid.load import interrupt_running_loop
from pytest_vllmgrid.progress import config_of_nodeid
from pytest_vllmgrid.judge import NotConclusive
from pytest_vllmgrid.results import ResultsStore, result_key
from pytest_vllmgrid.session import STASH_KEY, GridSession, item_config

pytest_plugins = ["pytest_vllmgrid.fixtures"]

# (option, ini key / dest, help, kwargs)
_OPTIONS: list[tuple[list[str], str, str, dict]] = [
    (["--grid", "--vllm-grid"], "vllm_grid", "grid file (JSON or YAML) of vLLM server configs; "
     "default: the ini key vllm_grid, else the embedded CPU tiny-model grid", {}),
    (["--results-dir", "--vllm-results-dir"], "vllm_results_dir",
     "where results and reports go (default results/<timestamp>/ under the rootdir)", {}),
    (["--vllm-model"], "vllm_model", "override the grid's model (path or id)", {}),
    (["--vllm-inconclusive"], "vllm_inconclusive", "what a benchmark whose figures could not decide "
     "(inconclusive: the 95%% CI straddles a bound; invalid: the method's precondition failed) becomes: "
     "xfail (default: shown as x with the reason, the run passes) or fail (a CI gate)",
     {"choices": ["xfail", "fail"], "default": None}),
    (["--vllm-baseline"], "vllm_baseline", "override the grid's baseline config name", {}),
    (["--vllm-deployer"], "vllm_deployer", "override the grid's deployer: process, compose, endpoint or a kind "
     "of a plugin's pytest_vllmgrid_deployer_kinds hook", {}),
    (["--vllm-startup-timeout"], "vllm_startup_timeout", "seconds to wait for a server to be ready "
     "(default: the grid's startup_timeout_s, 600)", {"type": float}),
    (["--vllm-api-key-env"], "vllm_api_key_env", "name of the environment variable holding the API key", {}),
    (["--vllm-compose-file", "--compose-file"], "vllm_compose_file", "compose file of the vLLM service", {}),
    (["--vllm-compose-service"], "vllm_compose_service", "compose service running vLLM", {}),
    (["--vllm-compose-project"], "vllm_compose_project", "compose project name", {}),
    (["--vllm-compose-env-file"], "vllm_compose_env_file", "env file passed to compose", {}),
    (["--vllm-offline"], "vllm_offline", "process deployer: serve with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1, so "
     "a hub model id loads only from the local cache (preflight says how to fetch one that is not there); always "
     "on for the project's own '@' models (also the grid key offline)", {"action": "store_true"}),
    (["--vllm-endpoint-url"], "vllm_endpoint_url", "base URL of an already-running server, e.g. http://127.0.0.1:8000 "
     "(with --vllm-deployer endpoint; replaces a grid's endpoint: section; without --grid: one config, the model the "
     "server lists)", {}),
    (["--vllm-min-free-disk-gb"], "vllm_min_free_disk_gb", "preflight (process, compose): free disk needed (GB)",
     {"type": float, "default": 5.0}),
    (["--vllm-restore"], "vllm_restore", "compose: bring the user's original service back up at the end",
     {"action": "store_true"}),
    (["--vllm-repetitions"], "vllm_repetitions", "measured requests per metric (benchmark setting repetitions)",
     {"type": int}),
    (["--vllm-warmup"], "vllm_warmup", "warm-up requests sent and discarded before measuring", {"type": int}),
    (["--vllm-replicas"], "vllm_replicas", "deploy every config N times, interleaved in time (a, b, a~2, b~2): "
     "the report measures the noise between deployments of the same flags and counts a difference between "
     "configs as significant only beyond it", {"type": int}),
    (["--vllm-noise-from"], "vllm_noise_from", "stored results directory (repeatable or comma-separated) of a run "
     "with twins (an A/A grid such as configs/aa-cpu.yaml, or --vllm-replicas 2): its between-deployment noise "
     "stands for this run's when this run has no twins, so a difference counts as significant only beyond it",
     {"action": "append"}),
    (["--vllm-bench"], "vllm_bench", "benchmark setting KEY=VALUE (repeatable), e.g. prefix_tokens=2048",
     {"action": "append"}),
    (["--vllm-thresholds"], "vllm_thresholds", "thresholds file (YAML/JSON); default: the grid's `thresholds:`", {}),
    (["--vllm-baseline-run"], "vllm_baseline_run", "judge relative thresholds against the baseline of this "
     "stored results directory instead of this run's (default: this run's; where it measured nothing, e.g. "
     "deselected, the latest complete run of the same grid name; else 'not judged', never a pass)", {}),
    (["--vllm-dry-run"], "vllm_dry_run", "validate grid and thresholds, run the deployer's preflight, print each "
     "config's exact command line and an estimated duration (from an earlier run of the same grid and model, else "
     "none); deploy nothing", {"action": "store_true"}),
    (["--vllm-stop-when-met"], "vllm_stop_when_met", "skip the remaining configs once one meets the thresholds "
     "file's `goal` (also the grid key stop_when_met)", {"action": "store_true"}),
    (["--vllm-gpus-per-config"], "vllm_gpus_per_config", "with pytest -n N: GPUs each worker's server gets, "
     "a disjoint slice of CUDA_VISIBLE_DEVICES (or NVML's list)", {"type": int}),
    (["--vllm-port-base"], "vllm_port_base", "with pytest -n N: worker gwI serves on ports BASE+100*I..+99 "
     "(default 20000)", {"type": int}),
    (["--vllm-resume", "--resume"], "vllm_resume", "resume an interrupted run (DIR; with no DIR: "
     "--results-dir when given, else the latest unfinished run under results/): configs complete with the same config hash are skipped",
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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """The extension hooks of hookspec.py (deployer kinds, report sections and columns)."""
    from pytest_vllmgrid import hookspec
    from pytest_vllmgrid.deploy import builtin

    pluginmanager.add_hookspecs(hookspec)
    if not pluginmanager.is_registered(builtin):
        pluginmanager.register(builtin, "vllmgrid-builtin-deployers")  # process / compose / endpoint


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


def pytest_configure(config: pytest.Config) -> None:
    """Create the run's session object and turn SIGTERM into a clean interrupt."""
    for _, dest, _, kwargs in _OPTIONS:  # fold ini values into the option namespace: one lookup everywhere
        setattr(config.option, dest, _typed(dest, _getopt(config, dest), kwargs))
    policy = config.getoption("vllm_inconclusive")
    if policy not in (None, "xfail", "fail"):
        raise pytest.UsageError(f"ini vllm_inconclusive = {policy!r}: allowed values: xfail, fail")
    gs = config.stash[STASH_KEY] = GridSession(config)
    configure_gate(config)
    if config.getoption("htmlpath", None):
        from pytest_vllmgrid.html_hooks import PytestHtmlSections

        config.pluginmanager.register(PytestHtmlSections(config), "vllmgrid-html")
    config.pluginmanager.register(ProgressHooks(gs), "vllmgrid-progress")  # this run's own: pytester runs several
    if config.pluginmanager.hasplugin("xdist"):  # --tx workers on other hosts (hosts.py)
        from pytest_vllmgrid import hosts

        config.pluginmanager.register(hosts, f"vllmgrid-hosts-{id(config)}")
        if not gs.is_worker:
            config.pluginmanager.register(hosts.ShippedResults(gs), "vllmgrid-shipped-results")
        hosts.configure_worker(config)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)


def _typed(dest: str, value, kwargs: dict):
    """An ini value (a string) with its option's type: a number, or a list for a repeatable option."""
    if not isinstance(value, str):
        return value
    if kwargs.get("action") == "append":
        return value.split()
    kind = kwargs.get("type")
    if kind is None:
        return value
    try:
        return kind(value)
    except ValueError:
        raise pytest.UsageError(f"ini {dest} = {value!r}: expected {'an integer' if kind is int else 'a number'}") \
            from None


def _sigterm_to_interrupt(signum, frame) -> None:
    """SIGTERM is Ctrl+C: a KeyboardInterrupt, except during a benchmark, whose event loop is asked to cancel
    its main task and raise KeyboardInterrupt once it has unwound (load.interrupt_running_loop says why)."""
    if not interrupt_running_loop():
        raise KeyboardInterrupt("SIGTERM")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """--tx specs checked (one line naming a malformed one); --tx alone distributes (hosts.check_tx)."""
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "tx", None):
        from pytest_vllmgrid import hosts

        hosts.check_tx(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate the grid and every --vllm-* option before collecting (so before deploying) anything, whenever
    a grid or any of those options is given (a test suite that uses none of them is left alone)."""
    config = session.config
    given = [config.getoption(dest) for _, dest, _, kwargs in _OPTIONS if "default" not in kwargs]
    if any(value is not None and value is not False and value != [] for value in given):
        config.stash[STASH_KEY].validate()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The grid and where results go."""
    gs = config.stash[STASH_KEY]
    if gs.grid is None:
        return []
    return [f"vllmgrid: grid {gs.grid.path} ({len(gs.grid.configs)} configs, baseline {gs.grid.baseline}, "
            f"deployer {gs.grid.deployer})"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `vllm_config` by the grid, session-scoped, ids = config names; and a grid test's `concurrency`
    argument (unless a parametrize mark gives it) by the benchmark settings' `concurrency` levels, ids = levels;
    and `kv_prefix_tokens` by the settings' `kv_prefix_tokens` list when one is set (else its fixture's value)."""
    if "vllm_config" not in metafunc.fixturenames:
        return
    gs = metafunc.config.stash[STASH_KEY]
    if "concurrency" in metafunc.fixturenames and not _parametrized_by_mark(metafunc, "concurrency"):
        levels = gs.bench_settings().concurrency
        metafunc.parametrize("concurrency", levels, ids=[str(level) for level in levels])
    prefixes = gs.bench_settings().kv_prefix_tokens
    if "kv_prefix_tokens" in metafunc.fixturenames and prefixes and not _parametrized_by_mark(metafunc, "kv_prefix_tokens"):
        metafunc.parametrize("kv_prefix_tokens", prefixes, ids=[str(n) for n in prefixes])
    grid = gs.load()
    metafunc.parametrize("vllm_config", list(grid.configs), ids=[c.name for c in grid.configs],
                         scope="session", indirect=True)


def _parametrized_by_mark(metafunc: pytest.Metafunc, argname: str) -> bool:
    """A @pytest.mark.parametrize of the test (or its class/module) names `argname`."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if argname in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return True
    return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With pytest -n N, every test of one config goes to one worker, configs in run order (baseline first).

    A scope-per-config scheduler (xdist's LoadScopeScheduling keyed by config name), rather than
    `--dist loadgroup`: loadgroup renames node ids, which pytest 9 no longer honours.
    """
    from pytest_vllmgrid.hosts import LostHostScheduling

    names = config.stash[STASH_KEY].load().names

    class ConfigScheduling(LostHostScheduling):  # a worker lost mid-config fails that config (hosts.py)
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
    """xdist controller: a worker on this machine writes into the controller's results directory (made by the first
    worker that deploys a config: a run without grid tests leaves nothing behind); one on another host ships its
    results back and passes that host's preflight first (hosts.configure_node)."""
    from pytest_vllmgrid import hosts

    hosts.configure_node(node)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Preflight the deployer before the first deploy; count tests for the progress lines."""
    gs = session.config.stash[STASH_KEY]
    if gs.grid is None or gs.is_worker:
        return
    selected = [item for item in session.items if item_config(item) is not None]
    if selected and not session.config.option.collectonly and not session.config.getoption("vllm_dry_run"):
        gs.get_deployer({item_config(item).name for item in selected})  # a failing preflight is a UsageError
        # here, before anything starts
    gs.start_progress([item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Under xdist the controller learns the test ids from the workers."""
    gs = node.config.stash[STASH_KEY]
    if gs.progress is None and gs.grid is not None:
        gs.start_progress(list(ids))


class ProgressHooks:
    """The live progress lines' hooks, registered per run by pytest_configure (their hooks get no config)."""

    def __init__(self, gs: GridSession) -> None:
        self.gs = gs

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        """A test starts: the first of a config means its server is being deployed."""
        if self.gs.progress is not None:
            self.gs.progress.test_started(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Progress: ready time, each benchmark's mark, the config's end and the ETA."""
        if self.gs.progress is None:
            return
        props = dict(report.user_properties)
        outcome = "error" if report.when == "setup" and report.failed else (
            "inconclusive" if hasattr(report, "wasxfail") else report.outcome)
        self.gs.progress.test_finished(report.nodeid, report.when, outcome, props.get("vllmgrid_deploy"),
                                       props.get("vllmgrid_headline"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """--vllm-dry-run: preflight, print each selected config's plan and estimate, run nothing."""
    config = session.config
    if not config.getoption("vllm_dry_run"):
        return None
    gs = config.stash[STASH_KEY]
    if gs.grid is None:
        return True
    names = {c.name for item in session.items if (c := item_config(item)) is not None}
    for line in gs.dry_run_lines(names, tests=len(session.items)):
        gs.terminal_line(line)
    return True


def _deselect_completed(config: pytest.Config, gs, items: list[pytest.Item]) -> None:
    """Drop the tests of configs whose stored result is complete with the same config hash."""
    skip_names = gs.resume_skip_names()
    if not skip_names:
        return
    kept, dropped = [], []
    for item in items:
        cfg = item_config(item)
        (dropped if cfg is not None and cfg.name in skip_names else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        gs.terminal_line(f"vllmgrid: resume: {len(skip_names)} config(s) already complete: "
                         f"{', '.join(sorted(skip_names))}")
        if not kept:
            gs.nothing_left = True
            gs.terminal_line("vllmgrid: resume: nothing left to run; the run is complete (reports rewritten)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After a benchmark ran, fail it when --vllm-compare finds a significant regression; a benchmark whose
    figures could not decide is never a pass: xfail with the reason, or a failure (--vllm-inconclusive fail)."""
    unsure: NotConclusive | None = None
    try:
        result = yield
    except NotConclusive as exc:
        unsure, result = exc, None
    cfg = item_config(item)
    if cfg is not None:
        check_regression(item.config, cfg.name, result_key(item))
    if unsure is not None:
        if (item.config.getoption("vllm_inconclusive") or "xfail") == "fail":
            pytest.fail(f"not conclusive: {unsure}", pytrace=False)
        pytest.xfail(f"not conclusive: {unsure}")
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Store each benchmark's outcome with its config; stop the run if the baseline failed."""
    outcome = yield
    report = outcome.get_result()
    cfg = item_config(item)
    if cfg is None:
        return
    gs = item.config.stash[STASH_KEY]
    run = gs.runs.get(cfg.name)
    if report.when == "setup" and run is not None and run.deployment is not None and not run.reported:
        run.reported = True
        report.user_properties.append(("vllmgrid_deploy", {
            "startup_time_seconds": round(run.deployment.startup_seconds, 1)}))
    if report.when == "call" and report.failed and run is not None and run.deployment is not None:
        died = _death_during_the_test(run.deployment)
        if died is not None:  # the cause, in place of the client's traceback (a closed transport, a disconnect)
            report.longrepr = f"server died during the benchmark ({died}); log: {run.deployment.log_path}"
    if report.when == "call" or (report.when == "setup" and not report.passed):
        status = "passed" if report.passed else ("inconclusive" if hasattr(report, "wasxfail") else
                                                 "skipped" if report.skipped else
                                                 ("failed" if report.when == "call" else "error"))
        message = None if report.passed else _one_line(report)
        gs.record_outcome(cfg.name, result_key(item), status, message, report.duration)
    if gs.shipment is not None:  # a worker on another host: its results go to the controller on this report
        from pytest_vllmgrid import hosts

        hosts.ship_on(report, gs)
    if gs.stop_reason:
        item.session.shouldstop = gs.stop_reason


def _death_during_the_test(deployment: Deployment, settle_s: float = 0.5) -> str | None:
    """Why the server of a failed benchmark is gone, or None while it runs: a server that dropped its
    connections is given `settle_s` to be seen exiting."""
    if deployment.torn_down:
        return None
    deadline = time.monotonic() + settle_s
    while (reason := deployment.death_reason()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return reason


def _one_line(report: pytest.TestReport) -> str:
    """A failure's reason on one line: no traceback, no assertion rewriting's detail, no log tail."""
    longrepr = report.longrepr
    if hasattr(longrepr, "reprcrash") and longrepr.reprcrash is not None:
        return (longrepr.reprcrash.message.strip().splitlines() or [""])[0]
    if getattr(report, "wasxfail", None):  # a benchmark whose figures could not decide
        return str(report.wasxfail)
    if isinstance(longrepr, tuple):  # skipped: (path, line, reason)
        return str(longrepr[-1])
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tear down every server, then write the manifest and the reports."""
    config = session.config
    gs = config.stash[STASH_KEY]
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        gs.interrupted = True
    gs.teardown_all()
    if gs.is_worker:
        if gs.shipment is not None:
            from pytest_vllmgrid import hosts

            hosts.ship_at_end(config, gs)
        return
    gs.open_filled_results()  # xdist controller: the workers filled it
    if gs.grid is None or gs.store is None:
        return
    gs.write_manifest(gs.run_status())
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and gs.nothing_left:
        session.exitstatus = pytest.ExitCode.OK  # resuming a finished run succeeds (a CI retry), not "no tests"
    record_run(config, gs.store)
    from pytest_vllmgrid.report import write_reports

    results = gs.store.all_configs()  # hooks' results go in as plain data: the report package knows no pytest
    gs.report_paths = write_reports(
        gs.store, gs.grid, sections=config.hook.pytest_vllmgrid_report_sections(results=results, grid=gs.grid),
        columns=config.hook.pytest_vllmgrid_report_columns(results=results, grid=gs.grid))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The ranked table and where each report file is."""
    gs = config.stash[STASH_KEY]
    paths = gs.report_paths
    if not paths or gs.store is None:
        return
    from pytest_vllmgrid.report import terminal_table

    terminalreporter.section("vllmgrid")
    for line in terminal_table(gs.store, gs.grid):
        terminalreporter.write_line(line)
    if gs.stop_reason:
        terminalreporter.write_line(f"run stopped: {gs.stop_reason}", red=True)
    for kind, path in paths.items():
        terminalreporter.write_line(f"{kind} report: {Path(path)}")
    for line, bad in terminal_lines(config, gs.store):
        terminalreporter.write_line(line, red=bad)


# ---- regression gate glue (--vllm-compare; the judging is gate.py's) -------------------------------

def configure_gate(config: pytest.Config) -> None:
    """Read --vllm-compare / --vllm-compare-fail into the run's regression gate; mistakes are UsageErrors."""
    dirs = gate.run_dirs(config.getoption("vllm_compare", None))
    raw_specs = config.getoption("vllm_compare_fail", None)
    try:
        specs = gate.parse_specs(raw_specs)
        if specs and not dirs:
            raise gate.GateError("--vllm-compare-fail needs --vllm-compare RUN_DIR (the stored run to compare with)")
        if dirs:
            config.stash[STASH_KEY].regression_gate = gate.RegressionGate(gate.open_runs(dirs, "--vllm-compare"),
                                                                          specs)
    except gate.GateError as exc:
        raise pytest.UsageError(str(exc)) from None


def check_regression(config: pytest.Config, cfg_name: str, test_key: str) -> None:
    """Fail the running test when its stored measurement regressed against the compared run(s)."""
    gs = config.stash[STASH_KEY]
    test = gs.pending_test(cfg_name, test_key)
    if gs.regression_gate is None or test is None:
        return
    stored = gs.store.load_config(cfg_name) if gs.store is not None else None  # where this run's server ran
    failed = [v for v in gs.regression_gate.check(test, cfg_name, test_key, stored) if v.failed]
    if failed:
        pytest.fail(f"regression vs {gs.regression_gate.label}: " + "; ".join(v.message() for v in failed),
                    pytrace=False)


def record_run(config: pytest.Config, store: ResultsStore) -> None:
    """Keep the whole comparison in the run manifest (the reports and the terminal summary show it)."""
    regression_gate = config.stash[STASH_KEY].regression_gate
    if regression_gate is not None:
        store.update_manifest(regression_gate=regression_gate.manifest_entry(store).model_dump(mode="json"))


def terminal_lines(config: pytest.Config, store: ResultsStore | None) -> list[tuple[str, bool]]:
    """The comparison table for the terminal summary ([] without --vllm-compare)."""
    regression_gate = config.stash[STASH_KEY].regression_gate
    if regression_gate is None or store is None:
        return []
    entry = store.manifest().regression_gate or regression_gate.manifest_entry(store)
    return gate.summary_lines(entry.verdicts, regression_gate.specs,
                              regression_gate.label)
