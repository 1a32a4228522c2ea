"""nox sessions end to end in a synthetic repository: `nox -s gate1` exits 0 iff the gate
passes, runs the CPU tests it needs on a fresh clone, and `nox -s story` fails unless verified."""
import json
import subprocess
import sys

import pytest

from tests.harness._synth import TESTS_CPU, Repo, inner_env, passing_gate1

pytestmark = pytest.mark.story("GT-042")


def nox(repo, *args):
    repo.commit("before nox")
    return subprocess.run([sys.executable, "-m", "nox", "-f", str(repo.root / "noxfile.py"), *args],
                          cwd=repo.root, env=inner_env(repo), capture_output=True, text=True, timeout=600)


def test_sessions_exist(tmp_path):
    r = nox(Repo(tmp_path), "-l")
    for name in ("tests", "story", "gate1", "gate2", "gate3", "m0", "gpu", "report", "enforce"):
        assert f"{name} ->" in r.stdout, name


def test_gate_session_exit_status_follows_the_verdict(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    (repo.paths.evidence / sorted(p.name for p in repo.paths.evidence.glob("*-nvidia-*.json"))[0]).unlink()
    r = nox(repo, "-s", "gate1")
    assert r.returncode != 0 and "verdict: gate1 FAIL" in r.stdout + r.stderr
    passing_gate1(repo)
    r = nox(repo, "-s", "gate1", "report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: gate1 PASS" in r.stdout + r.stderr
    assert json.loads((repo.root / "reports" / "gates" / "gate1.json").read_text())["verdict"] == "pass"
    assert (repo.root / "reports" / "progress.html").exists()


@pytest.fixture
def fresh_clone(tmp_path):
    """A repository with real CPU tests and no evidence at all, as a fresh clone is."""
    repo = Repo(tmp_path)
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-002", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    repo.write("tests/test_tok.py", 'import pytest\n\n\n@pytest.mark.story("GT-001")\ndef test_a():\n    pass\n\n\n'
                                    '@pytest.mark.story("GT-002")\ndef test_b():\n    assert 1 + 1 == 2\n')
    return repo


def test_gate1_runs_the_cpu_tests_it_needs_on_a_fresh_clone(fresh_clone):
    r = nox(fresh_clone, "-s", "gate1")
    out = r.stdout + r.stderr
    assert "gate1: CPU evidence is missing or stale for GT-001, GT-002: running their CPU tests" in out
    assert r.returncode == 0, out
    assert "verdict: gate1 PASS" in out
    r = nox(fresh_clone, "-s", "gate1")                       # fresh now: nothing to rerun
    assert r.returncode == 0 and "running their CPU tests" not in r.stdout


def test_story_session_exits_non_zero_unless_verified(fresh_clone):
    r = nox(fresh_clone, "-s", "story", "--", "GT-001")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GT-001 synthetic GT-001 (sprint 1, gate1): VERIFIED" in r.stdout
    (fresh_clone.root / "tests" / "test_tok.py").write_text(
        (fresh_clone.root / "tests" / "test_tok.py").read_text().replace("1 + 1 == 2", "1 + 1 == 3"))
    r = nox(fresh_clone, "-s", "story", "--", "GT-002")
    assert r.returncode != 0 and "not verified: GT-002" in r.stdout
