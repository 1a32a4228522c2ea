"""Round 3 of the red-team pass: two ways to hide a failing test from the evidence.

Hole 3: `pytest --keep-duplicates f.py f.py` runs every test of f.py twice under one id; a test
that fails on its first call and passes on its second made pytest say "1 failed, 1 passed" (exit
1, an accepted status) while the evidence held one record, "passed" (the last report won).
Hole 4: `test_x.__test__ = False` (or the same on a class) under a failing story test: pytest
never collects it, the module still collects its other tests, so neither the expected test set
nor the file-level check ("collected no test although it defines some") saw it, and the story
verified.
Each test failed with gates/pytest_plugin.py and gates/audit.py as they were before the fix
(at 61b8378), except the guards against false positives and the single-run phase rules, which
pass before and after."""
import textwrap

import pytest

from gates import manifest
from gates.pytest_plugin import defined_tests

from tests.harness._synth import newest_evidence, run_inner
from tests.harness.test_attacks_process import evaluate, gt001, refused

pytestmark = pytest.mark.story("GT-042")


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip()


# ---------- hole 3: one id, two runs ----------

FLAKY = _src('''
    import os
    import pytest

    FLAG = os.environ["FLAKY_FLAG"]      # outside the repository: the tree stays clean


    @pytest.mark.story("GT-001")
    def test_flaky():
        """Fails on its first call, passes on every later one."""
        if not os.path.exists(FLAG):
            open(FLAG, "w").close()
            raise AssertionError("the bug")
    ''')


def test_a_test_run_twice_under_one_id_keeps_its_failure(tmp_path):
    repo = gt001(tmp_path / "repo")
    repo.write("tests/test_flaky.py", FLAKY)
    flag = tmp_path / "ran-once"
    r = run_inner(repo, "--keep-duplicates", "tests/test_flaky.py", "tests/test_flaky.py",
                  env={"FLAKY_FLAG": str(flag)})
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    doc = newest_evidence(repo)
    assert [t["outcome"] for t in doc["tests"]] == ["failed"]                 # before the fix: ["passed"]
    assert doc["pytest"]["keepduplicates"] is True                              # before the fix: not recorded
    assert "--keep-duplicates was given" in refused(repo, doc)                  # before the fix: it counted
    assert evaluate(repo).story("GT-001").status != "verified"                 # before the fix: verified


def test_a_run_that_exited_for_failures_with_no_failing_record_does_not_count(tmp_path):
    """Exit status 1 means a report failed; a run whose records are all passes lost it (a test
    run twice under one id, a hook that changed what was recorded)."""
    repo = gt001(tmp_path)
    repo.run(tests=[("tests/test_a.py::test_a", ["GT-001"], "passed", "cpu")],
             edit=lambda d: d["run"].update(exit_status=1))
    assert "no test is recorded as failing" in refused(repo, newest_evidence(repo))   # before the fix: it counted
    # an honest failing run still counts (its failure decides the story)
    repo.run(tests=[("tests/test_a.py::test_a", ["GT-001"], "failed", "cpu")],
             edit=lambda d: d["run"].update(exit_status=1))
    assert evaluate(repo).audits[newest_evidence(repo)["_file"]].counts
    assert evaluate(repo).story("GT-001").status == "failing"


def test_a_single_run_keeps_its_phase_rules(tmp_path):
    """The worst-outcome rule is the phases' own in one run: setup or call decide, a failing
    teardown makes any of them an error."""
    repo = gt001(tmp_path)
    repo.write("tests/test_phases.py", _src('''
        import pytest

        pytestmark = pytest.mark.story("GT-001")


        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown")


        @pytest.fixture
        def bad_setup():
            raise RuntimeError("setup")


        def test_pass():
            pass


        def test_fail_then_bad_teardown(bad_teardown):
            assert False


        def test_pass_then_bad_teardown(bad_teardown):
            pass


        def test_setup_error(bad_setup):
            pass


        @pytest.mark.skip(reason="not today")
        def test_skip():
            pass


        @pytest.mark.xfail(reason="known", strict=False)
        def test_xfail():
            assert False


        @pytest.mark.xfail(reason="known", strict=False)
        def test_xpass():
            pass
        '''))
    assert run_inner(repo, "tests").returncode == 1
    got = {t["nodeid"].split("::")[1]: (t["outcome"], t["skip_reason"]) for t in newest_evidence(repo)["tests"]}
    assert got == {"test_pass": ("passed", None), "test_fail_then_bad_teardown": ("error", None),
                   "test_pass_then_bad_teardown": ("error", None), "test_setup_error": ("error", None),
                   "test_skip": ("skipped", "not today"), "test_xfail": ("xfailed", "xfail: known"),
                   "test_xpass": ("xpassed", None)}, got


# ---------- hole 4: one test hidden from collection ----------

GOOD_TEST = '@pytest.mark.story("GT-001")\ndef test_good():\n    assert 2 * 21 == 42\n'

