"""Gate and story verdicts from synthetic evidence: skips, staleness, newest evidence, upstream."""
import pytest

from gates import evidence, sources
from gates.verdict import Evaluator

from tests.harness._synth import GPU, TESTS_CPU, Repo, metric, passing_gate1

pytestmark = pytest.mark.story("GT-042")


def evaluate(repo):
    stories = repo.stories()
    return Evaluator(stories, evidence.load_all(repo.paths.evidence), sources.hash_stories(repo.root, stories))


def test_positive_control_gate1_passes_with_complete_fresh_evidence(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    ev = evaluate(repo)
    g = ev.gate("gate1")
    assert g["verdict"] == "pass", g["blockers"]
    assert ev.story("GT-022").status == "verified"     # the verdict story mirrors its gate


def test_gate_cannot_pass_on_skips(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    # newest GPU run: the CUDA test skipped on a machine that has a GPU (e.g. extension missing)
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "skipped", GPU)])
    g = evaluate(repo).gate("gate1")
    assert g["verdict"] == "fail"
    assert [(b["story"], b["criterion"], b["state"]) for b in g["blockers"]] == [("GT-008", "tests on cuda", "skipped")]
    assert "a skip is not a pass" in g["blockers"][0]["reason"]


def test_cuda_tests_skipped_on_a_cpu_machine_are_missing_cuda_evidence(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    repo.run(tests=[("tests/test_tok.py::test_a", ["GT-001"], "passed", "cpu"),
                    ("tests/test_emb.py::test_ref", ["GT-008"], "passed", "cpu"),
                    ("tests/test_emb.py::test_cuda", ["GT-008"], "skipped", None)])
    ev = evaluate(repo)
    g = ev.gate("gate1")
    assert g["verdict"] == "fail"
    states = {(b["story"], b["criterion"]): (b["state"], b["reason"]) for b in g["blockers"]}
    assert states[("GT-008", "tests on cuda")][0] == "missing"
    assert "only ran on machines without a GPU" in states[("GT-008", "tests on cuda")][1]
    assert states[("GT-008", "bench layernorm.fp16 on cuda (copy>=0.8; torch>=2)")][0] == "missing"
    assert ev.story("GT-008").status == "cpu-only"
    assert ev.story("GT-001").status == "verified"


def test_changing_one_source_file_stales_exactly_the_stories_that_list_it(tmp_path):
    repo = Repo(tmp_path)
    for f in ("a.py", "b.py", "c.py", "shared.py"):
        repo.write(f"src/{f}", f"# {f}\n")
    repo.add_card("GT-001", 1, "gate1", ["src/a.py", "src/shared.py"], [TESTS_CPU])
    repo.add_card("GT-002", 1, "gate1", ["src/b.py", "src/shared.py"], [TESTS_CPU])
    repo.add_card("GT-003", 1, "gate1", ["src/c.py"], [TESTS_CPU])
    repo.run(tests=[(f"t.py::test_{i}", [f"GT-00{i}"], "passed", "cpu") for i in (1, 2, 3)])
    assert {s: evaluate(repo).story(s).status for s in ("GT-001", "GT-002", "GT-003")} == dict.fromkeys(
        ("GT-001", "GT-002", "GT-003"), "verified")

    repo.write("src/a.py", "# a.py changed\n")
    ev = evaluate(repo)
    assert {s: ev.story(s).status for s in ("GT-001", "GT-002", "GT-003")} == {
        "GT-001": "stale", "GT-002": "verified", "GT-003": "verified"}
    assert "changed src/a.py" in ev.story("GT-001").criteria[0].reason

    repo.write("src/a.py", "# a.py\n")            # back to the tested content: fresh again
    repo.write("src/shared.py", "# shared changed\n")
    ev = evaluate(repo)
    assert {s: ev.story(s).status for s in ("GT-001", "GT-002", "GT-003")} == {
        "GT-001": "stale", "GT-002": "stale", "GT-003": "verified"}


def test_story_hash_ignores_build_outputs_but_sees_added_files(tmp_path):
    repo = Repo(tmp_path)
    repo.write("csrc/ln.cu", "// kernel\n")
    repo.add_card("GT-009", 2, "gate1", ["csrc/**"], [TESTS_CPU])
    h0 = sources.hash_stories(repo.root, repo.stories())[0]["GT-009"]
    repo.write("csrc/__pycache__/x.pyc", "junk")
    repo.write("csrc/.jit/ln.o", "junk")
    repo.write("csrc/build/ln.so", "junk")
    assert sources.hash_stories(repo.root, repo.stories())[0]["GT-009"] == h0
    repo.write("csrc/new.cuh", "// new header\n")
    assert sources.hash_stories(repo.root, repo.stories())[0]["GT-009"] != h0


def test_newest_fresh_record_per_test_decides(tmp_path):
    repo = Repo(tmp_path)
    repo.write("src/a.py", "A\n")
    repo.add_card("GT-001", 1, "gate1", ["src/a.py"], [TESTS_CPU])
    repo.run(tests=[("t.py::test_x", ["GT-001"], "passed", "cpu"), ("t.py::test_y", ["GT-001"], "passed", "cpu")])
    repo.run(tests=[("t.py::test_y", ["GT-001"], "failed", "cpu")])
    assert evaluate(repo).story("GT-001").status == "failing"       # a later failure wins
    repo.run(tests=[("t.py::test_y", ["GT-001"], "passed", "cpu")])
    assert evaluate(repo).story("GT-001").status == "verified"
    repo.run(tests=[("other.py::test_z", ["GT-002"], "passed", "cpu")])   # says nothing about GT-001
    r = evaluate(repo).story("GT-001")
    assert r.status == "verified" and r.criteria[0].reason == "2 test(s) passed"


def test_invalid_benchmark_fails_the_gate(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
             benchmarks=[metric("layernorm.fp16", 9000.0, {"copy": 3000.0, "torch": 1200.0},
                                "tests/test_emb.py::test_bench", ["GT-008"], valid=False,
                                reason="9000.0 GB/s exceeds 1.1 x measured copy bandwidth 3000.0 GB/s")])
    ev = evaluate(repo)
    g = ev.gate("gate1")
    assert g["verdict"] == "fail"
    assert [(b["story"], b["state"]) for b in g["blockers"]] == [("GT-008", "invalid")]
    assert ev.story("GT-008").status == "failing"


def test_benchmark_below_target_or_from_failed_test_fails(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    passing_gate1(repo)
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
             benchmarks=[metric("layernorm.fp16", 2600.0, {"copy": 3000.0, "torch": 1500.0},
                                "tests/test_emb.py::test_bench", ["GT-008"])])
    crit = evaluate(repo).story("GT-008").criteria[2]
    assert crit.state == "fail" and "torch" in crit.reason and "needs >= 2" in crit.reason
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_bench", ["GT-008"], "failed", GPU)],
             benchmarks=[metric("layernorm.fp16", 2600.0, {"copy": 3000.0, "torch": 1200.0},
                                "tests/test_emb.py::test_bench", ["GT-008"])])
    crit = evaluate(repo).story("GT-008").criteria[2]
    assert crit.state == "fail" and "its test tests/test_emb.py::test_bench failed" in crit.reason


