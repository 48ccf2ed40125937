"""The extension hooks (pytest_vllmgrid/hookspec.py), end to end through pytester: a conftest.py adds a deployer
kind and report sections/columns. These are also the documented examples (docs/architecture.md, "Extension points")."""

from __future__ import annotations

import json

import pytest

from pytest_vllmgrid.deploy import deployer_kinds, make_deployer
from pytest_vllmgrid.deploy.process import ProcessDeployer
from pytest_vllmgrid.grid import GridError, load_grid
from pytest_vllmgrid.report import extensions

from conftest import fake_grid

# A user's conftest.py: a new deployer kind "mykind" (here the process deployer, logging what it is asked to do;
# a Kubernetes or Slurm deployer returns its own Deployment the same way) and extra report content.
CONFTEST = '''
from dataclasses import dataclass
from pathlib import Path

from pytest_vllmgrid.deploy.process import ProcessDeployer

CALLS = Path(__file__).parent / "mykind-calls.txt"


def log(line):
    with CALLS.open("a") as fh:
        fh.write(line + "\\n")


@dataclass
class MyKindDeployer(ProcessDeployer):
    name: str = "mykind"

    def deploy(self, config, workdir):
        log(f"deploy {config.name}")
        return super().deploy(config, workdir)


def pytest_vllmgrid_deployer_kinds():
    return ["mykind"]


def pytest_vllmgrid_make_deployer(kind, options, grid_spec):
    if kind != "mykind":
        return None  # not ours: the next implementation (at last the built-in ones) decides
    log(f"make {kind} model={grid_spec.model}")
    return MyKindDeployer(options)


def pytest_vllmgrid_report_sections(results, grid):
    lines = [f"- {name}: {data.status}, {len(data.tests)} tests" for name, data in results.items()]
    return [("Site notes", "Configs seen by the conftest:\\n\\n" + "\\n".join(lines))]


def pytest_vllmgrid_report_columns(results):
    return [("Owner", {name: "team-" + name for name in results})]
'''

ONE_TEST = """
def test_answers(vllm_endpoint):
    assert vllm_endpoint.model == "tiny"
"""


def calls(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "mykind-calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_a_conftest_deployer_kind_deploys_the_grid_and_report_hooks_reach_report_md(pytester, write_grid):
    pytester.makeconftest(CONFTEST)
    grid = write_grid(fake_grid([{"name": "baseline"}, {"name": "other", "max_num_seqs": 2}], deployer="mykind"))
    pytester.makepyfile(test_bench=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert calls(pytester) == ["make mykind model=fake-model", "deploy baseline", "deploy other"]
    out = pytester.path / "out"
    assert json.loads((out / "manifest.json").read_text())["deployer"] == "mykind"
    report = (out / "report.md").read_text()
    assert "\n## Site notes\n\nConfigs seen by the conftest:\n\n- baseline: complete, 1 tests\n- other: complete" in report
    header = next(line for line in report.splitlines() if line.startswith("| Rank |"))
    assert header.endswith("| Owner |")
    baseline_row = next(line for line in report.splitlines() if "| **baseline** |" in line)
    assert baseline_row.endswith("| team-baseline |")
    ext = json.loads((out / "report.json").read_text())["extensions"]
    assert ext["sections"][0]["title"] == "Site notes"
    assert ext["columns"] == [{"title": "Owner", "cells": {"baseline": "team-baseline", "other": "team-other"}}]


def test_vllm_deployer_accepts_a_conftest_kind(pytester, write_grid):
    pytester.makeconftest(CONFTEST)
    grid = write_grid(fake_grid([{"name": "baseline"}]))  # deployer: process, overridden on the command line
    pytester.makepyfile(test_bench=ONE_TEST)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--vllm-deployer", "mykind", "--vllm-dry-run",
                                           "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert calls(pytester) == ["make mykind model=fake-model"]  # dry run: built and preflighted, nothing deployed


@pytest.mark.parametrize("where", ["grid", "option"])
def test_an_unknown_kind_is_a_one_line_usage_error_listing_every_allowed_kind(pytester, write_grid, where):
    pytester.makeconftest(CONFTEST)
    grid = write_grid(fake_grid([{"name": "baseline"}], **({"deployer": "mykinf"} if where == "grid" else {})))
    pytester.makepyfile(test_bench=ONE_TEST)
    extra = ["--vllm-deployer", "mykinf"] if where == "option" else []
    result = pytester.runpytest_subprocess("--grid", str(grid), *extra, "--co", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    source = "grid field 'deployer'" if where == "grid" else "--vllm-deployer"
    result.stderr.fnmatch_lines([f'*- {source} = "mykinf": unknown deployer; allowed: process, compose, endpoint, '
                                 'mykind (did you mean mykind?)'])
    assert calls(pytester) == []


def test_without_the_hook_the_builtin_kinds_only(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(fake_grid([{"name": "a"}], deployer="mykind")))
    with pytest.raises(GridError, match="unknown deployer; allowed: process, compose, endpoint$"):
        load_grid(path)
    assert load_grid(path, deployer_kinds=["process", "mykind"]).deployer == "mykind"
    assert deployer_kinds() == ("process", "compose", "endpoint")
    assert isinstance(make_deployer("process", None), ProcessDeployer)
    with pytest.raises(ValueError, match="unknown deployer 'mykind'; allowed: process, compose, endpoint"):
        make_deployer("mykind", None)


def test_hook_results_are_flattened_and_a_malformed_one_names_the_hook():
    ext = extensions([None, ("A", "a"), [("B", "b")], {"C": "c"}], [[("Col", {"x": 1})]])
    assert [s["title"] for s in ext["sections"]] == ["A", "B", "C"]
    assert ext["columns"] == [{"title": "Col", "cells": {"x": "1"}}]
    with pytest.raises(TypeError, match="pytest_vllmgrid_report_sections returned 'oops'"):
        extensions(["oops"], None)
