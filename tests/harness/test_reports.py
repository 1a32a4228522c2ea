"""Reports: rendered from evidence only; empty evidence still renders; HTML checked in Chromium."""
import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from gates.report import render_all

from tests.harness._synth import GPU, TESTS_CPU, Repo, metric, passing_gate1

pytestmark = pytest.mark.story("GT-042")

# Chromium is a CI dependency (`apt-get install -y chromium`). Its absence fails the test
# unless GPT_ENGINE_NO_CHROMIUM=1 says so on purpose; then the test skips, and since a skip
# never counts as a pass, GT-042's harness criterion stays unmet: nothing is hidden.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--enable-logging=stderr", "--v=0"]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    r = Repo(tmp_path)
    r.gate1_minimal()
    return r


def test_empty_evidence_folder_renders_reports_that_say_so(repo):
    written = {p.name for p in render_all(repo.paths)}
    assert {"results.csv", "progress.html", "progress.md", "m0_readiness.html", "m0_readiness.md",
            "gate1.json", "gate2.json", "gate3.json", "m0.json"} <= written
    rep = repo.root / "reports"
    for name in ("progress.html", "progress.md", "m0_readiness.html", "m0_readiness.md"):
        text = (rep / name).read_text()
        assert "No evidence yet" in text, name
    md = (rep / "progress.md").read_text()
    # GT-001, GT-008 and the gate1 verdict story GT-022
    assert md.count("**not-started**") == 3 and "| implemented | 0% |" in md
    assert "No benchmark evidence yet" in (rep / "m0_readiness.md").read_text()
    assert json.loads((rep / "gates" / "gate1.json").read_text())["verdict"] == "fail"
    with open(rep / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["file", "finished", "machine_class"] and len(rows) == 1


def _populate(repo):
    # every card and test exists before the runs: a card or test file added later is part of
    # the stories' measured sources and would make the earlier evidence stale (issue 10)
    repo.write("src/extra.py", "X\n")
    repo.add_card("GT-002", 1, "gate1", ["src/extra.py"], [TESTS_CPU])
    repo.add_test("tests/test_extra.py::test_b", ["GT-002"])
    passing_gate1(repo)
    repo.run(tests=[("tests/test_extra.py::test_b", ["GT-002"], "failed", "cpu")])
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
             benchmarks=[metric("layernorm.fp16", 2700.0, {"copy": 3000.0, "torch": 1250.0},
                                "tests/test_emb.py::test_bench", ["GT-008"])])


def test_reports_show_computed_statuses_percentages_risks_and_trends(repo):
    _populate(repo)
    render_all(repo.paths)
    rep = repo.root / "reports"
    md = (rep / "progress.md").read_text()
    # GT-001 and GT-008 verified, GT-002 failing: 3 stories, all implemented, 2 validated
    assert "| GT-001 | synthetic GT-001 | **verified** |" in md
    assert "| GT-002 | synthetic GT-002 | **failing** |" in md
    assert "| implemented | 100% |" in md and "| tested | 67% |" in md and "| validated | 67% |" in md
    m0 = (rep / "m0_readiness.md").read_text()
    assert "### gate1: FAIL" in m0 and "**GT-002** tests on cpu (fail)" in m0
    assert "- **high** GT-002 tests on cpu: fail" in m0
    assert "| GT-008 | `layernorm.fp16` | ≥ 0.8× copy; ≥ 2× torch | 2700 GB/s | copy 0.90× | torch 2.16× |" in m0
    html = (rep / "m0_readiness.html").read_text()
    # two GPU runs -> a trend line for each bound of the criterion (copy and torch)
    assert html.count("<svg") == 2 and "polyline" in html
    with open(rep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["record"] for r in rows} == {"test", "metric"}
    assert any(r["metric"] == "layernorm.fp16" and r["ratio_copy"] == str(0.9) for r in rows)


def test_html_is_self_contained(repo):
    _populate(repo)
    render_all(repo.paths)
    for name in ("progress.html", "m0_readiness.html"):
        html = (repo.root / "reports" / name).read_text()
        assert "<script" not in html
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), name
        assert not re.search(r"url\(\s*['\"]?https?:", html), name


def test_reports_render_in_headless_chromium_without_console_errors(repo, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("GPT_ENGINE_NO_CHROMIUM") == "1":
            pytest.skip("GPT_ENGINE_NO_CHROMIUM=1: Chromium intentionally unavailable")
        pytest.fail("chromium not found: install it (apt-get install -y chromium) or set GPT_ENGINE_NO_CHROMIUM=1")
    _populate(repo)
    render_all(repo.paths)
    expect = {"progress.html": ["gpt-engine progress", "GT-008", "verified", "failing", "implemented"],
              "m0_readiness.html": ["gpt-engine M0 readiness", "gate1", "layernorm.fp16", "<svg", "Risks"]}
    for name, needles in expect.items():
        profile = tmp_path / f"chrome-{name}"
        r = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                            (repo.root / "reports" / name).as_uri()], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        for n in needles:
            assert n in r.stdout, (name, n)
        console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
        assert console == [], console
