"""Story cards (stories/*.toml) and gate definitions, with strict validation.

A card is data only. Validation is strict because a typo in a card (an unknown key, a
misspelt device) would otherwise silently weaken a gate.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

STORY_ID = re.compile(r"^(GT-\d{3}|GX-\d{3})$")
DEVICES = ("cpu", "cuda")
CARD_KEYS = {"id", "title", "sprint", "gate", "description", "sources", "criteria", "verdict"}
CRITERION_KEYS = {
    "tests": {"kind", "device", "keyword", "why"},
    "benchmark": {"kind", "device", "metric", "min_ratio", "max_ratio", "where", "aggregate", "why"},
}
AGGREGATES = ("each", "median")   # a bar on every case, or on the median case of the grid
WHERE_OPS = {"gt", "ge", "lt", "le", "eq"}


@dataclass(frozen=True)
class Gate:
    name: str
    sprints: tuple          # sprint numbers (and "GX") whose stories belong to the gate
    upstream: str | None    # this gate passes only if the upstream gate passes
    verdict_story: str | None  # the story whose status *is* this gate's verdict


# Grouping fixed by the story catalog (gates/catalog.toml).
GATES: dict[str, Gate] = {
    "gate1": Gate("gate1", (1, 2, 3), None, "GT-022"),
    "gate2": Gate("gate2", (4,), "gate1", "GT-028"),
    "gate3": Gate("gate3", (0, 5, 6, 7), "gate2", "GT-041"),
    "m0": Gate("m0", (8, "GX"), "gate3", None),
}


def gate_of_sprint(sprint) -> str:
    for g in GATES.values():
        if sprint in g.sprints:
            return g.name
    raise KeyError(sprint)


class CardError(Exception):
    """A story card is malformed; the message names the card file and the problem."""


@dataclass(frozen=True)
class Criterion:
    kind: str                       # "tests" | "benchmark"
    device: str                     # "cpu" | "cuda"
    keyword: str | None = None      # tests: substring of the test nodeid that narrows the set
    metric: str | None = None       # benchmark: metric name or fnmatch glob
    min_ratio: dict = field(default_factory=dict)   # value / reference >= x
    max_ratio: dict = field(default_factory=dict)   # value / reference <= x
    where: dict = field(default_factory=dict)       # filter on the metric's params
    why: str | None = None
    aggregate: str = "each"                         # benchmark: "each" case, or the "median" case

    @property
    def label(self) -> str:
        if self.kind == "tests":
            sel = f" -k {self.keyword}" if self.keyword else ""
            return f"tests{sel} on {self.device}"
        parts = [f"{r}>={v:g}" for r, v in sorted(self.min_ratio.items())]
        parts += [f"{r}<={v:g}" for r, v in sorted(self.max_ratio.items())]
        if self.where:
            parts.append("where " + ",".join(f"{k} {_fmt_where(v)}" for k, v in sorted(self.where.items())))
        agg = "median of " if self.aggregate == "median" else ""
        return f"bench {agg}{self.metric} on {self.device}" + (f" ({'; '.join(parts)})" if parts else "")


def _fmt_where(v) -> str:
    if isinstance(v, dict):
        sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=="}
        return " and ".join(f"{sym[op]} {x}" for op, x in sorted(v.items()))
    return f"== {v}"


@dataclass(frozen=True)
class Story:
    id: str
    title: str
    sprint: object          # int 0..8, or "GX"
    gate: str
    description: str
    sources: tuple
    criteria: tuple
    verdict: str | None     # set on GT-022/028/041: the gate whose verdict this story is
    path: Path

    @property
    def is_verdict(self) -> bool:
        return self.verdict is not None


def _criterion(path: Path, i: int, raw) -> Criterion:
    where = f"{path}: criteria[{i}]"
    if not isinstance(raw, dict):
        raise CardError(f"{where}: must be a table")
    kind = raw.get("kind")
    if kind not in CRITERION_KEYS:
        raise CardError(f"{where}: kind must be one of {sorted(CRITERION_KEYS)}, got {kind!r}")
    unknown = set(raw) - CRITERION_KEYS[kind]
    if unknown:
        raise CardError(f"{where}: unknown key(s) {sorted(unknown)} for kind={kind!r}; allowed {sorted(CRITERION_KEYS[kind])}")
    dev = raw.get("device")
    if dev not in DEVICES:
        raise CardError(f"{where}: device must be one of {DEVICES}, got {dev!r}")
    if kind == "tests":
        kw = raw.get("keyword")
        if kw is not None and (not isinstance(kw, str) or not kw):
            raise CardError(f"{where}: keyword must be a non-empty string")
        return Criterion("tests", dev, keyword=kw, why=raw.get("why"))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise CardError(f"{where}: benchmark criterion needs a metric name or glob")
    ratios = {}
    for key in ("min_ratio", "max_ratio"):
        val = raw.get(key, {})
        if not isinstance(val, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in val.values()):
            raise CardError(f"{where}: {key} must be a table of reference name = positive number")
        ratios[key] = {k: float(v) for k, v in val.items()}
    if not ratios["min_ratio"] and not ratios["max_ratio"]:
        raise CardError(f"{where}: benchmark criterion needs min_ratio or max_ratio (a number without a bar proves nothing)")
    agg = raw.get("aggregate", "each")
    if agg not in AGGREGATES:
        raise CardError(f"{where}: aggregate must be one of {AGGREGATES}, got {agg!r}")
    wh = raw.get("where", {})
    if not isinstance(wh, dict):
        raise CardError(f"{where}: where must be a table")
    for k, v in wh.items():
        if isinstance(v, dict) and (not v or set(v) - WHERE_OPS):
            raise CardError(f"{where}: where.{k} operators must be among {sorted(WHERE_OPS)}")
    return Criterion("benchmark", dev, metric=metric, min_ratio=ratios["min_ratio"],
                     max_ratio=ratios["max_ratio"], where=dict(wh), why=raw.get("why"), aggregate=agg)


def load_card(path: Path) -> Story:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CardError(f"{path}: not valid TOML ({e})") from None
    unknown = set(raw) - CARD_KEYS
    if unknown:
        raise CardError(f"{path}: unknown key(s) {sorted(unknown)}; allowed {sorted(CARD_KEYS)}")
    for key in ("id", "title", "sprint", "gate", "description"):
        if key not in raw:
            raise CardError(f"{path}: missing key {key!r}")
    sid = raw["id"]
    if not isinstance(sid, str) or not STORY_ID.match(sid):
        raise CardError(f"{path}: id {sid!r} is not GT-nnn or GX-nnn")
    if path.stem != sid:
        raise CardError(f"{path}: file name must be {sid}.toml")
    sprint = raw["sprint"]
    valid_sprints = [s for g in GATES.values() for s in g.sprints]
    if sprint not in valid_sprints or isinstance(sprint, bool):
        raise CardError(f"{path}: sprint {sprint!r} not one of {valid_sprints}")
    if (sprint == "GX") != sid.startswith("GX-"):
        raise CardError(f"{path}: GX stories and only they have sprint \"GX\"")
    gate = raw["gate"]
    if gate != gate_of_sprint(sprint):
        raise CardError(f"{path}: gate {gate!r} does not match sprint {sprint!r} (expected {gate_of_sprint(sprint)!r})")
    for key in ("title", "description"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise CardError(f"{path}: {key} must be a non-empty string")
    # Extra files beyond what the story's tests are measured to use (gates/tracer.py), e.g. a
    # document the tests do not open. Each glob must match a file (gates/sources.py).
    sources = raw.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s and not s.startswith("/") and ".." not in s for s in sources):
        raise CardError(f"{path}: sources must be a list of relative glob strings")
    verdict = raw.get("verdict")
    crits_raw = raw.get("criteria", [])
    if not isinstance(crits_raw, list):
        raise CardError(f"{path}: criteria must be an array of tables ([[criteria]])")
    crits = tuple(_criterion(path, i, c) for i, c in enumerate(crits_raw))
    if verdict is not None:
        if verdict not in GATES or GATES[verdict].verdict_story != sid:
            raise CardError(f"{path}: verdict={verdict!r} but {sid} is not that gate's verdict story")
        if crits:
            raise CardError(f"{path}: a verdict story has no criteria of its own (its status is {verdict}'s verdict)")
    else:
        if any(g.verdict_story == sid for g in GATES.values()):
            raise CardError(f"{path}: {sid} is a gate verdict story and must say verdict = \"<gate>\"")
        if not crits:
            raise CardError(f"{path}: no criteria: a story must say what proves it")
    return Story(sid, raw["title"].strip(), sprint, gate, raw["description"].strip(),
                 tuple(sources), crits, verdict, path)


def load_cards(folder: Path) -> dict[str, Story]:
    """All cards of a folder, keyed by id (sorted). Raises CardError listing every problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CardError(f"{folder}: story card folder does not exist")
    stories: dict[str, Story] = {}
    errors: list[str] = []
    for p in sorted(folder.glob("*.toml")):
        try:
            s = load_card(p)
        except CardError as e:
            errors.append(str(e))
            continue
        if s.id in stories:
            errors.append(f"{p}: duplicate id {s.id} (also in {stories[s.id].path})")
            continue
        stories[s.id] = s
    if errors:
        raise CardError("invalid story cards:\n  " + "\n  ".join(errors))
    return dict(sorted(stories.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(sid: str):
    return (sid.startswith("GX"), sid)


def stories_of_gate(stories: dict[str, Story], gate: str) -> list[Story]:
    """The cards that say they belong to a gate (minus its verdict story). Verdicts use the
    catalog's membership (gates/catalog.py), which a card cannot change."""
    g = GATES[gate]
    return [s for s in stories.values() if s.gate == gate and s.id != g.verdict_story]
