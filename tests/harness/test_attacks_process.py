"""Attacks on what a run's process was, found by a red-team pass in session 26 after
test_attacks.py and test_attacks_more.py: how Python, pytest and the engine were set up when
the tests ran (-O, --confcutdir, engine settings in the environment, the launcher), and what the
tree held beside the files the tests were seen to use (a symlinked folder, an untracked file
under GPT_ENGINE_GIT_COMMIT), and a bar's `where` that a string param slipped past. Each is
built in a synthetic repository with a real pytest run where a run is what it takes: first the
way it got through, then caught. (docs/harness.md, "Threat model", maps each to its check.)"""
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from gates import evidence, sources
from gates.audit import Git, audit_run
from gates.verdict import Evaluator

from tests.harness._synth import GPU, TESTS_CPU, Repo, git, inner_env, newest_evidence, run_inner
from tests.harness.test_verdict import DECODE, _decode, _decode_repo

pytestmark = pytest.mark.story("GT-042")


def evaluate(repo):
    return Evaluator(repo.stories(), evidence.load_all(repo.paths.evidence), sources.hash_stories(repo.root))


def refused(repo, doc) -> str:
    """The audit's reasons for not counting the run (the run must not count)."""
    a = evaluate(repo).audits[doc["_file"]]
    assert not a.counts, "the run counts"
    return " | ".join(a.tampered + a.reasons)


GOOD = "def twice(x):\n    return 2 * x\n"
BROKEN = "def twice(x):\n    return 3 * x   # broken\n"
USES_HELPER = ('import pytest\nfrom src{mod} import helper\n\n\n'
               '@pytest.mark.story("GT-001")\ndef test_twice():\n    assert helper.twice(21) == 42\n')


def gt001(tmp_path) -> Repo:
    repo = Repo(tmp_path)
    repo.write("src/__init__.py", "")
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    return repo


def test_code_behind_a_committed_directory_symlink_does_not_count(tmp_path):
    """src/shared -> ../vendor/shared: the tracer records the path through the link, which the
    sources never list (they do not follow links), so breaking the real file staled nothing."""
    repo = gt001(tmp_path)
    repo.write("vendor/shared/__init__.py", "")
    repo.write("vendor/shared/helper.py", GOOD)
    os.symlink("../vendor/shared", repo.root / "src" / "shared")
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=".shared"))
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "symbolic link(s) where sources live: src/shared" in refused(repo, newest_evidence(repo))
    assert evaluate(repo).story("GT-001").status != "verified"


CHECK_HELPER = "def check_value(v):\n    assert v == 2, 'the bug'\n"     # a helper module: not rewritten
USES_CHECK = ('import pytest\nfrom src import code\nfrom tests._check import check_value\n\n\n'
              '@pytest.mark.story("GT-001")\ndef test_value():\n    check_value(code.value())\n')


def check_repo(tmp_path) -> Repo:
    repo = gt001(tmp_path)
    repo.write("src/code.py", "def value():\n    return 1   # the bug: should be 2\n")
    repo.write("tests/_check.py", CHECK_HELPER)
    repo.write("tests/test_code.py", USES_CHECK)
    return repo


