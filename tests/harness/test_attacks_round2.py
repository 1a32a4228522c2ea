"""Round 2 of the red-team pass (after 471bbb6 / c622cea): attacks on freshness (files added
after a run), on the new source-tree and shadowed-module checks (files the source rules never
count but Python or the extension build loads), on the expected test set (a module that
collects nothing), on the reports, and false positives of the audit that would refuse an honest
GPU run. Each test failed on main at 1692900 and passes with the fixes of the commit that
added it; docs/harness.md's table maps each to its check."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gates import evidence, manifest, sources
from gates.audit import log_problems

from tests.harness._synth import (GPU, TESTS_CPU, TESTS_CUDA, Repo, git, inner_env, metric, newest_evidence, passing_gate1,
                                  run_inner, write_log)
from tests.harness.test_attacks_process import BROKEN, GOOD, USES_HELPER, evaluate, gt001, refused
from tests.harness.test_verdict import DECODE, _decode, _decode_repo

pytestmark = pytest.mark.story("GT-042")

KERNEL_TEST = "tests/test_k.py::test_kernel"


def kernel_story(tmp_path) -> Repo:
    repo = Repo(tmp_path)
    repo.add_card("GT-016", 2, "gate1", [], [TESTS_CUDA])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    repo.write("csrc/a.cu", "// kernel a\n")
    return repo


# ---------- freshness: a file added after the run stales nothing ----------

def test_a_package_added_beside_a_recorded_module_stales_the_story(tmp_path):
    """src/helper/__init__.py is imported instead of src/helper.py (a package beats a module of
    the same name): the code that runs changed, no recorded file did."""
    repo = gt001(tmp_path)
    repo.write("src/helper.py", GOOD)
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=""))
    assert run_inner(repo, "tests").returncode == 0
    assert evaluate(repo).story("GT-001").status == "verified"
    repo.write("src/helper/__init__.py", BROKEN)
    repo.commit("helper as a package")
    assert run_inner(repo, "tests", "--no-evidence").returncode == 1        # what runs now fails
    assert evaluate(repo).story("GT-001").status == "stale"                # before the fix: verified


def test_a_file_added_under_the_kernel_globs_stales_gpu_evidence(tmp_path):
    """gpt_engine/ops/_ext.py builds csrc/*.cu: a new .cu is compiled into the extension every
    GPU test uses, but a GPU record depends only on the csrc files that existed at its run."""
    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)])
    assert evaluate(repo).story("GT-016").status == "verified"
    repo.write("csrc/b.cu", "// a new kernel file, linked into the same extension\n")
    repo.commit("new kernel file")
    assert evaluate(repo).story("GT-016").status == "stale"                # before the fix: verified


@pytest.mark.parametrize("added", ["conftest.py", "csrc/b.cu"])
def test_an_edit_to_a_file_only_the_newer_failing_run_saw_does_not_revive_the_older_pass(tmp_path, added):
    """R1 passes; a file is added (a stricter root conftest, a new kernel file); R2, the honest
    run with it, fails; a comment in the added file stales R2 (it recorded the file) but not R1
    (it never knew the file), so R1's pass decides again."""
    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)])
    repo.write(added, "// added\n" if added.endswith(".cu") else "# added: a stricter guard\n")
    repo.commit(f"add {added}")
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "failed", GPU)])
    assert evaluate(repo).story("GT-016").status == "failing"
    p = repo.root / added
    p.write_text(p.read_text() + ("// reworded\n" if added.endswith(".cu") else "# reworded\n"))
    repo.commit(f"comment in {added}")
    assert evaluate(repo).story("GT-016").status != "verified"             # before the fix: verified


# ---------- code the source rules never count ----------

@pytest.fixture(scope="module")
def twice_extension(tmp_path_factory) -> Path:
    """A compiled module `helper` whose twice() is right (the stand-in for any binary beside a .py)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler here")
    d = tmp_path_factory.mktemp("ext")
    (d / "helper.c").write_text(
        "#include <Python.h>\n"
        "static PyObject* twice(PyObject* s, PyObject* x) { return PyNumber_Add(x, x); }\n"
        'static PyMethodDef M[] = {{"twice", twice, METH_O, ""}, {NULL, NULL, 0, NULL}};\n'
        'static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "helper", NULL, -1, M};\n'
        "PyMODINIT_FUNC PyInit_helper(void) { return PyModule_Create(&D); }\n")
    out = d / ("helper" + sysconfig.get_config_var("EXT_SUFFIX"))
    r = subprocess.run([cc, "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"], str(d / "helper.c"),
                        "-o", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"a C compiler is here but the extension did not build: {r.stderr[-200:]}")
    return out


def test_an_untracked_extension_module_beside_a_source_does_not_count(tmp_path, twice_extension):
    """src/helper.<EXT_SUFFIX> is imported instead of src/helper.py. git does not ignore *.so, so
    it travels to the GPU copy as an untracked file; the source rules skip *.so, so source_tree
    never lists it; the evidence names the broken helper.py as the file that passed. Where git
    cannot answer (the GPU copy) or is told not to (GPT_ENGINE_GIT_DIRTY=0, allowed), it counts."""
    repo = gt001(tmp_path)
    repo.write("src/helper.py", BROKEN)
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=""))
    assert run_inner(repo, "tests").returncode == 1
    head = git(repo.root, "rev-parse", "HEAD").strip()
    shutil.copy(twice_extension, repo.root / "src" / twice_extension.name)
    r = run_inner(repo, "tests", commit=False, env={"GPT_ENGINE_GIT_COMMIT": head, "GPT_ENGINE_GIT_DIRTY": "0"})
    assert r.returncode == 0, r.stdout + r.stderr                           # the binary ran, not helper.py
    refused(repo, newest_evidence(repo))                                     # before the fix: it counted


def test_every_file_the_extension_is_built_from_is_a_source(tmp_path, monkeypatch):
    """_ext.sources() globs csrc/*.cu with pathlib, which matches dot-files: an untracked
    csrc/.x.cu is compiled into the extension while the source rules (and source_tree) skip it."""
    from gpt_engine.ops import _ext
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in ("a.cu", ".x.cu", "bindings.cpp"):
        (csrc / name).write_text("// kernel\n")
    monkeypatch.setattr(_ext, "CSRC", csrc)
    built = [p.relative_to(tmp_path).as_posix() for p in _ext.sources()]
    assert [f for f in built if not sources.is_source(f, [])] == []       # before the fix: ['csrc/.x.cu']


def test_a_repository_module_loaded_from_a_copy_inside_the_root_is_shadowed(tmp_path):
    """The shadowed check skips every file under the root: a good copy in build/ (git-ignored,
    never a source), imported before pytest puts the root first (a sitecustomize.py on
    PYTHONPATH), runs instead of the broken src/helper.py the evidence names."""
    repo = gt001(tmp_path)
    repo.write("src/helper.py", BROKEN)
    repo.write("tests/test_uses.py", USES_HELPER.format(mod=""))
    assert run_inner(repo, "tests").returncode == 1
    good = repo.root / "build" / "good"
    (good / "src").mkdir(parents=True)
    (good / "src" / "__init__.py").write_text("")
    (good / "src" / "helper.py").write_text(GOOD)
    (good / "sitecustomize.py").write_text("import src.helper\n")
    assert git(repo.root, "status", "--porcelain") == ""
    r = run_inner(repo, "tests", commit=False, env={"PYTHONPATH": f"{good}{os.pathsep}{repo.root}"})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert any(s.startswith("src.helper ") for s in doc["pytest"]["shadowed"]), doc["pytest"]["shadowed"]  # before the fix: []
    assert "repository modules were loaded from outside" in refused(repo, doc)


# ---------- the expected test set ----------

def test_a_test_module_that_collects_nothing_makes_its_stories_incomplete(tmp_path):
    """`__test__ = False` (one line) empties a module without a skip, an error or an --ignore:
    the failing test leaves the expected set and the story verifies."""
    repo = gt001(tmp_path)
    repo.write("tests/test_a.py", 'import pytest\n\n\n@pytest.mark.story("GT-001")\ndef test_good():\n    assert 2 * 21 == 42\n')
    repo.write("tests/test_b.py", 'import pytest\n\n__test__ = False   # collected on demand\n\n\n'
                                  '@pytest.mark.story("GT-001")\ndef test_bad():\n    assert 3 * 21 == 42, "the bug"\n')
    assert run_inner(repo, "tests").returncode == 0
    m = manifest.load(repo.root, repo.paths.stories)
    assert any(p["path"] == "tests/test_b.py" for p in m.problems), m.problems       # before the fix: no problem
    assert evaluate(repo).story("GT-001").status != "verified"


# ---------- bars ----------

def test_a_case_whose_where_param_is_nan_is_a_problem(tmp_path):
    """The `where` fix refuses a string param; a NaN one still compares False and the failing
    case leaves the bar quietly."""
    repo = Repo(tmp_path)
    _decode_repo(repo, DECODE + 'min_ratio = { copy = 0.85 }\nwhere = { kv_bytes = { ge = 268435456 } }')
    bad = _decode("B8.H64.T32768", 1.0, 0.5, 1 << 30)
    bad["params"]["kv_bytes"] = float("nan")
    repo.run(machine="gpu", tests=[("tests/test_dec.py::test_b", ["GT-018"], "passed", GPU)],
             benchmarks=[_decode("B8.H32.T32768", 1.0, 0.95, 1 << 30), bad])
    crit = evaluate(repo).story("GT-018").criteria[1]
    assert crit.state == "fail", crit.reason                               # before the fix: pass


def test_the_later_of_two_runs_finishing_in_the_same_second_is_the_newest(tmp_path):
    """Runs are ordered by (finished, file name): X.json sorts after X-2.json, so the earlier of two
    runs of one commit finishing in the same second decides."""
    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)], minutes=5)
    second = repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "failed", GPU)], minutes=5, commit=False)
    assert second.name.endswith("-2.json")
    assert evaluate(repo).story("GT-016").status == "failing"              # before the fix: verified


def test_a_run_with_a_process_setting_that_changes_timings_does_not_count(tmp_path):
    """CUDA_LAUNCH_BLOCKING=1 (or PYTORCH_NO_CUDA_MEMORY_CACHING=1, CUBLAS_WORKSPACE_CONFIG=:0:0)
    changes what the engine and its torch oracle cost inside the timed region differently (different
    numbers of launches and allocations); recorded, written atop the log, and accepted."""
    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)],
             edit=lambda d: d["pytest"].update(env={"CUDA_LAUNCH_BLOCKING": "1", "PYTHONPATH": "/tmp/site"}))
    refused(repo, newest_evidence(repo))                                     # before the fix: it counted


# ---------- reports ----------

def test_the_markdown_throughput_table_flags_an_invalid_figure(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    perf = metric("perf.decode.gpt2-124m.F16", 9000.0, {"hf": 300.0}, "tests/test_emb.py::test_bench", ["GT-008"],
                  unit="tok/s", kind="throughput")
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)], benchmarks=[perf],
             edit=lambda d: d["baselines"][GPU].update(copy_gbps=1500.0))      # invalid: a shared card's copy
    r = subprocess.run([sys.executable, "-m", "gates", "report"], cwd=repo.root, env=inner_env(repo),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("m0_readiness.html", "m0_readiness.md"):
        rows = [line for line in (repo.root / "reports" / name).read_text().splitlines()
                if "gpt2-124m" in line and "tok/s" in line and not line.startswith("- ")]
        assert rows and all("invalid" in line for line in rows), (name, rows)   # before the fix: the .md row is not


# ---------- false positives: an honest GPU run refused ----------

def _gpu_with_log(tmp_path, nodeid="tests/test_emb.py::test_cuda") -> tuple[Repo, Path, dict]:
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    path = repo.run(machine="gpu", tests=[(nodeid, ["GT-008"], "passed", GPU)])
    return repo, path, evidence.load_file(path)


def test_a_gpu_log_written_with_colour_still_vouches(tmp_path):
    """FORCE_COLOR / PY_COLORS=1 in the GPU machine's environment (neither is recorded), or
    `python -m gates.gpu --color=yes`: pytest colours the -rA lines even into a pipe, the audit's
    pattern no longer matches them, and the run is refused for "no per-test outcomes"."""
    repo, path, doc = _gpu_with_log(tmp_path)
    log = evidence.log_path(path)
    text = log.read_text().replace("PASSED tests/test_emb.py::test_cuda",
                                   "\x1b[32mPASSED\x1b[0m tests/test_emb.py::\x1b[1mtest_cuda\x1b[0m")
    log.write_text(text)
    assert log_problems(path, doc, path.read_bytes()) == []                 # before the fix: refused


def test_a_nodeid_with_a_spaced_dash_still_vouches(tmp_path):
    """_LOG_LINE cuts a PASSED line at the first ' - ' (meant for FAILED's message): a parametrize
    id such as [gpt2 - 124m] makes log and JSON disagree."""
    repo, path, doc = _gpu_with_log(tmp_path, "tests/test_emb.py::test_cuda[gpt2 - 124m]")
    assert log_problems(path, doc, path.read_bytes()) == []                 # before the fix: refused


def test_a_new_test_module_beside_the_tests_helpers_stales_nothing(tmp_path):
    """The added-file rule looks for code that can replace what a recorded module runs; a new
    test file in tests/ops (beside _util.py, which every ops test records) is not such code, and
    staling every kernel story's GPU evidence for it would cost a GPU run for nothing."""
    repo = kernel_story(tmp_path)
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])       # the new test's story (cards are sources)
    repo.write("tests/_util.py", "def helper():\n    return 1\n")
    repo.write("tests/test_k.py", "import pytest\nfrom tests import _util  # noqa: F401\n")
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)])
    assert evaluate(repo).story("GT-016").status == "verified"
    repo.write("tests/test_other.py", 'import pytest\n\n\n@pytest.mark.story("GT-001")\ndef test_other():\n    pass\n')
    repo.commit("a new test module")
    assert evaluate(repo).story("GT-016").status == "verified"
    repo.write("tests/_util/__init__.py", "def helper():\n    return 2\n")   # a package beside the helper
    repo.commit("helper as a package")
    assert evaluate(repo).story("GT-016").status == "stale"


def test_a_run_with_runxfail_does_not_count(tmp_path):
    """--runxfail turns an xfail marker off, so a test expected to fail and passing would read as
    a plain pass (the repo has no xfail test today; the option is refused like --noconftest)."""
    repo = kernel_story(tmp_path)
    repo.run(machine="gpu", tests=[(KERNEL_TEST, ["GT-016"], "passed", GPU)],
             edit=lambda d: d["pytest"].update(runxfail=True))
    assert "--runxfail was given" in refused(repo, newest_evidence(repo))
