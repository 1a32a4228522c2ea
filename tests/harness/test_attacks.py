"""The attacks on the harness's promise, one test each: every way a sceptical reviewer made a story "verified"
or a gate pass without the evidence for it is reproduced here and shown caught.
(Attacks on the cards: tests/harness/test_catalog.py; a glob matching nothing:
tests/harness/test_cards.py.)"""
import json
import textwrap

import pytest

from gates import evidence, sources
from gates.cli import main
from gates.verdict import Evaluator

from tests.harness._synth import (GPU, TESTS_CPU, TESTS_CUDA, Repo, after_the_newest_run, git, metric,
                                  newest_evidence, passing_gate1, run_inner, write_log)

pytestmark = pytest.mark.story("GT-042")


def evaluate(repo):
    stories = repo.stories()
    return Evaluator(stories, evidence.load_all(repo.paths.evidence), sources.hash_stories(repo.root))


def cli(repo, *args):
    return main(["--root", str(repo.root), "--stories", str(repo.paths.stories), "--evidence",
                 str(repo.paths.evidence), "--reports", str(repo.root / "reports"), *args])


@pytest.fixture
def passing(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    assert evaluate(repo).gate("gate1")["verdict"] == "pass"
    return repo


def reasons(ev, path) -> str:
    a = ev.audits[path.name]
    assert not a.counts
    return " | ".join(a.tampered + a.reasons)


THREE = '''
import pytest
from src import code

pytestmark = pytest.mark.story("GT-001")

def test_one():
    assert code.value() == 1

def test_two():
    assert code.value() + 1 == 2

def test_bad():
    assert code.value() == 2, "the bug"
'''


@pytest.fixture
def buggy(tmp_path):
    """GT-001 with three real tests, one of which fails on a real bug."""
    repo = Repo(tmp_path)
    repo.write("src/__init__.py", "")
    repo.write("src/code.py", "def value():\n    return 1\n")
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    repo.write("tests/test_code.py", THREE)
    r = run_inner(repo, "tests")
    assert r.returncode == 1, r.stdout + r.stderr
    assert evaluate(repo).story("GT-001").criteria[0].state == "fail"
    return repo


# ---------- the expected test set is whatever reported ----------

def test_rerunning_with_k_that_leaves_out_the_failing_test_is_incomplete(buggy):
    buggy.write("src/code.py", "def value():\n    return 1   # touched: the failing run is now stale\n")
    r = run_inner(buggy, "tests", "-k", "not test_bad")
    assert r.returncode == 0, r.stdout + r.stderr
    crit = evaluate(buggy).story("GT-001").criteria[0]
    assert crit.state == "incomplete" and "1 of 3 cpu test(s)" in crit.reason and "test_bad" in crit.reason


def test_relabelling_a_failing_cpu_test_as_cuda_leaves_it_unproven(buggy):
    """GT-001's catalog entry asks for CPU tests only: a test relabelled `cuda` leaves the CPU
    set (it skips here) and lands where no criterion of the card looks, which is itself a gap."""
    buggy.write("tests/test_code.py", THREE.replace("def test_bad", "@pytest.mark.cuda\ndef test_bad"))
    r = run_inner(buggy, "tests")
    assert r.returncode == 0, r.stdout + r.stderr      # it skips here: no GPU
    ev = evaluate(buggy)
    cpu, uncovered = ev.story("GT-001").criteria
    assert cpu.state == "pass"                          # two CPU tests are left, both pass
    assert uncovered.state == "incomplete" and "tests/test_code.py::test_bad" in uncovered.reason
    assert ev.gate("gate1")["verdict"] == "fail"


def test_relabelling_a_failing_test_of_a_kernel_story_as_cuda_needs_gpu_evidence(buggy):
    buggy.add_card("GT-001", 1, "gate1", [], [TESTS_CPU, TESTS_CUDA])
    buggy.write("tests/test_code.py", THREE.replace("def test_bad", "@pytest.mark.cuda\ndef test_bad"))
    r = run_inner(buggy, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    cpu, cuda = evaluate(buggy).story("GT-001").criteria
    assert cpu.state == "pass" and cuda.state == "missing" and "1 cuda test(s)" in cuda.reason


def test_a_module_level_importorskip_makes_the_story_incomplete(buggy):
    buggy.write("tests/test_more.py", textwrap.dedent('''
        import pytest
        pytest.importorskip("no_such_module_here")

        pytestmark = pytest.mark.story("GT-001")

        def test_hidden():
            assert False
    '''))
    buggy.write("tests/test_code.py", THREE.replace('== 2, "the bug"', '== 1'))
    r = run_inner(buggy, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    crit = evaluate(buggy).story("GT-001").criteria[0]
    assert crit.state == "incomplete"
    assert "tests/test_more.py skipped at collection" in crit.reason and "no_such_module_here" in crit.reason


def test_deselect_in_addopts_leaves_the_deselected_test_missing(buggy):
    py = buggy.root / "pyproject.toml"
    py.write_text(py.read_text().replace('addopts = "--strict-markers -ra"',
                                         'addopts = "--strict-markers -ra --deselect tests/test_code.py::test_bad"'))
    r = run_inner(buggy, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    crit = evaluate(buggy).story("GT-001").criteria[0]
    assert crit.state == "incomplete" and "tests/test_code.py::test_bad" in crit.reason


def test_prune_keep_1_after_a_subset_run_leaves_the_story_incomplete(buggy):
    buggy.write("src/code.py", "def value():\n    return 1  # stale the failing run\n")
    after_the_newest_run(buggy)    # the subset run must be the newest, the one prune keeps
    r = run_inner(buggy, "tests", "--deselect", "tests/test_code.py::test_bad")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cli(buggy, "prune", "--keep", "1") == 0
    assert len(list(buggy.paths.evidence.glob("*.json"))) == 1
    crit = evaluate(buggy).story("GT-001").criteria[0]
    assert crit.state == "incomplete" and "test_bad" in crit.reason


def test_one_test_of_many_does_not_verify_a_story(tmp_path):
    """GT-005 was verified on a fresh clone from the one CPU benchmark a GPU run had recorded."""
    repo = Repo(tmp_path)
    repo.add_card("GT-005", 1, "gate1", [], [TESTS_CPU])
    for i in range(5):
        repo.add_test(f"tests/test_gguf.py::test_{i}", ["GT-005"])
    repo.run(machine="gpu", tests=[("tests/test_gguf.py::test_0", ["GT-005"], "passed", "cpu")])
    crit = evaluate(repo).story("GT-005").criteria[0]
    assert crit.state == "incomplete" and "4 of 5 cpu test(s) have no fresh record" in crit.reason


# ---------- evidence is trusted as written ----------

def _commit_evidence(repo, path):
    git(repo.root, "add", "-f", *(str(p) for p in (path, evidence.log_path(path)) if p.exists()))
    git(repo.root, "commit", "-q", "-m", "GPU evidence")


def test_flipping_a_failed_outcome_in_committed_gpu_evidence_is_caught_and_fails_ci(passing):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "failed", GPU)])
    _commit_evidence(passing, p)
    assert evaluate(passing).gate("gate1")["verdict"] == "fail"
    p.write_text(p.read_text().replace('"outcome": "failed"', '"outcome": "passed"'))
    write_log(p, json.loads(p.read_text()))       # even with a log forged to match
    ev = evaluate(passing)
    assert "differs from its first committed version" in reasons(ev, p)
    g = ev.gate("gate1")
    assert g["verdict"] == "fail" and any(b["criterion"] == "evidence" for b in g["blockers"])
    assert cli(passing, "enforce") == 1             # CI fails on any edit, enforced gates or not
    assert cli(passing, "evidence") == 1


BENCH_RUN = [("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)]


def test_raising_a_committed_value_above_copy_bandwidth_is_caught(passing):
    slow = metric("layernorm.fp16", 2000.0, {"torch": 1200.0}, "tests/test_emb.py::test_bench", ["GT-008"])
    p = passing.run(machine="gpu", tests=BENCH_RUN, benchmarks=[slow])
    _commit_evidence(passing, p)
    assert evaluate(passing).gate("gate1")["verdict"] == "fail"           # 2000 / 3000 < 0.8
    p.write_text(p.read_text().replace('"value": 2000.0', '"value": 4050.0'))
    write_log(p, json.loads(p.read_text()))
    ev = evaluate(passing)
    assert "differs from its first committed version" in reasons(ev, p)
    assert ev.gate("gate1")["verdict"] == "fail"


def test_a_forged_value_above_copy_bandwidth_is_invalid(passing):
    """A new file written by hand, consistent with itself and its log, 1.35 x copy, "valid"."""
    forged = metric("layernorm.fp16", 4050.0, {"torch": 1200.0}, "tests/test_emb.py::test_bench", ["GT-008"])
    passing.run(machine="gpu", tests=BENCH_RUN, benchmarks=[forged])
    crit = evaluate(passing).story("GT-008").criteria[2]
    assert crit.state == "invalid" and "exceeds 1.1 x measured copy bandwidth" in crit.reason


def test_a_future_dated_file_does_not_win(passing):
    p = passing.run(machine="gpu", minutes=60 * 24 * 30,
                    tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU),
                           ("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
                    benchmarks=[metric("layernorm.fp16", 2999.0, {"torch": 1000.0}, "tests/test_emb.py::test_bench", ["GT-008"])])
    ev = evaluate(passing)
    assert "lies in the future" in reasons(ev, p)
    assert ev.story("GT-008").criteria[2].evidence[0]["file"] != p.name


@pytest.mark.parametrize("how, expect", [
    ("fake", "does not exist here"),
    ("sideways", "is not an ancestor of HEAD"),
    ("edited", "recorded source hash(es) differ from commit"),
    ("none", "no full commit recorded"),
])
def test_the_commit_is_checked_against_git(passing, how, expect):
    if how == "sideways":
        git(passing.root, "checkout", "-q", "-b", "side")
        passing.write("src/side.py", "S\n")
        other = passing.commit("a commit HEAD never sees")
        git(passing.root, "checkout", "-q", "main")

    def edit(doc):
        if how == "fake":
            doc["provenance"]["commit"] = "f" * 40
        elif how == "sideways":
            doc["provenance"]["commit"] = other
        elif how == "none":
            doc["provenance"]["commit"] = None
        elif how == "edited":       # run on an uncommitted edit, claimed clean
            f = "tests/test_emb.py"
            doc["source_files"][f] = "0" * 64
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "failed", GPU)], edit=edit)
    assert expect in reasons(evaluate(passing), p)


