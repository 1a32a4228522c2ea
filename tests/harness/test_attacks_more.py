"""More attacks on the harness's promise, found by an audit after test_attacks.py: each is
reproduced in a synthetic repository, first the way it got through, then shown caught.
(The table in docs/harness.md, "Threat model", maps each to its check.)"""
import json

import pytest

from gates import evidence, manifest, physics, sources
from gates.cli import cpu_stories_to_run
from gates.verdict import Evaluator

from tests.harness._synth import (GPU, TESTS_CPU, Repo, git, metric, newest_evidence, passing_gate1,
                                  run_inner)

pytestmark = pytest.mark.story("GT-042")


def evaluate(repo):
    return Evaluator(repo.stories(), evidence.load_all(repo.paths.evidence), sources.hash_stories(repo.root))


def reasons(ev, name) -> str:
    a = ev.audits[name]
    assert not a.counts
    return " | ".join(a.tampered + a.reasons)


USES = '''import pytest
from src{pkg} import helper


@pytest.mark.story("GT-001")
def test_twice():
    assert helper.twice(21) == 42
'''
GOOD = "def twice(x):\n    return 2 * x\n"
BROKEN = "def twice(x):\n    return 3 * x   # broken\n"
FAILING = 'import pytest\n\n\n@pytest.mark.story("GT-001")\ndef test_bad():\n    assert False, "the bug"\n'


def helper_repo(tmp_path, where="src/helper.py") -> Repo:
    """GT-001 (CPU tests only), whose one test uses `where` (listed on no card)."""
    repo = Repo(tmp_path)
    repo.write("src/__init__.py", "")
    pkg = where.rsplit("/", 1)[0]
    if pkg != "src":
        repo.write(f"{pkg}/__init__.py", "")
    repo.write(where, GOOD)
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    repo.write("tests/test_uses.py", USES.format(pkg=pkg[3:].replace("/", ".")))
    return repo


# ---------- A: .gitignore (or a build-output name) hides a tracked source ----------

@pytest.mark.parametrize("where, hide", [
    ("src/helper.py", "src/helper.py"),     # a tracked file named in .gitignore stays tracked
    ("src/build/helper.py", None),          # a package named like a build folder: never a source
])
def test_a_tracked_file_hidden_from_the_sources_makes_the_run_not_count(tmp_path, where, hide):
    repo = helper_repo(tmp_path, where)
    repo.commit("the helper, tracked")
    if hide:
        repo.write(".gitignore", (repo.root / ".gitignore").read_text() + hide + "\n")
        repo.commit("ignore the helper")
    assert git(repo.root, "ls-files", where).strip() == where
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert where not in doc["story_files"]["GT-001"]          # the run could not record it
    why = reasons(evaluate(repo), doc["_file"])
    assert "hides from the sources: " in why and where in why and "tracked files must be sources" in why
    repo.write(where, BROKEN)                                 # the attack: break it, commit
    repo.commit("break the helper")
    assert evaluate(repo).story("GT-001").status != "verified"


def test_gitignore_is_a_source_of_every_story(tmp_path):
    """Ignoring a tested file after the run (and breaking it) stales the story too: .gitignore
    is recorded, and the file it now hides counts as removed."""
    repo = helper_repo(tmp_path)
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert {".gitignore", "src/helper.py"} <= set(doc["story_files"]["GT-001"])
    assert evaluate(repo).story("GT-001").status == "verified"
    repo.write(".gitignore", (repo.root / ".gitignore").read_text() + "src/helper.py\n")
    repo.write("src/helper.py", BROKEN)
    repo.commit("ignore and break the helper")
    crit = evaluate(repo).story("GT-001").criteria[0]
    assert crit.state == "stale" and "changed .gitignore" in crit.reason and "removed src/helper.py" in crit.reason


