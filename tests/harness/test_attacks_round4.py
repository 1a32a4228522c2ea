"""Round 4 of the red-team pass: a C kernel charged to one story only (a cached build), a new
root module that shadows a third-party package, and evidence that does not count turning a
not-started story into a partial one. (The fourth hole, bars outside gate1 that no test pinned,
is test_catalog::test_every_bar_of_every_story_is_pinned.) Each test failed with gates/verdict.py
and gates/sources.py as they were before the fix, and passes with it."""
import pytest

from gates import sources
from gates.paths import resolve
from gates.verdict import percentages

from tests.harness._synth import TESTS_CPU, Repo, newest_evidence, passing_gate1, run_inner
from tests.harness.test_attacks import passing  # noqa: F401 (the fixture: gate1 passing on a synthetic repo)
from tests.harness.test_attacks_process import evaluate, gt001, refused

pytestmark = pytest.mark.story("GT-042")

REAL = resolve()
KERNEL = "csrc_cpu/q4_gemv.c"

# The shape of gpt_engine/cpu_q4.py: the C source is read (built) only inside a cached load(),
# so in one process the tracer sees it opened once, by whichever test calls load() first.
CPU_Q4 = '''import functools
import pathlib

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "csrc_cpu" / "q4_gemv.c"


@functools.cache
def load():
    return SOURCE.read_text()


def works():
    return "return 0;" in load()
'''
USES_Q4 = ('import pytest\nfrom gpt_engine import cpu_q4\n\n\n'
           '@pytest.mark.story("{sid}")\ndef test_{name}():\n    assert cpu_q4.works()\n')


def q4_repo(tmp_path) -> Repo:
    repo = gt001(tmp_path)
    repo.add_card("GT-003", 1, "gate1", [], [TESTS_CPU])
    repo.write("gpt_engine/__init__.py", "")
    repo.write("gpt_engine/cpu_q4.py", CPU_Q4)
    repo.write(KERNEL, "int q4(void) { return 0; }\n")
    repo.write("tests/test_a_first.py", USES_Q4.format(sid="GT-001", name="first"))
    repo.write("tests/test_b_second.py", USES_Q4.format(sid="GT-003", name="second"))
    return repo


# ---------- hole 1: a C kernel built once per process is charged to one story ----------

def test_the_cpu_kernel_is_a_source_of_every_record_that_uses_its_module():
    """The rule, on the real tree: a record whose files include gpt_engine/cpu_q4.py (directly,
    or one import level from a module its tests ran) lists csrc_cpu/**."""
    known = sources.snapshot(REAL.root)
    imports = sources.Imports(REAL.root, known)
    assert KERNEL in sources.story_files(known, imports, {"gpt_engine/cpu_q4.py"})
    assert KERNEL in sources.story_files(known, imports, {"gpt_engine/qweight.py"})     # imports cpu_q4
    assert KERNEL not in sources.story_files(known, imports, {"gpt_engine/tokenizer.py"})


def test_a_broken_cpu_kernel_stales_every_story_that_uses_it_not_only_the_first(tmp_path):
    """A real run: GT-001's test calls load() first and the tracer charges the C file to GT-001
    only; GT-003's test gets the cached library. A committed break of the C file then left
    GT-003 verified (as it left GT-025 verified on the real tree)."""
    repo = q4_repo(tmp_path)
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert KERNEL in newest_evidence(repo)["story_files"]["GT-003"]             # before the fix: absent
    ev = evaluate(repo)
    assert [ev.story(s).status for s in ("GT-001", "GT-003")] == ["verified", "verified"]
    repo.write(KERNEL, "int q4(void) { return 1; }   /* broken */\n")
    repo.commit("break the C kernel")
    assert run_inner(repo, "tests", "--no-evidence").returncode == 1
    ev = evaluate(repo)
    assert [ev.story(s).status for s in ("GT-001", "GT-003")] == ["stale", "stale"]   # before: GT-003 verified
    assert f"changed {KERNEL}" in ev.story("GT-003").criteria[0].reason