def test_an_untracked_file_makes_the_tree_dirty_and_the_run_never_counts(buggy):
    buggy.write("tests/test_code.py", THREE.replace('== 2, "the bug"', '== 1'))
    buggy.commit()
    (buggy.root / "notes.py").write_text("# untracked, not ignored\n")
    r = run_inner(buggy, "tests", commit=False)
    assert r.returncode == 0
    doc = newest_evidence(buggy)
    assert doc["provenance"]["dirty"] is True
    ev = evaluate(buggy)
    assert "dirty tree" in reasons(ev, buggy.paths.evidence / doc["_file"])
    assert ev.story("GT-001").status != "verified"


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d["provenance"].update(dirty=True), "run on a dirty tree"),
    (lambda d: d.update(collection_errors=[{"nodeid": "tests/test_x.py", "message": "ImportError"}]), "collection error"),
    (lambda d: d["run"].update(interrupted=True, exit_status=2), "interrupted or aborted"),
    (lambda d: d["run"].update(modified_during_run=["src/emb.py"]), "sources changed while it ran"),
    (lambda d: d["pytest"].update(override_ini=["python_files=nothing.py"]), "-o overrides the project's configuration"),
    (lambda d: d["pytest"].update(pythonwarnings=["ignore"]), "-W changes the project's warning filters"),
    (lambda d: d["pytest"].update(p=["gates.pytest_plugin", "evil"]), "-p evil"),
    (lambda d: d["pytest"]["plugins"].append({"module": "evil_plugin", "file": "/tmp/evil_plugin.py", "in_repo": False}),
     "plugin evil_plugin (/tmp/evil_plugin.py) is not the project's own"),
    (lambda d: d["pytest"].update(rewritten=["tests/test_emb.py::test_cuda (call: failed reported as passed)"]),
     "a hook reported a failing phase as passed"),
    (lambda d: d["pytest"].update(tracer_displaced=["t: the trace function was replaced by None"]),
     "files used could not be measured"),
    (lambda d: d["pytest"].update(inifile="setup.cfg"), "not pyproject.toml"),
])
def test_runs_that_are_not_clean_never_count(passing, edit, expect):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)], edit=edit)
    assert expect in reasons(evaluate(passing), p)