def test_where_filter_and_max_ratio(tmp_path):
    repo = Repo(tmp_path)
    repo.write("src/a.py", "A\n")
    repo.add_card("GT-018", 3, "gate1", ["src/a.py"], [
        'kind = "benchmark"\ndevice = "cuda"\nmetric = "attention_decode.fp16.*"\nmin_ratio = { copy = 0.75 }\n'
        'where = { kv_bytes = { gt = 268435456 } }'])
    repo.add_card("GT-005", 1, "gate1", ["src/a.py"], [
        'kind = "benchmark"\ndevice = "cpu"\nmetric = "gguf_open.gpt2_vocab"\nmax_ratio = { gguf_reader = 0.2 }'])
    nid = "t.py::test_b"
    small = metric("attention_decode.fp16.B1.H12.T1024", 500.0, {"copy": 3000.0}, nid, ["GT-018"], params={"kv_bytes": 3 << 20})
    big = metric("attention_decode.fp16.B8.H16.T32768", 2400.0, {"copy": 3000.0}, nid, ["GT-018"], params={"kv_bytes": 1 << 30})
    fast_open = metric("gguf_open.gpt2_vocab", 0.5, {"gguf_reader": 6.0}, nid, ["GT-005"], unit="s", kind="time",
                       device="cpu", higher_is_better=False)
    repo.run(machine="gpu", tests=[(nid, ["GT-018", "GT-005"], "passed", GPU)], benchmarks=[small, big])
    repo.run(tests=[(nid, ["GT-005"], "passed", "cpu")], benchmarks=[fast_open])
    ev = evaluate(repo)
    assert ev.story("GT-018").criteria[0].state == "pass"       # the small, latency-bound case is filtered out
    assert ev.story("GT-005").criteria[0].state == "pass"       # 0.5 s / 6 s = 0.083 <= 0.2
    slow_open = dict(fast_open, value=3.0)
    repo.run(tests=[(nid, ["GT-005"], "passed", "cpu")], benchmarks=[slow_open])
    assert evaluate(repo).story("GT-005").criteria[0].state == "fail"


def test_upstream_gate_must_pass(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    repo.write("src/map.py", "M\n")
    repo.add_card("GT-024", 4, "gate2", ["src/map.py"], [TESTS_CPU])
    repo.add_card("GT-028", 4, "gate2", [], [], verdict="gate2")
    repo.run(tests=[("t.py::test_map", ["GT-024"], "passed", "cpu")])
    g2 = evaluate(repo).gate("gate2")
    assert g2["verdict"] == "fail"
    assert g2["blockers"][0]["criterion"] == "upstream gate1"
    passing_gate1(repo)
    assert evaluate(repo).gate("gate2")["verdict"] == "pass"


def test_story_with_no_tests_is_not_started(tmp_path):
    repo = Repo(tmp_path)
    repo.gate1_minimal()
    repo.run(tests=[("tests/test_emb.py::test_ref", ["GT-008"], "passed", "cpu")])
    ev = evaluate(repo)
    r = ev.story("GT-001")
    assert r.status == "not-started" and not r.implemented
    assert r.criteria[0].state == "missing"
    assert "no cpu test marked GT-001 has run" in r.criteria[0].reason
