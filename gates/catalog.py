"""The pinned story catalog (gates/catalog.toml): which stories exist, where they belong, and
the floors their benchmarks must meet.

Cards say how a story is proven; the catalog says what may not be negotiated away by
editing a card: its id, title, sprint and gate, the devices whose tests must all pass, and
each benchmark bar. `card_problems` is what makes a deleted, moved or loosened card fail its
gate instead of quietly passing it.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from gates.cards import DEVICES, GATES, STORY_ID, CardError, Criterion, _criterion, gate_of_sprint


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    sprint: object
    gate: str
    verdict: str | None
    tests: tuple          # ((device, keyword or None), ...)
    bars: tuple           # Criterion(kind="benchmark") each, with its why


@dataclass(frozen=True)
class Catalog:
    path: Path
    stories: dict          # id -> Entry
    kernel_sources: tuple  # globs: what a GPU test record depends on
    devices: dict          # CUDA device name -> {"hbm_gbps", "bf16_tflops"}

    def stories_of_gate(self, gate: str) -> list[str]:
        """The ids a gate checks: the catalog's, never the cards' (minus its verdict story)."""
        g = GATES[gate]
        return [sid for sid, e in self.stories.items() if e.gate == gate and sid != g.verdict_story]


def path_of(root: Path) -> Path:
    return Path(root) / "gates" / "catalog.toml"


def _bar(path: Path, sid: str, i: int, raw) -> Criterion:
    """A bar is a benchmark criterion (same keys as a card's) that must say why."""
    if not isinstance(raw, dict) or not isinstance(raw.get("why"), str) or not raw["why"].strip():
        raise CardError(f"{path}: stories.{sid}.bars[{i}]: every bar says why (the physics behind it)")
    return _criterion(Path(f"{path}: stories.{sid}.bars"), i, {"kind": "benchmark", **raw})


def load(root: Path) -> Catalog:
    path = path_of(root)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CardError(f"{path}: the story catalog cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise CardError(f"{path}: not valid TOML ({e})") from None
    stories = {}
    for sid, e in raw.get("stories", {}).items():
        where = f"{path}: stories.{sid}"
        if not STORY_ID.match(sid):
            raise CardError(f"{where}: id is not GT-nnn or GX-nnn")
        for key in ("title", "sprint", "gate"):
            if key not in e:
                raise CardError(f"{where}: missing {key}")
        if e["gate"] != gate_of_sprint(e["sprint"]):
            raise CardError(f"{where}: gate {e['gate']!r} does not match sprint {e['sprint']!r}")
        tests = []
        for t in e.get("tests", []):
            dev, kw = (t, None) if isinstance(t, str) else (t.get("device"), t.get("keyword"))
            if dev not in DEVICES:
                raise CardError(f"{where}: tests device {dev!r} not in {DEVICES}")
            tests.append((dev, kw))
        bars = tuple(_bar(path, sid, i, b) for i, b in enumerate(e.get("bars", [])))
        verdict = e.get("verdict")
        if (verdict is None) == (not tests and not bars):
            raise CardError(f"{where}: a story has tests or bars, a gate verdict story (verdict = ...) has neither")
        stories[sid] = Entry(sid, e["title"], e["sprint"], e["gate"], verdict, tuple(tests), bars)
    devices = {}
    for name, d in raw.get("devices", {}).items():
        if not all(isinstance(d.get(k), (int, float)) and d[k] > 0 for k in ("hbm_gbps", "bf16_tflops")):
            raise CardError(f"{path}: devices.{name!r} needs positive hbm_gbps and bf16_tflops")
        devices[name] = {"hbm_gbps": float(d["hbm_gbps"]), "bf16_tflops": float(d["bf16_tflops"])}
    kernels = raw.get("kernels", {}).get("sources", [])
    if not isinstance(kernels, list) or not all(isinstance(s, str) and s for s in kernels):
        raise CardError(f"{path}: kernels.sources must be a list of globs")
    return Catalog(path, dict(sorted(stories.items())), tuple(kernels), devices)


def unknown_cards(cat: Catalog, stories: dict) -> list[str]:
    return [f"{s.path}: {sid} is not in the catalog {cat.path}" for sid, s in stories.items() if sid not in cat.stories]


def _same_case(a: Criterion, b: Criterion) -> bool:
    return (a.metric, a.device, a.where, a.aggregate) == (b.metric, b.device, b.where, b.aggregate)


def _at_least_as_strict(card: Criterion, bar: Criterion) -> bool:
    return (all(card.min_ratio.get(r, -1.0) >= x for r, x in bar.min_ratio.items())
            and all(card.max_ratio.get(r, float("inf")) <= x for r, x in bar.max_ratio.items()))


def card_problems(entry: Entry, story) -> list[str]:
    """Why a card does not honour its catalog entry ([] when it does). story: the loaded card or None."""
    if story is None:
        return [f"card stories/{entry.id}.toml is missing: the catalog pins {entry.id} in {entry.gate}"]
    out = []
    for key in ("title", "sprint", "gate", "verdict"):
        if getattr(story, key) != getattr(entry, key):
            out.append(f"card says {key} = {getattr(story, key)!r}, the catalog pins {getattr(entry, key)!r}")
    tests = {(c.device, c.keyword) for c in story.criteria if c.kind == "tests"}
    for dev, kw in entry.tests:
        if (dev, kw) not in tests:
            sel = f" (keyword {kw!r})" if kw else ""
            out.append(f"card drops the catalog's tests criterion on {dev}{sel}")
    benches = [c for c in story.criteria if c.kind == "benchmark"]
    for bar in entry.bars:
        same = [c for c in benches if _same_case(c, bar)]
        if not same:
            out.append(f"card drops the catalog's bar {bar.label}")
        elif not any(_at_least_as_strict(c, bar) for c in same):
            out.append(f"card loosens the catalog's bar {bar.label} (to {' / '.join(c.label for c in same)})")
    return out