def test_a_renamed_evidence_file_does_not_count(passing):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)])
    q = p.with_name(p.name.replace("20", "29", 1))
    p.rename(q)
    evidence.log_path(p).rename(evidence.log_path(q))
    assert "its name does not match its content" in reasons(evaluate(passing), q)


# ---------- the raw log vouches for GPU evidence ----------

def test_gpu_evidence_without_its_log_does_not_count(passing):
    p = passing.run(machine="gpu", log=False, tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)])
    assert "no raw pytest log" in reasons(evaluate(passing), p)


def test_a_log_that_contradicts_its_evidence_does_not_count(passing):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "failed", GPU)])
    doc = json.loads(p.read_text())
    doc["tests"][0]["outcome"] = "passed"             # forged before the first commit...
    p.write_text(json.dumps(doc))
    log = evidence.log_path(p)
    assert "does not name this file with sha256" in reasons(evaluate(passing), p)
    import hashlib
    sha = hashlib.sha256(p.read_bytes()).hexdigest()    # ...and the log's hash line forged too
    log.write_text(__import__("re").sub(r"sha256=\w+", f"sha256={sha}", log.read_text()))
    assert "disagree on 1 test outcome(s): tests/test_emb.py::test_cuda" in reasons(evaluate(passing), p)


def test_deleting_committed_evidence_fails_ci(passing):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "failed", GPU)])
    _commit_evidence(passing, p)
    p.unlink()
    evidence.log_path(p).unlink()
    g = evaluate(passing).gate("gate1")
    assert any("was committed and is gone" in b["reason"] for b in g["blockers"])
    assert cli(passing, "enforce") == 1