def test_hidden_tracked_spares_only_reports_and_top_level_dot_entries():
    tracked = [".gitignore", ".ci/run", "reports/evidence/x.json", "src/a.py", "src/b.py", "src/build/c.py",
               "lib/x.so", "pkg/.hidden/d.py"]
    assert sources.hidden_tracked(tracked, "/.cache/\nsrc/b.py\n") == [
        "lib/x.so", "pkg/.hidden/d.py", "src/b.py", "src/build/c.py"]
    assert sources.hidden_tracked(tracked, ".gitignore\n") == ["lib/x.so", "pkg/.hidden/d.py", "src/build/c.py"]


# ---------- D: a forged value, declared a "throughput", escapes the copy bound ----------

def test_a_copy_reference_on_a_metric_that_is_not_a_bandwidth_is_invalid(tmp_path):
    """A new file at 1.35 x copy, passed off as kind="throughput" with the run's real copy
    baseline as its `copy` reference: the bar's copy ratio is met, the bandwidth bound was not
    applied."""
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    forged = metric("layernorm.fp16", 4050.0, {"torch": 1200.0, "copy": 3000.0}, "tests/test_emb.py::test_bench",
                    ["GT-008"], kind="throughput")
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[forged])
    crit = evaluate(repo).story("GT-008").criteria[2]
    assert crit.state == "invalid" and "reference copy on a throughput metric" in crit.reason
    assert evaluate(repo).gate("gate1")["verdict"] == "fail"


@pytest.mark.parametrize("kind, unit, refs, expect", [
    ("throughput", "GB/s", {"copy": 3000.0}, "reference copy on a throughput metric"),
    ("ratio", "x", {"copy": 3000.0}, "reference copy on a ratio metric"),
    ("time", "s", {"copy": 3000.0}, "reference copy on a time metric"),
    ("throughput", "TFLOP/s", {"matmul": 700.0}, "reference matmul on a throughput metric"),
    ("bandwidth", "GB/s", {"matmul": 700.0}, "reference matmul on a bandwidth metric"),
])
def test_copy_and_matmul_references_belong_to_bandwidth_and_flops(kind, unit, refs, expect):
    got = physics.problems(kind, unit, 1.0, refs, {}, True, 3000.0, 700.0)
    assert any(expect in r for r in got), got
    assert physics.problems("bandwidth", "GB/s", 2000.0, {"copy": 3000.0}, {}, True, 3000.0, 700.0) == []
    assert physics.problems("flops", "TFLOP/s", 500.0, {"matmul": 700.0}, {}, True, 3000.0, 700.0) == []


def test_the_bench_fixture_marks_a_copy_reference_on_a_throughput_invalid():
    from tests.harness.test_bench import make_bench
    b, _ = make_bench()
    m = b.record("decode.tok_s", 4050.0, "GB/s", kind="throughput", references={"copy": 3000.0})
    assert not m["valid"] and "reference copy on a throughput metric" in m["invalid_reason"]


# ---------- E: the cached expected test set is trusted ----------

def test_a_committed_manifest_cache_is_never_read(tmp_path):
    """Drop the failing test from the cached expected set, commit the cache (git add -f): the
    set is collected again instead, the committed file left as it is."""
    repo = helper_repo(tmp_path)
    repo.write("tests/test_bad.py", FAILING)
    r = run_inner(repo, "tests", "-k", "not test_bad")
    assert r.returncode == 0, r.stdout + r.stderr
    assert evaluate(repo).story("GT-001").criteria[0].state == "incomplete"
    [cache] = (repo.root / ".cache" / "gates").glob("manifest-*.json")
    assert manifest.own_cache(repo.root, cache)                # this machine's, untracked: read
    doc = json.loads(cache.read_text())
    doc["items"] = [i for i in doc["items"] if "test_bad" not in i["nodeid"]]
    forged = json.dumps(doc)
    cache.write_text(forged)
    git(repo.root, "add", "-f", str(cache))
    git(repo.root, "commit", "-q", "-m", "a cache")
    assert not manifest.own_cache(repo.root, cache)
    crit = evaluate(repo).story("GT-001").criteria[0]
    assert crit.state == "incomplete" and "tests/test_bad.py::test_bad" in crit.reason
    assert cache.read_text() == forged and not git(repo.root, "status", "--porcelain").strip()


