"""The README's commands do what it says: the set-up commands, the endpoint deployer against a running server,
the three-line compose grid, and the reports it names."""

from __future__ import annotations

import re
import shlex
import shutil

from pytest_vllmgrid.grid import load_grid

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)]


def section(title: str) -> str:
    return README.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def test_the_set_up_section_has_exactly_the_two_commands():
    assert code_blocks(section("## Set up and run")) == ["./scripts/install.sh && .venv/bin/pytest benchmarks/\n",
                                                         "./scripts/install.sh && .venv/bin/pytest tests/\n"]


def test_the_endpoint_example_measures_a_running_server_and_writes_the_three_reports(pytester):
    from fault_server import FaultServerProcess

    [block] = code_blocks(section("### A server you already run"))
    [command] = [line.split("#", 1)[0] for line in block.splitlines() if line.startswith("pytest ")]
    argv = shlex.split(command)[1:]
    assert argv[:1] == ["benchmarks/"] and "--vllm-endpoint-url" in argv
    shutil.copy(REPO / "benchmarks" / "test_ttft.py", pytester.path / "test_ttft.py")
    with FaultServerProcess("ok", model="served-model", max_lifetime_s=90) as server:
        argv = ["test_ttft.py" if a == "benchmarks/" else server.base_url if a.startswith("http://") else a
                for a in argv]
        result = pytester.runpytest_subprocess(*argv, "-k", "short", "--vllm-repetitions", "3",
                                               "--results-dir", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    out = pytester.path / "out"
    assert (out / "endpoint.json").exists()
    for name in ("report.md", "report.json", "report.html"):
        assert name in README and (out / name).stat().st_size > 0


def test_the_three_line_compose_grid_loads_as_two_configs(tmp_path):
    [block] = code_blocks(section("### Your docker compose file"))
    assert len(block.splitlines()) == 3
    (tmp_path / "medium.yml").write_text("services:\n  medium-qwen3:\n    image: vllm/vllm-openai\n")
    (tmp_path / "grid.yaml").write_text(block)
    grid = load_grid(tmp_path / "grid.yaml")
    assert grid.deployer == "compose" and grid.spec.compose.service == "medium-qwen3"
    assert [c.vllm_args() for c in grid.configs] == [["--no-enable-prefix-caching"], ["--enable-prefix-caching"]]