def test_schema_1_evidence_is_history_and_never_counts(passing):
    p = passing.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)],
                    edit=lambda d: d.update(schema=1))
    ev = evaluate(passing)
    assert ev.audits[p.name].history and "history, never counted" in reasons(ev, p)


# ---------- sources are hand-written and incomplete ----------

USES = '''
import pytest
from src import helper

@pytest.mark.story("GT-001")
def test_uses_helper(model):
    assert helper.twice(model) == 84
'''
FIXTURE = '''
import pytest

@pytest.fixture(scope="session")
def model():
    from src import maker
    return maker.make()
'''


@pytest.fixture
def measured(tmp_path):
    """GT-001, whose card lists no source: its test uses src/helper.py, and a conftest fixture
    that uses src/maker.py."""
    repo = Repo(tmp_path)
    repo.write("src/__init__.py", "")
    repo.write("src/helper.py", "def twice(x):\n    return 2 * x\n")
    repo.write("src/maker.py", "def make():\n    return 42\n")
    repo.write("src/cli.py", "def main():\n    return 0\n")
    repo.write("tests/conftest.py", FIXTURE)
    repo.write("tests/test_uses.py", USES)
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert evaluate(repo).story("GT-001").status == "verified"
    return repo


@pytest.mark.parametrize("rel", [
    "src/helper.py",            # a module the test used, listed nowhere (the gguf_file.py case)
    "src/maker.py",             # a module a fixture used (the testmodels.py case)
    "tests/conftest.py",        # the fixture file
    "pyproject.toml",           # the pytest configuration
    "gates/pytest_plugin.py",   # the plugin that recorded the evidence
    "gates/verdict.py",         # the code that judges it
    "stories/GT-001.toml",      # the card
])
def test_a_change_to_anything_the_tests_used_stales_the_story(measured, rel):
    p = measured.root / rel
    p.write_text(p.read_text() + "\n# changed\n")
    crit = evaluate(measured).story("GT-001").criteria[0]
    assert crit.state == "stale" and f"changed {rel}" in crit.reason


def test_a_file_the_tests_never_used_does_not_stale_the_story(measured):
    (measured.root / "src" / "cli.py").write_text("def main():\n    return 1\n")
    assert evaluate(measured).story("GT-001").status == "verified"


def test_a_new_root_conftest_is_a_dirty_tree_then_a_source_of_every_story(measured):
    measured.write("conftest.py", "# the project's conftest now\n")
    r = run_inner(measured, "tests", commit=False)
    assert r.returncode == 0
    ev = evaluate(measured)
    assert "dirty tree" in reasons(ev, measured.paths.evidence / newest_evidence(measured)["_file"])
    r = run_inner(measured, "tests")             # committed: it is part of what every story used
    assert "conftest.py" in newest_evidence(measured)["story_files"]["GT-001"]


# ---------- a plugin or conftest can rewrite failures as passes ----------

REWRITER = '''
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        rep.outcome = "passed"
'''


def test_a_conftest_that_rewrites_failures_as_passes_is_caught(buggy):
    buggy.write("conftest.py", REWRITER)
    r = run_inner(buggy, "tests")                 # committed, so only the rewrite can give it away
    assert r.returncode == 0, r.stdout + r.stderr     # pytest itself was fooled
    doc = newest_evidence(buggy)
    assert {t["outcome"] for t in doc["tests"]} == {"passed"}
    assert "tests/test_code.py::test_bad (call: failed reported as passed)" in doc["pytest"]["rewritten"]
    ev = evaluate(buggy)
    assert "a hook reported a failing phase as passed" in reasons(ev, buggy.paths.evidence / doc["_file"])
    assert ev.story("GT-001").status != "verified"


