"""Story cards: the real catalog is complete and valid; malformed cards are refused by name."""
import re

import pytest

from gates import cards
from gates.paths import resolve

from tests.harness._synth import TESTS_CPU, Repo

pytestmark = pytest.mark.story("GT-042")


def test_real_catalog_has_every_story_once_with_its_gate():
    stories = cards.load_cards(resolve().stories)
    expected = {f"GT-{i:03d}" for i in range(49) if i != 32} | {f"GX-{i:03d}" for i in range(1, 5)}
    assert set(stories) == expected
    # sprint -> gate grouping from STORIES.md; the verdict stories carry no criteria
    for s in stories.values():
        assert s.gate == cards.gate_of_sprint(s.sprint)
        assert (s.verdict is not None) == (s.id in ("GT-022", "GT-028", "GT-041"))
        assert bool(s.criteria) != s.is_verdict
    assert [s.id for s in cards.stories_of_gate(stories, "gate1")] == [f"GT-{i:03d}" for i in range(1, 22)]
    assert {s.id for s in cards.stories_of_gate(stories, "m0")} == {f"GT-{i:03d}" for i in range(42, 49)} | {
        f"GX-{i:03d}" for i in range(1, 5)}


def test_kernel_stories_need_cuda_and_cpu_evidence():
    stories = cards.load_cards(resolve().stories)
    for i in range(8, 22):
        devs = {(c.kind, c.device) for c in stories[f"GT-{i:03d}"].criteria}
        assert {("tests", "cpu"), ("tests", "cuda")} <= devs, f"GT-{i:03d}"


def test_issue4_targets_are_in_the_cards():
    stories = cards.load_cards(resolve().stories)
    bench = {(c.metric, tuple(sorted(c.min_ratio.items())), repr(sorted(c.where.items())))
             for s in stories.values() for c in s.criteria if c.kind == "benchmark"}
    none = repr([])
    assert ("layernorm.fp16", (("copy", 0.8), ("torch", 2.0)), none) in bench
    assert ("add_layernorm.fp16", (("copy", 0.8), ("torch", 2.0)), none) in bench
    for m in ("gelu_tanh.fp16", "gelu_erf.fp16", "residual_add.fp16", "embedding.fp16"):
        assert (m, (("copy", 0.9),), none) in bench
    assert ("attention_decode.fp16.*", (("sdpa", 1.3),), none) in bench
    assert ("attention_decode.fp16.*", (("copy", 0.75),), repr([("kv_bytes", {"gt": 268435456})])) in bench
    assert ("attention_prefill.fp16.T*", (("sdpa", 0.7),), none) in bench


@pytest.mark.parametrize("mutation, message", [
    (lambda t: t + 'colour = "blue"\n', r"unknown key\(s\) \['colour'\]"),
    (lambda t: t.replace('device = "cpu"', 'device = "gpu"'), r"device must be one of"),
    (lambda t: t.replace('kind = "tests"', 'kind = "tests"\nthreshold = 3'), r"unknown key\(s\) \['threshold'\]"),
    (lambda t: t.replace('gate = "gate1"', 'gate = "gate2"'), r"does not match sprint"),
    (lambda t: t.replace("[[criteria]]", "").replace('kind = "tests"\ndevice = "cpu"', ""), r"no criteria"),
    (lambda t: t.replace('id = "GT-001"', 'id = "GT-1"'), r"not GT-nnn"),
    (lambda t: t[: len(t) // 2] + '"unterminated', r"not valid TOML"),
])
def test_malformed_card_is_an_error_naming_the_file(tmp_path, mutation, message):
    repo = Repo(tmp_path)
    repo.add_card("GT-001", 1, "gate1", ["src/a.py"], [TESTS_CPU])
    p = tmp_path / "stories" / "GT-001.toml"
    p.write_text(mutation(p.read_text()))
    with pytest.raises(cards.CardError) as e:
        cards.load_cards(repo.paths.stories)
    assert "GT-001.toml" in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_duplicate_ids_are_refused(tmp_path):
    repo = Repo(tmp_path)
    repo.add_card("GT-001", 1, "gate1", ["src/a.py"], [TESTS_CPU])
    (tmp_path / "stories" / "copy.toml").write_text((tmp_path / "stories" / "GT-001.toml").read_text())
    with pytest.raises(cards.CardError, match=r"copy\.toml: file name must be GT-001\.toml"):
        cards.load_cards(repo.paths.stories)


def test_benchmark_criterion_without_a_bar_is_refused(tmp_path):
    repo = Repo(tmp_path)
    repo.add_card("GT-011", 2, "gate1", ["src/a.py"], ['kind = "benchmark"\ndevice = "cuda"\nmetric = "layernorm.fp16"'])
    with pytest.raises(cards.CardError, match="needs min_ratio or max_ratio"):
        cards.load_cards(repo.paths.stories)


def test_benchmark_stories_depend_on_the_timing_code():
    """A change to gates/bench.py changes every benchmark figure, so every story with a
    benchmark criterion lists it among its sources (added by the loader); others do not."""
    stories = cards.load_cards(resolve().stories)
    with_bench = {s.id for s in stories.values() if any(c.kind == "benchmark" for c in s.criteria)}
    assert {"GT-008", "GT-011", "GT-017", "GT-018"} <= with_bench
    for s in stories.values():
        if s.id in with_bench:
            assert "gates/bench.py" in s.sources, s.id
        else:
            assert "gates/bench.py" not in s.sources, s.id
