"""Evidence files: corrupt or truncated files are loud errors naming the file; prune; CLI."""
import json
import subprocess
import sys

import pytest

from gates import evidence
from gates.cli import main

from tests.harness._synth import GPU, Repo, git, passing_gate1

pytestmark = pytest.mark.story("GT-042")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    r = Repo(tmp_path)
    r.gate1_minimal()
    passing_gate1(r)
    return r


def _cli(repo, *args):
    return ["--root", str(repo.root), "--stories", str(repo.paths.stories), "--evidence",
            str(repo.paths.evidence), "--reports", str(repo.root / "reports"), *args]


@pytest.mark.parametrize("damage, expect", [
    (lambda t: t[: len(t) // 2], "not valid JSON, truncated or corrupt"),
    (lambda t: "", "empty file"),
    (lambda t: t.replace('"tests"', '"testz"', 1), "missing key 'tests'"),
    (lambda t: t.replace('"outcome": "passed"', '"outcome": "great"', 1), "outcome 'great' not in"),
    (lambda t: "[1, 2, 3]", "top level is not a JSON object"),
])
def test_damaged_evidence_is_an_error_naming_the_file(repo, capsys, damage, expect):
    victim = sorted(repo.paths.evidence.glob("*.json"))[0]
    victim.write_text(damage(victim.read_text()))
    with pytest.raises(evidence.EvidenceError) as e:
        evidence.load_all(repo.paths.evidence)
    assert str(e.value).startswith(str(victim)) and expect in str(e.value)
    # the gate and the report refuse to run rather than drop the file
    assert main(_cli(repo, "gate", "gate1")) == 2
    assert main(_cli(repo, "report")) == 2
    err = capsys.readouterr().err
    assert victim.name in err and expect in err


def test_gate_cli_exit_status_and_json(repo, capsys):
    assert main(_cli(repo, "gate", "gate1")) == 0
    out = capsys.readouterr().out
    assert "verdict: gate1 PASS" in out
    assert "gate1 passes and is not enforced yet" in out
    doc = json.loads((repo.root / "reports" / "gates" / "gate1.json").read_text())
    assert doc["gate"] == "gate1" and doc["verdict"] == "pass" and doc["blockers"] == []
    assert [s["id"] for s in doc["stories"]] == ["GT-001", "GT-008"]
    assert all(s["status"] == "verified" and s["criteria"] for s in doc["stories"])
    (repo.root / "src" / "emb.py").write_text("B = 3\n")          # GT-008 goes stale
    assert main(_cli(repo, "gate", "gate1")) == 1
    doc = json.loads((repo.root / "reports" / "gates" / "gate1.json").read_text())
    assert doc["verdict"] == "fail" and {b["state"] for b in doc["blockers"]} == {"stale"}


def test_enforce_lists_gates_that_must_keep_passing(repo, capsys):
    listfile = repo.root / ".ci" / "enforced_gates"
    listfile.parent.mkdir()
    listfile.write_text("# comment only\n")
    assert main(_cli(repo, "enforce")) == 0
    listfile.write_text("gate1\n")
    assert main(_cli(repo, "enforce")) == 0
    (repo.root / "src" / "tok.py").write_text("A = 2\n")         # regression: gate1 no longer passes
    assert main(_cli(repo, "enforce")) == 1
    assert "enforced gate(s) regressed: gate1" in capsys.readouterr().err
    listfile.write_text("gate9\n")
    assert main(_cli(repo, "enforce")) == 2


def test_prune_keeps_newest_runs_per_machine_class(repo):
    for _ in range(4):
        repo.run(tests=[("t.py::test_a", ["GT-001"], "passed", "cpu")])
    files = {p.name: evidence.load_file(p)["provenance"]["machine_class"] for p in repo.paths.evidence.glob("*.json")}
    assert sorted(files.values()).count("cpu") == 5
    removed = evidence.prune(repo.paths.evidence, keep=2)
    left = [evidence.load_file(p) for p in repo.paths.evidence.glob("*.json")]
    assert len(removed) == 3
    assert sorted(d["provenance"]["machine_class"] for d in left) == ["cpu", "cpu", "nvidia-h100-80gb-hbm3"]
    newest = sorted(f for f, mc in files.items() if mc == "cpu")[-2:]
    assert sorted(d["_file"] for d in left if d["provenance"]["machine_class"] == "cpu") == newest


def test_prune_never_removes_committed_evidence(repo):
    gpu = sorted(repo.paths.evidence.glob("*-nvidia-*.json"))[0]
    git(repo.root, "add", "-f", str(gpu), str(evidence.log_path(gpu)))
    git(repo.root, "commit", "-q", "-m", "GPU evidence")
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)])
    assert main(_cli(repo, "prune", "--keep", "1")) == 0
    assert gpu.exists() and evidence.log_path(gpu).exists()        # history stays


def test_schema_1_files_load_as_history(repo):
    p = sorted(repo.paths.evidence.glob("*.json"))[0]
    doc = json.loads(p.read_text())
    doc["schema"] = 1
    for k in ("pytest", "story_files"):
        doc.pop(k)
    p.write_text(json.dumps(doc))
    [old] = [d for d in evidence.load_all(repo.paths.evidence) if d["_file"] == p.name]
    assert old["_history"] is True


def test_the_real_h100_runs_are_history():
    """The six H100 runs of the earlier attempt (2026-11-26, before this harness) load as history
    and never count. An H100 run this harness recorded later (session 29, when no H200 started)
    is not history: it counts or not on its own audit, like any other run."""
    from gates.paths import resolve
    docs = evidence.load_all(resolve().evidence)
    h100 = [d for d in docs if d["provenance"].get("machine_class") == "nvidia-h100-80gb-hbm3"]
    old = [d for d in h100 if d["run"]["started"] < "2026-12-01"]
    assert len(old) >= 6 and all(d["_history"] for d in old)
    assert not any(d["_history"] for d in h100 if d["run"]["started"] >= "2026-12-01")


def test_prune_cli(repo):
    r = subprocess.run([sys.executable, "-m", "gates", *_cli(repo, "prune", "--keep", "1", "--dry-run")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "would remove 0 file(s)" in r.stdout