def test_a_plugin_from_outside_the_repository_is_caught(buggy, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "rewriter_plugin.py").write_text(REWRITER)
    r = run_inner(buggy, "tests", "-p", "rewriter_plugin", env={"PYTHONPATH": f"{buggy.root}:{site}"})
    assert r.returncode == 0, r.stdout + r.stderr
    ev = evaluate(buggy)
    why = reasons(ev, buggy.paths.evidence / newest_evidence(buggy)["_file"])
    assert "plugin rewriter_plugin" in why and "-p rewriter_plugin" in why


# ---------- physics is checked only when recording ----------

@pytest.mark.parametrize("m, expect", [
    (metric("layernorm.fp16", 1e-12, {"torch": 2e-12}, "tests/test_emb.py::test_bench", ["GT-008"], unit="s",
            kind="time", higher_is_better=False), "faster than a kernel launch"),
    (metric("layernorm.fp16", 2600.0, {"torch": 1200.0}, "tests/test_emb.py::test_bench", ["GT-008"],
            params={"time_s": 1e-9}), "params.time_s"),
    (dict(metric("layernorm.fp16", 2600.0, {"torch": 1200.0}, "tests/test_emb.py::test_bench", ["GT-008"]),
          references={"torch": 1200.0, "copy": 9000.0}), "is not the run's measured baseline"),
    # a roofline (tok/s) is recomputed from what defines it and the run's baselines (copy 3,000 GB/s,
    # matmul 700 TFLOP/s): none given; one from a deflated bandwidth (1,500 GB/s: MBU doubled); a
    # figure above its roofline; a prefill roofline from the wrong FLOP count
    (metric("layernorm.fp16", 100.0, {"roofline": 200.0}, "tests/test_emb.py::test_bench", ["GT-008"],
            unit="tok/s", kind="throughput"), "without what defines it"),
    (metric("layernorm.fp16", 100.0, {"roofline": 200.0}, "tests/test_emb.py::test_bench", ["GT-008"],
            unit="tok/s", kind="throughput", params={"weight_bytes_per_token": 7.5e9}),
     "reference roofline 200 is not 7.5e+09 B a token at 3000.0 GB/s = 400"),
    (metric("layernorm.fp16", 500.0, {"roofline": 400.0}, "tests/test_emb.py::test_bench", ["GT-008"],
            unit="tok/s", kind="throughput", params={"weight_bytes_per_token": 7.5e9}), "above its roofline 400"),
    (metric("layernorm.fp16", 100.0, {"roofline": 1000.0}, "tests/test_emb.py::test_bench", ["GT-008"],
            unit="tok/s", kind="throughput", params={"matmul_params": 1.75e11, "weight_bytes_per_token": 3e9}),
     "FLOPs a token at 700.0 TFLOP/s = 2000"),
])
def test_the_verdict_reapplies_physics(passing, m, expect):
    passing.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[m])
    crit = evaluate(passing).story("GT-008").criteria[2]
    assert crit.state == "invalid" and expect in crit.reason


def test_a_copy_baseline_above_the_datasheet_is_invalid(passing):
    fast = metric("layernorm.fp16", 3500.0, {"torch": 1200.0, "copy": 3600.0}, "tests/test_emb.py::test_bench", ["GT-008"])
    passing.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[fast],
                edit=lambda d: d["baselines"][GPU].update(copy_gbps=3600.0))
    crit = evaluate(passing).story("GT-008").criteria[2]
    assert crit.state == "invalid" and "exceeds NVIDIA H100 80GB HBM3's memory bandwidth 3350" in crit.reason


def test_ratios_are_recomputed_not_read(passing):
    m = metric("layernorm.fp16", 2000.0, {"torch": 1200.0}, "tests/test_emb.py::test_bench", ["GT-008"])
    m["ratios"] = {"copy": 0.99, "torch": 5.0}        # the stored ratios lie; value / reference does not
    passing.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[m])
    crit = evaluate(passing).story("GT-008").criteria[2]
    assert crit.state == "fail" and "= 0.667, needs >= 0.8" in crit.reason


def test_timestamps_before_the_commit_do_not_count(passing):
    p = passing.run(machine="gpu", minutes=-600, tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)])
    assert "before its commit" in reasons(evaluate(passing), p)

