"""Story cards: malformed cards and hand-listed sources that match nothing are refused by name."""
import re

import pytest

from gates import cards, sources
from gates.paths import resolve

from tests.harness._synth import TESTS_CPU, Repo

pytestmark = pytest.mark.story("GT-042")


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
    repo.add_card("GT-011", 2, "gate1", ["src/a.py"], ['kind = "benchmark"\ndevice = "cuda"\nmetric = "layernorm.fp16"'], catalog=False)
    with pytest.raises(cards.CardError, match="needs min_ratio or max_ratio"):
        cards.load_cards(repo.paths.stories)


def test_a_sources_glob_that_matches_nothing_is_an_error(tmp_path):
    """GT-039 was verified though gpt_engine/adapter.py did not exist: a hand-listed glob that
    matches no file now stops the run and the verdict, naming the card and the glob."""
    repo = Repo(tmp_path)
    repo.write("src/a.py", "A\n")
    repo.add_card("GT-039", 7, "gate3", ["src/a.py", "src/adapter.py"], [TESTS_CPU])
    s = cards.load_cards(repo.paths.stories)["GT-039"]
    with pytest.raises(cards.CardError, match=r"GT-039\.toml: sources glob 'src/adapter\.py' matches no file"):
        sources.card_files(sources.snapshot(repo.root), s)
    with pytest.raises(cards.CardError, match="matches no file"):
        sources.story_files(sources.snapshot(repo.root), sources.Imports(repo.root, {}), set(), s)


def test_real_cards_list_only_files_that_exist():
    stories = cards.load_cards(resolve().stories)
    known = sources.snapshot(resolve().root)
    for s in stories.values():
        sources.card_files(known, s)        # raises on a glob that matches nothing