def _as_committed_evidence_records_it(doc):
    """What the GPU runs committed before the fix hold: the C file in no story's files (another
    test built the kernel first, or it was built before the trace started)."""
    for sid, fs in doc["story_files"].items():
        doc["story_files"][sid] = [f for f in fs if not f.startswith("csrc_cpu/")]
    doc["source_files"] = {f: h for f, h in doc["source_files"].items() if not f.startswith("csrc_cpu/")}


def _recorded_without_the_kernel(tmp_path) -> Repo:
    repo = q4_repo(tmp_path)
    repo.run(tests=[("tests/test_a_first.py::test_first", ["GT-001"], "passed", "cpu")],
             edit=_as_committed_evidence_records_it)
    assert KERNEL not in newest_evidence(repo)["story_files"]["GT-001"]
    assert evaluate(repo).story("GT-001").status == "verified"
    return repo


def test_evidence_recorded_without_the_kernel_is_still_staled_by_a_change_to_it(tmp_path):
    """The verdict applies the rule to evidence written before it (the run's source tree holds
    the C file's hash): committed GPU runs list cpu_q4.py for GT-025 but not the C file."""
    repo = _recorded_without_the_kernel(tmp_path)
    repo.write(KERNEL, "int q4(void) { return 1; }   /* broken */\n")
    repo.commit("break the C kernel")
    ev = evaluate(repo)
    assert ev.story("GT-001").status == "stale"                                  # before the fix: verified
    assert f"changed {KERNEL}" in ev.story("GT-001").criteria[0].reason


def test_a_file_added_beside_the_cpu_kernel_stales_the_stories_that_use_it(tmp_path):
    """A new csrc_cpu/q4_tables.h that the C file includes: the record lists no csrc_cpu file,
    so no recorded folder holds it."""
    repo = _recorded_without_the_kernel(tmp_path)
    repo.write("csrc_cpu/q4_tables.h", "#define Q4_SCALE 3\n")
    repo.commit("a header beside the C kernel")
    ev = evaluate(repo)
    assert ev.story("GT-001").status == "stale"                                  # before the fix: verified
    assert "added csrc_cpu/q4_tables.h" in ev.story("GT-001").criteria[0].reason


# ---------- hole 2: a new root module shadows an installed package ----------

USES_GGUF = ('import gguf\nimport pytest\n\n\n'
             '@pytest.mark.story("GT-001")\ndef test_reader():\n    assert gguf.GGUFReader is not None\n')


def test_a_root_module_that_shadows_an_installed_package_stales_the_story(tmp_path):
    """The root is first on sys.path: a root gguf.py is imported instead of the installed gguf.
    No recorded file changed and the root is no recorded module's folder, so nothing went stale."""
    pytest.importorskip("gguf")
    repo = gt001(tmp_path)
    repo.write("tests/test_gguf.py", USES_GGUF)
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert evaluate(repo).story("GT-001").status == "verified"
    repo.write("gguf.py", "GGUFReader = None\n")
    repo.commit("a root gguf.py")
    assert run_inner(repo, "tests", "--no-evidence").returncode == 1           # what runs now fails
    ev = evaluate(repo)
    assert ev.story("GT-001").status == "stale"                                  # before the fix: verified
    assert "added gguf.py" in ev.story("GT-001").criteria[0].reason


@pytest.mark.parametrize("added", ["gguf.py", "gguf/__init__.py", "numpy.pth", "vendor/gguf/__init__.py",
                                   "vendor/gguf.py", "src/__init__.py"])
def test_root_code_or_a_new_top_level_package_stales_every_story(passing, added):
    """Whatever a story's tests import, an added root module or top-level package can replace it
    (a third-party package, or one of the repository's own top-level names)."""
    passing.write(added, "GGUFReader = None\n")
    passing.commit(f"add {added}")
    ev = evaluate(passing)
    assert {s: ev.story(s).status for s in ("GT-001", "GT-008")} == {"GT-001": "stale", "GT-008": "stale"}
    assert ev.gate("gate1")["verdict"] == "fail"                                 # before the fix: pass


