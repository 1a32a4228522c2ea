"""The pytest plugin end to end: real pytest sub-processes on a synthetic repository."""
import json
import os
import shutil
import textwrap

import pytest

from tests.harness._synth import BENCH_LN, TESTS_CPU, TESTS_CUDA, Repo, newest_evidence, run_inner

pytestmark = pytest.mark.story("GT-042")

HAS_GPU = shutil.which("nvidia-smi") is not None

INNER_TESTS = '''
import pytest

from src import helper


@pytest.mark.story("GT-001")
def test_pass():
    assert helper.two() + 2 == 4

@pytest.mark.story("GT-001", "GT-008")
def test_fail():
    assert 2 + 2 == 5, "arithmetic"

@pytest.mark.story("GT-008")
def test_skip():
    pytest.skip("not today")

@pytest.mark.story("GT-008")
@pytest.mark.cuda
def test_on_gpu():
    pass

@pytest.mark.story("GT-008")
@pytest.mark.benchmark
def test_bench(bench):
    t = bench.cpu_time(lambda: sum(range(100)), warmup=1, reps=3)
    bench.record("gguf_open.gpt2_vocab", t, "s", kind="time", references={"gguf_reader": t * 20})

@pytest.mark.story("GT-008")
def test_bench_unmarked(bench):
    pass
'''


@pytest.fixture
def inner(tmp_path):
    repo = Repo(tmp_path)
    repo.write("src/__init__.py", "")
    repo.write("src/helper.py", "def two():\n    return 2\n")
    repo.write("src/unused.py", "def never():\n    return 0\n")
    repo.add_card("GT-001", 1, "gate1", [], [TESTS_CPU])
    repo.add_card("GT-008", 2, "gate1", [], [TESTS_CPU, TESTS_CUDA, BENCH_LN])
    repo.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")
    repo.write("tests/test_inner.py", INNER_TESTS)
    return repo


def evidence_files(repo):
    return sorted(repo.paths.evidence.glob("*.json"))


def test_one_evidence_file_with_outcomes_devices_metrics_provenance_and_used_files(inner, tmp_path):
    out = tmp_path / "out"
    r = run_inner(inner, "tests", env={"OUT": str(out)})
    assert r.returncode == 1, r.stdout + r.stderr           # test_fail fails
    files = evidence_files(inner)
    assert len(files) == 1 and (out / files[0].name).read_bytes() == files[0].read_bytes()
    doc = json.loads(files[0].read_text())
    assert doc["schema"] == 2
    tests = {t["nodeid"].split("::")[1]: t for t in doc["tests"]}
    assert tests["test_pass"]["outcome"] == "passed" and tests["test_pass"]["device"] == "cpu"
    assert tests["test_fail"]["outcome"] == "failed" and tests["test_fail"]["stories"] == ["GT-001", "GT-008"]
    assert "arithmetic" in tests["test_fail"]["message"]
    assert tests["test_skip"]["outcome"] == "skipped" and tests["test_skip"]["skip_reason"] == "not today"
    assert tests["test_bench_unmarked"]["outcome"] == "error"
    assert "not marked @pytest.mark.benchmark" in tests["test_bench_unmarked"]["message"]
    if HAS_GPU:
        assert tests["test_on_gpu"]["device"] not in (None, "cpu")
    else:
        assert tests["test_on_gpu"]["outcome"] == "skipped" and tests["test_on_gpu"]["device"] is None
        assert "needs CUDA" in tests["test_on_gpu"]["skip_reason"]
    [m] = doc["benchmarks"]
    assert m["name"] == "gguf_open.gpt2_vocab" and m["valid"] and m["stories"] == ["GT-008"]
    assert m["higher_is_better"] is False and m["ratios"]["gguf_reader"] == pytest.approx(20.0)
    prov = doc["provenance"]
    assert {"commit", "dirty", "cpu_model", "gpu_name", "driver", "cuda", "torch", "python", "machine_class"} <= set(prov)
    assert prov["dirty"] is False and len(prov["commit"]) == 40
    assert os.uname().nodename not in json.dumps(doc)         # no host names
    # what the tests used, measured: the helper that ran, not the module nobody called
    assert set(doc["story_files"]) == {"GT-001", "GT-008"}
    gt1 = doc["story_files"]["GT-001"]
    assert {"src/helper.py", "src/__init__.py", "tests/test_inner.py", "stories/GT-001.toml", "pyproject.toml",
            "gates/pytest_plugin.py", "gates/verdict.py", "gates/catalog.toml"} <= set(gt1)
    assert "src/unused.py" not in gt1 and "stories/GT-008.toml" not in gt1
    assert "gates/bench.py" in doc["story_files"]["GT-008"]     # its benchmark ran the timing code
    pt = doc["pytest"]
    assert pt["inifile"] == "pyproject.toml" and pt["rootdir_is_repo"] and pt["rewritten"] == []
    assert pt["tracer_displaced"] == []
    assert {p["module"] for p in pt["plugins"] if p["in_repo"]} == {"gates.pytest_plugin"}
    assert files[0].name.endswith(".json") and f"-{prov['machine_class']}-" in files[0].name
    assert f"evidence: {files[0]} sha256=" in r.stdout


