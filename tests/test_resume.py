"""Resume: an interrupted run is recorded as such, and --resume finishes it without redoing complete configs."""

from __future__ import annotations

import json

from conftest import fake_grid, read_events, servers_using

INTERRUPT_IN_B = """
import os
def test_x(vllm_endpoint, vllm_config):
    if vllm_config.name == "b" and not os.environ.get("NO_INTERRUPT"):
        raise KeyboardInterrupt
"""


def configs(*names: str, seqs: int = 1) -> list[dict]:
    return [{"name": n, "env": {"FAKE_NAME": n}, "max_num_seqs": seqs} for n in names]


def test_ctrl_c_tears_down_and_marks_the_run_interrupted(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(configs("base", "b", "c"), baseline="base"))
    pytester.makepyfile(test_x=INTERRUPT_IN_B)
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    assert result.ret == 2  # pytest's "interrupted"
    assert read_events(events_file) == ["start base", "stop base", "start b", "stop b"]
    assert servers_using(events_file) == []
    out = pytester.path / "out"
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert json.loads((out / "base.json").read_text())["status"] == "complete"
    assert json.loads((out / "b.json").read_text())["status"] == "interrupted"
    assert (out / "report.md").exists()


def test_resume_redoes_the_interrupted_config_and_skips_complete_ones(pytester, write_grid, events_file, monkeypatch):
    grid = write_grid(fake_grid(configs("base", "b", "c"), baseline="base"))
    pytester.makepyfile(test_x=INTERRUPT_IN_B)
    pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    events_file.unlink()
    monkeypatch.setenv("NO_INTERRUPT", "1")
    result = pytester.runpytest_subprocess("--grid", str(grid), "--resume", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*resume: 1 config(s) already complete: base*"])
    assert read_events(events_file) == ["start b", "stop b", "start c", "stop c"]
    out = pytester.path / "out"
    assert {json.loads((out / f"{n}.json").read_text())["status"] for n in ("base", "b", "c")} == {"complete"}
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    report = json.loads((out / "report.json").read_text())
    assert {c["name"] for c in report["configs"]} == {"base", "b", "c"}


def test_bare_resume_finds_the_latest_unfinished_run(pytester, write_grid, events_file, monkeypatch):
    grid = write_grid(fake_grid(configs("base", "b"), baseline="base"))
    pytester.makepyfile(test_x=INTERRUPT_IN_B)
    pytester.runpytest_subprocess("--grid", str(grid), "-p", "no:cacheprovider")  # default results/<stamp>/
    monkeypatch.setenv("NO_INTERRUPT", "1")
    events_file.unlink()
    result = pytester.runpytest_subprocess("--grid", str(grid), "--resume", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert read_events(events_file) == ["start b", "stop b"]


def test_bare_resume_with_a_results_dir_resumes_that_dir(pytester, write_grid, events_file, monkeypatch):
    """`--results-dir D --resume` (how the GPU runs were first resumed) failed: 'no unfinished run under results/'."""
    grid = write_grid(fake_grid(configs("base", "b"), baseline="base"))
    pytester.makepyfile(test_x=INTERRUPT_IN_B)
    pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    monkeypatch.setenv("NO_INTERRUPT", "1")
    events_file.unlink()
    result = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "--resume",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert read_events(events_file) == ["start b", "stop b"]
    assert json.loads((pytester.path / "out" / "manifest.json").read_text())["status"] == "complete"


def test_a_config_whose_flags_changed_is_run_again(pytester, write_grid, events_file):
    grid = write_grid(fake_grid(configs("base", "b"), baseline="base"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    events_file.unlink()
    changed = fake_grid(configs("base", seqs=1) + configs("b", seqs=2), baseline="base")
    write_grid(changed)
    pytester.runpytest_subprocess("--grid", str(grid), "--resume", "out", "-p", "no:cacheprovider")
    assert read_events(events_file) == ["start b", "stop b"]


def test_resuming_a_finished_run_succeeds_without_deploying_and_rewrites_the_reports(pytester, write_grid,
                                                                                      events_file):
    grid = write_grid(fake_grid(configs("base", "b"), baseline="base"))
    pytester.makepyfile(test_x="def test_x(vllm_endpoint): pass")
    first = pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    assert first.ret == 0
    out = pytester.path / "out"
    (out / "report.md").unlink()
    events_file.unlink()
    result = pytester.runpytest_subprocess("--grid", str(grid), "--resume", "out", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]  # pytest alone says 5, "no tests ran"
    result.stdout.fnmatch_lines(["*resume: 2 config(s) already complete: b, base*",
                                 "*resume: nothing left to run*"])
    assert not events_file.exists()  # nothing deployed
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "report.md").exists()


def test_resume_keeps_the_first_start_and_argv_and_records_each_resume(pytester, write_grid, events_file,
                                                                        monkeypatch):
    """The report said "Started 19:12" (the resume's time) for a baseline measured at 19:10."""
    grid = write_grid(fake_grid(configs("base", "b", "c"), baseline="base"))
    pytester.makepyfile(test_x=INTERRUPT_IN_B)
    pytester.runpytest_subprocess("--grid", str(grid), "--results-dir", "out", "-p", "no:cacheprovider")
    out = pytester.path / "out"
    first = json.loads((out / "manifest.json").read_text())
    pytester.runpytest_subprocess("--grid", str(grid), "--resume", "out", "-p", "no:cacheprovider")  # b again
    monkeypatch.setenv("NO_INTERRUPT", "1")
    result = pytester.runpytest_subprocess("--grid", str(grid), "--resume", "out", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    run = json.loads((out / "manifest.json").read_text())
    assert (run["started"], run["argv"]) == (first["started"], first["argv"]) and "--resume" not in run["argv"]
    assert [r["configs"] for r in run["resumes"]] == [["b"], ["b", "c"]]
    assert all("--resume" in r["argv"] for r in run["resumes"])
    assert first["started"] < run["resumes"][0]["time"] <= run["resumes"][1]["time"]
    header = (out / "report.md").read_text().split("\n## ", 1)[0]
    assert f"- Started: {first['started']}\n" in header
    assert f"- Resumed: {run['resumes'][1]['time']}, ran again: b, c (`" in header
    assert header.count("- Resumed: ") == 2
    assert json.loads((out / "report.json").read_text())["run"]["resumes"][1]["configs"] == ["b", "c"]