def test_a_manifest_cache_behind_a_symlink_is_never_read(tmp_path):
    repo = helper_repo(tmp_path / "repo")
    repo.commit()
    (tmp_path / "elsewhere" / "gates").mkdir(parents=True)
    (repo.root / ".cache").symlink_to(tmp_path / "elsewhere")
    k = manifest.key(repo.root, sources.snapshot(repo.root))
    path = manifest.cache_path(repo.root, k)
    path.write_text(json.dumps({"items": [], "problems": []}))       # a set without any test
    assert not manifest.own_cache(repo.root, path)
    assert manifest.load(repo.root, repo.paths.stories).expected("GT-001", "cpu") == ["tests/test_uses.py::test_twice"]


# ---------- F: CPU evidence edited and committed ----------

def test_committed_cpu_evidence_never_counts(tmp_path):
    """A CPU run with a failing test, flipped to passed and then committed (git add -f): its
    first committed version is already the forged one, and a CPU run has no log to vouch."""
    repo = helper_repo(tmp_path)
    repo.write("tests/test_bad.py", FAILING)
    r = run_inner(repo, "tests")
    assert r.returncode == 1, r.stdout + r.stderr
    p = repo.paths.evidence / newest_evidence(repo)["_file"]
    assert evaluate(repo).story("GT-001").status == "failing"
    p.write_text(p.read_text().replace('"outcome": "failed"', '"outcome": "passed"'))
    git(repo.root, "add", "-f", str(p))
    git(repo.root, "commit", "-q", "-m", "CPU evidence")
    ev = evaluate(repo)
    assert "committed CPU evidence never counts" in reasons(ev, p.name)
    assert ev.story("GT-001").status != "verified" and ev.gate("gate1")["verdict"] == "fail"
    assert cpu_stories_to_run(ev, ["gate1"]) == ["GT-001"]        # nox -s gate1 runs them again


def test_committed_gpu_evidence_still_counts(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    [gpu] = repo.paths.evidence.glob("*-nvidia-*.json")
    git(repo.root, "add", "-f", str(gpu), str(evidence.log_path(gpu)))
    git(repo.root, "commit", "-q", "-m", "GPU evidence")
    ev = evaluate(repo)
    assert ev.audits[gpu.name].counts and ev.gate("gate1")["verdict"] == "pass"


# ---------- B: the repository's code shadowed by a copy from outside it ----------

def test_a_repository_module_loaded_from_outside_the_repository_is_caught(tmp_path):
    """The committed helper is broken; a wrapper puts a good copy first on sys.path and runs
    pytest. The evidence names the repository's (broken) file, with its real hash, while the
    tests ran the copy."""
    import subprocess
    import sys

    from tests.harness._synth import inner_env
    repo = helper_repo(tmp_path / "repo")
    repo.write("src/helper.py", BROKEN)
    repo.commit("the broken helper")
    patched = tmp_path / "patched"
    (patched / "src").mkdir(parents=True)
    (patched / "src" / "__init__.py").write_text("")
    (patched / "src" / "helper.py").write_text(GOOD)
    code = (f"import sys; sys.path.insert(0, {str(patched)!r}); import src.helper; import pytest; "
            "sys.exit(pytest.main(['-p', 'gates.pytest_plugin', 'tests']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=repo.root, env=inner_env(repo), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr          # the broken helper "passed"
    doc = newest_evidence(repo)
    assert "src/helper.py" in doc["story_files"]["GT-001"]
    ev = evaluate(repo)
    why = reasons(ev, doc["_file"])
    assert "repository modules were loaded from outside the repository" in why
    assert f"src.helper from {patched.resolve()}/src/helper.py (the repository's is src/helper.py)" in why
    assert ev.story("GT-001").status != "verified"