def test_a_run_under_python_optimize_does_not_count(tmp_path):
    """PYTHONOPTIMIZE=1 strips every plain assert outside the test modules pytest rewrites
    (tests/ops/_util.assert_nmse is one): the failing check passes."""
    repo = check_repo(tmp_path)
    assert run_inner(repo, "tests").returncode == 1                     # honest: fails
    r = run_inner(repo, "tests", env={"PYTHONOPTIMIZE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr                       # the helper's assert is gone
    assert "Python ran with -O" in refused(repo, newest_evidence(repo))
    assert evaluate(repo).story("GT-001").status != "verified"


def test_a_committed_change_to_how_pytest_is_launched_does_not_verify_a_failing_story(tmp_path):
    """gates/runner.py (CI's `nox -s tests`) is no story's source by design (the launcher cannot
    make evidence stale); what it does to the process is recorded and checked instead."""
    repo = check_repo(tmp_path)
    runner = repo.root / "gates" / "runner.py"
    runner.write_text(runner.read_text().replace('"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}',
                                                 '"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONOPTIMIZE": "1"}'))
    repo.commit("runner: -O for test runs")
    subprocess.run([sys.executable, "-m", "gates", "story", "GT-001"], cwd=repo.root, env=inner_env(repo),
                   capture_output=True, text=True, timeout=300)
    doc = newest_evidence(repo)
    assert all(t["outcome"] == "passed" for t in doc["tests"])          # it got through the run itself
    assert "Python ran with -O" in refused(repo, doc)
    assert evaluate(repo).story("GT-001").status != "verified"


NAN_GUARD = '''import pytest
from src import ops


@pytest.fixture(autouse=True)
def nan_outputs(monkeypatch):
    monkeypatch.setattr(ops, "FILL_NAN", True)   # as tests/ops/conftest.py fills outputs with NaN
'''
OPS = '''FILL_NAN = False


def relu(xs):
    out = [float("nan")] * len(xs) if FILL_NAN else [0.0] * len(xs)
    for i in range(len(xs) - 1):                  # the bug: the last element is never written
        out[i] = max(xs[i], 0.0)
    return out
'''


def test_a_run_that_left_a_repository_conftest_unloaded_does_not_count(tmp_path):
    """--confcutdir below tests/ops keeps tests/ops/conftest.py (the NaN guard) from loading;
    --noconftest was refused already, this one was not."""
    repo = gt001(tmp_path)
    repo.write("src/ops.py", OPS)
    repo.write("tests/ops/__init__.py", "")
    repo.write("tests/ops/conftest.py", NAN_GUARD)
    repo.write("tests/ops/test_relu.py", 'import pytest\nfrom src import ops\n\n\n@pytest.mark.story("GT-001")\n'
                                         'def test_relu():\n    assert ops.relu([1.0, -2.0, -3.0]) == [1.0, 0.0, 0.0]\n')
    assert run_inner(repo, "tests").returncode == 1                     # honest: the guard catches it
    (repo.root / "tests" / "ops" / "x").mkdir()                         # empty: git status stays clean
    r = run_inner(repo, "tests", "--confcutdir=tests/ops/x", commit=False)
    assert r.returncode == 0, r.stdout + r.stderr                       # passes "by luck"
    why = refused(repo, newest_evidence(repo))
    assert "--confcutdir=tests/ops/x" in why and "not loaded: tests/ops/conftest.py" in why
    assert evaluate(repo).story("GT-001").status != "verified"


KNOB = '''import os


def twice(x):
    if os.environ.get("GPT_ENGINE_SAFE_PATH") == "1":
        return x + x                 # the path a setting switches on
    return 3 * x                     # the path that ships, broken
'''


def test_a_run_with_an_engine_setting_in_its_environment_does_not_count(tmp_path):
    """GPT_ENGINE_CPU_CACHE_BYTES=0, GPT_ENGINE_DEVICE_LOOP=0, GPTE_NO_PDL=1 ... switch engine
    paths: a run with one tested something other than what ships."""
    repo = gt001(tmp_path)
    repo.write("src/helper.py", KNOB)
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=""))
    assert run_inner(repo, "tests").returncode == 1
    r = run_inner(repo, "tests", env={"GPT_ENGINE_SAFE_PATH": "1", "GPT_ENGINE_BENCH_MODELS": "/tmp/m"})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert doc["pytest"]["env"]["GPT_ENGINE_SAFE_PATH"] == "1"         # recorded, for the reader too
    why = refused(repo, doc)
    assert "engine settings in the environment: GPT_ENGINE_SAFE_PATH" in why
    assert "GPT_ENGINE_BENCH_MODELS" not in why                         # the harness's own is allowed
    assert evaluate(repo).story("GT-001").status != "verified"


def test_the_commit_variable_does_not_hide_an_untracked_file(tmp_path):
    """GPT_ENGINE_GIT_COMMIT (for a tree without .git) used to leave `dirty` unknown, and only the
    files a test was seen to use were compared with the commit."""
    repo = gt001(tmp_path)
    repo.write("src/helper.py", GOOD)
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=""))
    repo.commit("helper")
    repo.write("src/notes.py", "UNUSED = 1\n")                          # untracked, used by no test
    head = git(repo.root, "rev-parse", "HEAD").strip()
    r = run_inner(repo, "tests", commit=False, env={"GPT_ENGINE_GIT_COMMIT": head})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert doc["provenance"]["dirty"] is True                           # git can answer here: it does
    why = refused(repo, doc)
    assert "1 file(s) not in the commit (untracked): src/notes.py" in why
    # the same tree described as the GPU machine's copy would (no dirty flag) is still refused
    doc["provenance"]["dirty"] = None
    a = audit_run(doc, Git(repo.root), {}, datetime.now(timezone.utc))
    assert any("not in the commit (untracked): src/notes.py" in x for x in a.reasons), a.reasons


def test_a_case_whose_where_param_cannot_be_compared_fails(tmp_path):
    """kv_bytes recorded as a string used to make `ge` raise and the case quietly leave the bar."""
    repo = Repo(tmp_path)
    _decode_repo(repo, DECODE + 'min_ratio = { copy = 0.85 }\nwhere = { kv_bytes = { ge = 268435456 } }')
    bad = _decode("B8.H64.T32768", 1.0, 0.5, 1 << 30)
    bad["params"]["kv_bytes"] = str(bad["params"]["kv_bytes"])
    repo.run(machine="gpu", tests=[("tests/test_dec.py::test_b", ["GT-018"], "passed", GPU)],
             benchmarks=[_decode("B8.H32.T32768", 1.0, 0.95, 1 << 30), bad])
    crit = evaluate(repo).story("GT-018").criteria[1]
    assert crit.state == "fail" and "cannot be compared with the bar's `where`" in crit.reason, crit.reason


def test_a_copy_baseline_measured_on_a_busy_card_is_invalid(tmp_path):
    """A copy measured while the card was shared (python -m gates.gpu -n 2 on one GPU) halves the
    reference and doubles every copy ratio, up to the 1.1x cap: a floor under the baselines."""
    from tests.harness._synth import metric, passing_gate1
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    slow = metric("layernorm.fp16", 1600.0, {"torch": 1200.0, "copy": 1700.0}, "tests/test_emb.py::test_bench",
                  ["GT-008"])                                      # 0.94 of a copy measured at half speed
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[slow],
             edit=lambda d: d["baselines"][GPU].update(copy_gbps=1700.0))
    crit = evaluate(repo).story("GT-008").criteria[2]
    assert crit.state == "invalid" and "is below 0.8 x NVIDIA H100 80GB HBM3's memory bandwidth 3350" in crit.reason