@pytest.mark.parametrize("added", ["NOTES.md", "docs/notes.md", "tests/data/case.json", "tests/test_new.py"])
def test_a_root_file_that_is_not_code_stales_nothing(passing, added):
    """No over-reach: documentation at the root or in a new folder, data and a new test module
    in tests/ (which existed at the run) leave the stories fresh."""
    passing.write(added, "{}\n" if added.endswith(".json") else "# notes\n")
    passing.commit(f"add {added}")
    ev = evaluate(passing)
    assert ev.gate("gate1")["verdict"] == "pass", ev.gate("gate1")["blockers"]


# ---------- hole 5: evidence that does not count marks a story implemented ----------

def _forge(doc):
    doc["provenance"]["commit"] = "0123456789abcdef" * 2 + "01234567"             # a made-up commit


def test_evidence_that_does_not_count_leaves_a_story_not_started(tmp_path):
    """An uncommitted forged file that the audit rejects turned not-started into PARTIAL and
    raised the reports' "implemented" percentage."""
    repo = gt001(tmp_path)
    before = evaluate(repo)
    assert before.story("GT-001").status == "not-started"
    assert percentages(before.all_stories())["implemented"] == 0.0
    repo.run(tests=[("tests/test_tok.py::test_a", ["GT-001"], "passed", "cpu")], edit=_forge)
    assert "0123456789" in refused(repo, newest_evidence(repo))
    ev = evaluate(repo)
    res = ev.story("GT-001")
    assert (res.status, res.implemented) == ("not-started", False)              # before the fix: partial, True
    assert ev.story("GT-022").status == "not-started"                            # the gate's verdict story too
    assert percentages(ev.all_stories())["implemented"] == 0.0                  # before the fix: 100.0


def test_counted_evidence_still_marks_a_story_implemented_when_it_is_stale(tmp_path):
    """Counting runs only, fresh or not: a story whose code changed since its last counted run
    was implemented; its criteria say stale."""
    repo = gt001(tmp_path)
    repo.run(tests=[("tests/test_tok.py::test_a", ["GT-001"], "failed", "cpu")])
    repo.write("tests/test_tok.py", (repo.root / "tests/test_tok.py").read_text() + "# edited\n")
    repo.commit("edit the test")
    res = evaluate(repo).story("GT-001")
    assert (res.status, res.implemented) == ("stale", True)


def test_a_run_with_a_small_cublas_workspace_does_not_count(tmp_path):
    """CUBLAS_WORKSPACE_CONFIG=:0:0 shrinks cuBLAS's workspace: prefill's GEMMs run other
    algorithms, and the memory peak memory_estimate() is judged against shrinks along with the
    estimate (the engine reads the variable to estimate). Recorded, and now refused like
    CUDA_LAUNCH_BLOCKING."""
    from tests.harness.test_attacks_round2 import GPU, KERNEL_TEST, kernel_story

    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)],
             edit=lambda d: d["pytest"].update(env={"CUBLAS_WORKSPACE_CONFIG": ":0:0", "PYTHONPATH": "/tmp/site"}))
    refused(repo, newest_evidence(repo))                                     # before the fix: it counted


def test_a_run_stamped_after_the_commit_that_added_it_does_not_count(tmp_path):
    """A GPU run whose clock ran two days ahead, committed at once: the future check rejects it
    only until that date has passed, after which it would beat every honest run made in between
    (the newest run decides). Its finish lies after the commit that added the file: refused at
    any time. An honest run committed after it finished still counts."""
    from datetime import timedelta

    from gates import evidence
    from gates.audit import audit_runs
    from tests.harness._synth import GPU, git

    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    cuda = [("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU)]
    ahead = repo.run(machine="gpu", minutes=60 * 24 * 2, tests=cuda)
    honest = repo.run(machine="gpu", tests=cuda)
    git(repo.root, "add", "-f", str(repo.paths.evidence))
    git(repo.root, "commit", "-q", "-m", "evidence")
    later = repo.t0 + timedelta(days=3)           # the stamped date has passed
    audits, _ = audit_runs(repo.root, evidence.load_all(repo.paths.evidence), repo.paths.evidence, now=later)
    assert "after the commit that added it" in " | ".join(audits[ahead.name].reasons)   # before the fix: counted
    assert not audits[ahead.name].counts
    assert audits[honest.name].counts, audits[honest.name].reasons