def test_unknown_story_and_unmarked_tests_are_collection_errors(inner):
    inner.write("tests/test_bad.py", textwrap.dedent('''
        import pytest

        @pytest.mark.story("GT-999")
        def test_unknown():
            pass

        @pytest.mark.story("GT-022")
        def test_verdict_story():
            pass

        def test_unmarked():
            pass
    '''))
    r = run_inner(inner, "tests/test_bad.py")
    text = r.stdout + r.stderr
    assert r.returncode == 2, text                           # interrupted: errors during collection
    assert "story 'GT-999' is not in the story catalog" in text
    assert "GT-022 is the gate1 verdict; it has no tests of its own" in text
    assert "test_unmarked" in text and "no @pytest.mark.story" in text
    doc = json.loads(evidence_files(inner)[0].read_text())
    assert doc["tests"] == [] and len(doc["collection_errors"]) == 3


def test_unknown_card_key_stops_the_run(inner):
    p = inner.paths.stories / "GT-001.toml"
    p.write_text("owner = \"me\"\n" + p.read_text())
    r = run_inner(inner, "tests")
    assert r.returncode == 4 and "GT-001.toml: unknown key(s) ['owner']" in r.stdout + r.stderr


def test_no_evidence_option_and_story_filter(inner):
    r = run_inner(inner, "tests", "--no-evidence", "--story", "GT-001")
    assert "1 failed, 1 passed, 4 deselected" in r.stdout, r.stdout
    assert evidence_files(inner) == []


def test_xdist_controller_writes_exactly_one_file_with_the_workers_measurements(inner):
    r = run_inner(inner, "tests", "-n", "2", plugins=("-p", "gates.pytest_plugin", "-p", "xdist"))
    assert r.returncode == 1, r.stdout + r.stderr
    files = evidence_files(inner)
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["run"]["xdist_workers"] == 2
    assert len(doc["tests"]) == 6 and len(doc["benchmarks"]) == 1
    assert {t["outcome"] for t in doc["tests"]} >= {"passed", "failed", "skipped", "error"}
    assert "src/helper.py" in doc["story_files"]["GT-001"]       # measured on a worker, sent home
    assert doc["pytest"]["tracer_displaced"] == [] and doc["pytest"]["rewritten"] == []


def test_a_session_fixture_is_charged_to_every_test_that_uses_it(inner):
    """The first test to use a session fixture sets it up; the files that setup used belong to
    every test using it, whichever runs first."""
    inner.write("tests/conftest.py", textwrap.dedent('''
        import pytest

        @pytest.fixture(scope="session")
        def model():
            from src import maker
            return maker.make()
    '''))
    inner.write("src/maker.py", "def make():\n    return 42\n")
    inner.write("tests/test_inner.py", textwrap.dedent('''
        import pytest

        @pytest.mark.story("GT-001")
        def test_first(model):
            assert model == 42

        @pytest.mark.story("GT-008")
        def test_second(model):
            assert model == 42
    '''))
    r = run_inner(inner, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = newest_evidence(inner)
    for sid in ("GT-001", "GT-008"):
        assert {"src/maker.py", "tests/conftest.py"} <= set(doc["story_files"][sid]), sid


def test_a_class_registered_as_a_plugin_is_named_by_the_class():
    """pytest's own legacypath registers a class, not an instance, as a plugin; the record must name
    that class (an H200 run once logged it as 'builtins.type', which the audit rightly refused to
    trust), and the audit accepts pytest's own class while naming any other."""
    from pathlib import Path

    import _pytest.legacypath as lp

    from gates.audit import plugin_problems
    from gates.pytest_plugin import plugin_facts

    class Foreign:
        pass

    class PM:
        def list_name_plugin(self):
            return [("legacypath-tmpdir", lp.LegacyTmpdirPlugin), ("foreign", Foreign)]

    facts = plugin_facts(type("Cfg", (), {"pluginmanager": PM()})(), Path.cwd())
    assert facts[0]["module"] == "_pytest.legacypath.LegacyTmpdirPlugin"
    problems = [p for p in plugin_problems({"pytest": {"plugins": facts}}) if p.startswith("plugin ")]
    assert len(problems) == 1 and "Foreign" in problems[0]
