"""nox sessions end to end: `nox -s gate1` exits 0 iff the gate passes (synthetic repository)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness._synth import Repo, passing_gate1

pytestmark = pytest.mark.story("GT-042")

REPO_ROOT = Path(__file__).resolve().parents[2]


def nox(repo, *args):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(GPT_ENGINE_ROOT=str(repo.root), GPT_ENGINE_STORIES_DIR=str(repo.paths.stories),
               GPT_ENGINE_EVIDENCE_DIR=str(repo.paths.evidence), GPT_ENGINE_REPORTS_DIR=str(repo.root / "reports"),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "nox", "-f", str(REPO_ROOT / "noxfile.py"), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sessions_exist():
    r = subprocess.run([sys.executable, "-m", "nox", "-l", "-f", str(REPO_ROOT / "noxfile.py")],
                       capture_output=True, text=True, timeout=120)
    for name in ("tests", "story", "gate1", "gate2", "gate3", "m0", "gpu", "report", "enforce"):
        assert f"{name} ->" in r.stdout, name


def test_gate_session_exit_status_follows_the_verdict(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    r = nox(repo, "-s", "gate1")
    assert r.returncode != 0 and "verdict: gate1 FAIL" in r.stdout + r.stderr
    passing_gate1(repo)
    r = nox(repo, "-s", "gate1", "report")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: gate1 PASS" in r.stdout + r.stderr
    assert json.loads((repo.root / "reports" / "gates" / "gate1.json").read_text())["verdict"] == "pass"
    assert (repo.root / "reports" / "progress.html").exists()