HIDDEN = {
    "function": '''
        @pytest.mark.story("GT-001")
        def test_bad():
            assert 3 * 21 == 42, "the bug"


        test_bad.__test__ = False
        ''',
    "alias": '''
        STORY = pytest.mark.story("GT-001")


        @STORY
        @pytest.mark.parametrize("x", [1, 2])
        def test_bad(x):
            assert x * 3 * 21 == x * 42, "the bug"


        test_bad.__test__ = False
        ''',
    "class": '''
        @pytest.mark.story("GT-001")
        class TestBad:
            def test_bad(self):
                assert 3 * 21 == 42, "the bug"


        TestBad.__test__ = False
        ''',
    "class_with_init": '''
        class TestBad:
            pytestmark = pytest.mark.story("GT-001")

            def __init__(self):
                pass

            def test_bad(self):
                assert 3 * 21 == 42, "the bug"
        ''',
    "module_pytestmark": '''
        pytestmark = pytest.mark.story("GT-001")


        def test_bad():
            assert 3 * 21 == 42, "the bug"


        test_bad.__test__ = False
        ''',
}


@pytest.mark.parametrize("how", sorted(HIDDEN))
def test_a_single_test_hidden_from_collection_makes_its_story_incomplete(tmp_path, how):
    repo = gt001(tmp_path)
    repo.write("tests/test_b.py", "import pytest\n\n\n" + GOOD_TEST + "\n\n" + _src(HIDDEN[how]))
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr                                # the bad test never ran
    m = manifest.load(repo.root, repo.paths.stories)
    hidden = [p for p in m.problems if p["path"].startswith("tests/test_b.py::")]
    assert hidden and hidden[0]["path"].endswith("test_bad"), m.problems         # before the fix: no problem
    assert hidden[0]["stories"] == ["GT-001"]
    story = evaluate(repo).story("GT-001")
    assert story.status != "verified"                                            # before the fix: verified
    assert story.criteria[0].state == "incomplete" and "test_b.py::" in story.criteria[0].reason


# ---------- false positives: tests that are collected, or are no tests ----------

COLLECTED = _src('''
    import pytest

    STORY = pytest.mark.story("GT-001")
    pytestmark = [STORY]


    @pytest.fixture
    def test_data():                     # a fixture, not a test
        return 42


    def helper_not_a_test():
        return 42


    @pytest.mark.story("GT-001")
    def check_value():                   # story-marked, but no test by its name
        pass


    @pytest.mark.parametrize("x", [1, 2, 3])
    def test_param(x, test_data):
        assert test_data == 42


    @pytest.mark.parametrize("x", [])
    def test_empty_param(x):
        pass


    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass


    @pytest.mark.skipif(True, reason="never here")
    def test_skipped_if():
        pass


    class Base:
        def test_in_a_class_pytest_does_not_collect(self):
            pass


    class TestBase:
        __test__ = False                 # collected only through its subclasses

        def test_inherited(self):
            pass


    class TestOne(TestBase):
        __test__ = True


    class TestOuter:
        class TestInner:
            def test_nested(self):
                pass

        def test_method(self):
            pass


    async def helper_async():
        pass
    ''')


def test_collected_tests_and_non_tests_are_no_problem(tmp_path):
    repo = gt001(tmp_path)
    repo.write("tests/test_many.py", COLLECTED)
    repo.write("tests/test_k.py", "import pytest\n\n\n" + GOOD_TEST
               + '\n\n@pytest.mark.story("GT-001")\ndef test_left_out_by_k():\n    pass\n')
    # a run with -k: the left-out test is missing (incomplete), not a manifest problem
    r = run_inner(repo, "tests", "-k", "not left_out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert manifest.load(repo.root, repo.paths.stories).problems == []
    crit = evaluate(repo).story("GT-001").criteria[0]
    assert crit.state == "incomplete" and "expected test set" not in crit.reason, crit.reason
    r = run_inner(repo, "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    crit = evaluate(repo).story("GT-001").criteria[0]
    assert crit.state == "skipped", crit.reason      # the skips never count; nothing else stands in the way
    assert crit.counts["expected"] == crit.counts["fresh"] == 11, crit.counts


def test_defined_tests_reads_marks_where_they_are_literals():
    text = _src('''
        import pytest

        STORY = pytest.mark.story("GT-040")
        MARKS = [STORY, pytest.mark.cuda]
        pytestmark = pytest.mark.story("GT-001")


        @pytest.mark.story("GT-002")
        def test_own():
            pass


        @STORY
        def test_alias():
            pass


        def test_module_only():
            pass


        @pytest.mark.story("GT-003")
        class TestC:
            pytestmark = MARKS

            def test_m(self):
                pass

            def helper(self):
                pass


        @pytest.fixture
        def test_fixture():
            pass


        @pytest.fixture(scope="module")
        def test_module_fixture():
            pass


        fixture = 1


        @pytest.mark.parametrize("x", [fixture])
        def test_not_a_fixture(x):
            pass
        ''')
    got = {(c, n): sorted(ids) for c, n, ids in defined_tests(text)}
    assert got == {(None, "test_own"): ["GT-001", "GT-002"], (None, "test_alias"): ["GT-001", "GT-040"],
                   (None, "test_module_only"): ["GT-001"], ("TestC", "test_m"): ["GT-001", "GT-003", "GT-040"],
                   (None, "test_not_a_fixture"): ["GT-001"]}, got
    assert defined_tests("def test_broken(:\n") == []
