"""From story cards + evidence files to criterion states, story statuses and gate verdicts.

Rules (issue 3, DESIGN.md "Evidence and gates"):
- Evidence counts only from the device a criterion requires ("cpu", or a real CUDA device
  name for "cuda"; a CUDA test that skipped on a machine without a GPU counts for neither).
- Evidence is fresh only while the story's source hash in the evidence equals the working
  tree's. Stale evidence never passes; it only explains why a criterion is not met.
- Tests: newest fresh record per test (a run that did not select a test says nothing about
  it, so CPU evidence from this CI run and CUDA evidence from a committed GPU file combine);
  every test of the criterion must have passed, and at least one must exist.
- Benchmarks: the newest fresh record of each case (metric name) on the device decides; each
  record carries references measured in its own run, so ratios stay same-run. Every case
  must be valid, come from a passing test and meet every threshold.
- Skipped, missing, stale, failing and invalid never pass.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gates.cards import GATES, Criterion, Story, stories_of_gate

SAMPLE_TESTS = 25     # test ids listed per evidence file in gate JSON and reports
STATUSES = ("verified", "partial", "cpu-only", "stale", "failing", "not-started")


def device_matches(required: str, actual) -> bool:
    if required == "cpu":
        return actual == "cpu"
    return isinstance(actual, str) and actual not in ("", "cpu")


def _ts(run) -> str:
    return run["run"]["finished"]


def age_text(iso_ts: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    t = datetime.strptime(iso_ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    s = max(0, int((now - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}min"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


@dataclass
class CritResult:
    criterion: Criterion
    state: str                   # pass | fail | invalid | stale | skipped | missing
    reason: str
    evidence: list = field(default_factory=list)   # [{file, commit, finished, machine_class, ...}]

    @property
    def passed(self) -> bool:
        return self.state == "pass"

    def to_json(self) -> dict:
        c = self.criterion
        d = {"label": c.label, "kind": c.kind, "device": c.device, "state": self.state,
             "passed": self.passed, "reason": self.reason, "evidence": self.evidence}
        if c.kind == "tests" and c.keyword:
            d["keyword"] = c.keyword
        if c.kind == "benchmark":
            d.update(metric=c.metric, min_ratio=c.min_ratio, max_ratio=c.max_ratio, where=c.where)
        return d


@dataclass
class StoryResult:
    story: Story
    status: str
    criteria: list
    implemented: bool            # some test marked with the story ran somewhere
    tested: bool                 # its CPU tests pass (fresh, newest record per test)
    fresh_hash: str | None = None

    @property
    def validated(self) -> bool:
        return self.status == "verified"

    def to_json(self) -> dict:
        s = self.story
        return {"id": s.id, "title": s.title, "sprint": s.sprint, "gate": s.gate, "status": self.status,
                "implemented": self.implemented, "tested": self.tested, "validated": self.validated,
                "verdict_of": s.verdict, "criteria": [c.to_json() for c in self.criteria]}


def _run_ref(run, **extra) -> dict:
    p = run["provenance"]
    return {"file": run["_file"], "commit": (p.get("commit") or "")[:10] or None, "dirty": p.get("dirty"),
            "finished": _ts(run), "machine_class": p.get("machine_class"), **extra}


def _stale_reason(run, sid, cur_members, cur_files) -> str:
    old_files = run.get("source_files", {})
    old_members = set(run.get("story_files", {}).get(sid, []))
    new_members = set(cur_members.get(sid, []))
    changed = sorted(f for f in old_members & new_members if old_files.get(f) != cur_files.get(f))
    added, removed = sorted(new_members - old_members), sorted(old_members - new_members)
    parts = []
    for label, fs in (("changed", changed), ("added", added), ("removed", removed)):
        if fs:
            parts.append(f"{label} {', '.join(fs[:3])}" + (f" (+{len(fs) - 3} more)" if len(fs) > 3 else ""))
    return "; ".join(parts) or "source hash differs"


class Evaluator:
    def __init__(self, stories: dict, runs: list, current: tuple):
        self.stories = stories
        self.runs = sorted(runs, key=lambda r: (_ts(r), r["_file"]), reverse=True)   # newest first
        self.hashes, self.members, self.files = current
        self._story_cache: dict[str, StoryResult] = {}
        self._gate_cache: dict[str, dict] = {}

    def fresh(self, run, sid) -> bool:
        return run.get("source_hashes", {}).get(sid) == self.hashes.get(sid)

    # ---------- criteria ----------
    def _tests(self, s: Story, c: Criterion) -> CritResult:
        newest: dict[str, tuple] = {}         # nodeid -> (record, run), fresh only
        stale_run = None
        no_device: set = set()               # CUDA tests that ran where there was no GPU
        for run in self.runs:
            recs = [t for t in run["tests"] if s.id in t["stories"]
                    and (not c.keyword or c.keyword in t["nodeid"])]
            if c.device == "cuda" and self.fresh(run, s.id):
                no_device.update(t["nodeid"] for t in recs if t.get("device") is None)
            recs = [t for t in recs if device_matches(c.device, t.get("device"))]
            if not recs:
                continue
            if not self.fresh(run, s.id):
                stale_run = stale_run or run
                continue
            for t in recs:
                newest.setdefault(t["nodeid"], (t, run))
        if not newest:
            if stale_run is not None:
                return CritResult(c, "stale", "only stale evidence (" + _stale_reason(stale_run, s.id, self.members, self.files)
                                  + f"); newest was {stale_run['_file']}", [_run_ref(stale_run)])
            sel = f" matching '{c.keyword}'" if c.keyword else ""
            if c.device == "cuda" and no_device:
                return CritResult(c, "missing", f"no CUDA evidence: {len(no_device)} CUDA test(s){sel} only ran on machines without a GPU (skipped)")
            return CritResult(c, "missing", f"no {c.device} test marked {s.id}{sel} has run")
        # Every CUDA test the fresh tree has (seen skipped on machines without a GPU) must
        # have GPU evidence: a GPU run that selected only some of them proves only those.
        uncovered = sorted(no_device - set(newest))
        bad = [(t, r) for t, r in newest.values() if t["outcome"] in ("failed", "error", "xpassed")]
        skipped = [(t, r) for t, r in newest.values() if t["outcome"] in ("skipped", "xfailed")]
        runs_used: dict[str, list] = {}
        for t, r in newest.values():
            runs_used.setdefault(r["_file"], [r, []])[1].append(t)
        ev = [_run_ref(r, tests=len(ts), devices=sorted({t["device"] for t in ts}),
                       nodeids=sorted(t["nodeid"] for t in ts)[:SAMPLE_TESTS])
              for r, ts in sorted(runs_used.values(), key=lambda x: _ts(x[0]), reverse=True)]
        n = len(newest)
        if bad:
            names = "; ".join(f"{t['nodeid']} {t['outcome']}" + (f" ({t['message']})" if t.get("message") else "") for t, _ in bad[:3])
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            return CritResult(c, "fail", f"{len(bad)}/{n} failing: {names}{more}", ev)
        if uncovered:
            more = f" (+{len(uncovered) - 3} more)" if len(uncovered) > 3 else ""
            return CritResult(c, "missing", f"{len(uncovered)} of {len(uncovered) + n} CUDA test(s) have no fresh GPU "
                              f"evidence: {'; '.join(uncovered[:3])}{more}", ev)
        if skipped:
            names = "; ".join(f"{t['nodeid']} ({t.get('skip_reason') or 'no reason'})" for t, _ in skipped[:3])
            more = f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else ""
            return CritResult(c, "skipped", f"{len(skipped)}/{n} skipped (a skip is not a pass): {names}{more}", ev)
        return CritResult(c, "pass", f"{n} test(s) passed", ev)

    def _where_ok(self, c: Criterion, params: dict) -> bool:
        for key, cond in c.where.items():
            if key not in params:
                return False
            v = params[key]
            ops = cond if isinstance(cond, dict) else {"eq": cond}
            try:
                for op, x in ops.items():
                    if not {"gt": v > x, "ge": v >= x, "lt": v < x, "le": v <= x, "eq": v == x}[op]:
                        return False
            except TypeError:
                return False
        return True

    def _bench(self, s: Story, c: Criterion) -> CritResult:
        """Newest fresh record per case (metric name): each record carries references measured
        in its own run, so ratios stay same-run while a run that re-measured only some cases
        says nothing about the others."""
        stale_run = None
        seen_unfiltered = False
        chosen: dict[str, tuple] = {}          # metric name -> (run, [records of that run])
        for run in self.runs:
            ms = [m for m in run["benchmarks"] if fnmatch.fnmatchcase(m["name"], c.metric)
                  and device_matches(c.device, m.get("device"))]
            seen_unfiltered = seen_unfiltered or bool(ms)
            ms = [m for m in ms if self._where_ok(c, m.get("params", {}))]
            if not ms:
                continue
            if not self.fresh(run, s.id):
                stale_run = stale_run or run
                continue
            for m in ms:
                if m["name"] not in chosen or chosen[m["name"]][0] is run:
                    chosen.setdefault(m["name"], (run, []))[1].append(m)
        if chosen:
            return self._judge_metrics(c, list(chosen.values()))
        if stale_run is not None:
            return CritResult(c, "stale", "only stale benchmark evidence (" + _stale_reason(stale_run, s.id, self.members, self.files)
                              + f"); newest was {stale_run['_file']}", [_run_ref(stale_run)])
        if seen_unfiltered:
            return CritResult(c, "missing", f"metric {c.metric} recorded, but no case satisfies where {c.where}")
        return CritResult(c, "missing", f"metric {c.metric} never recorded on {c.device}")

    def _judge_metrics(self, c: Criterion, chosen: list) -> CritResult:
        problems, invalid = [], []
        by_run: dict[str, list] = {}
        n = 0
        for run, ms in chosen:
            outcomes = {t["nodeid"]: t["outcome"] for t in run["tests"]}
            cases = by_run.setdefault(run["_file"], [run, []])[1]
            for m in ms:
                n += 1
                case = {"name": m["name"], "value": m["value"], "unit": m["unit"], "kind": m["kind"],
                        "device": m.get("device"), "valid": m.get("valid", False), "params": m.get("params", {}),
                        "references": m["references"], "normalized": m.get("ratios", {}), "ratios": {}}
                if not m.get("valid", False):
                    invalid.append(f"{m['name']}: {m.get('invalid_reason') or 'invalid'}")
                if outcomes.get(m["nodeid"]) != "passed":
                    problems.append(f"{m['name']}: its test {m['nodeid']} {outcomes.get(m['nodeid'], 'has no record')}")
                for bounds, ok in ((c.min_ratio, lambda r, x: r >= x), (c.max_ratio, lambda r, x: r <= x)):
                    for ref, x in bounds.items():
                        rv = m["references"].get(ref)
                        if not isinstance(rv, (int, float)) or rv <= 0:
                            problems.append(f"{m['name']}: no reference '{ref}' measured in the run")
                            continue
                        r = m["value"] / rv
                        case["ratios"][ref] = r
                        if not ok(r, x):
                            op = ">=" if bounds is c.min_ratio else "<="
                            problems.append(f"{m['name']}: {m['value']:.4g} {m['unit']} / {ref} {rv:.4g} = {r:.3g}, needs {op} {x:g}")
                cases.append(case)
        ev = [_run_ref(run, cases=cases) for run, cases in sorted(by_run.values(), key=lambda x: _ts(x[0]), reverse=True)]
        if invalid:
            more = f" (+{len(invalid) - 3} more)" if len(invalid) > 3 else ""
            return CritResult(c, "invalid", f"{len(invalid)}/{n} invalid: " + "; ".join(invalid[:3]) + more, ev)
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            return CritResult(c, "fail", f"{len(problems)} problem(s) in {n} case(s): " + "; ".join(problems[:3]) + more, ev)
        return CritResult(c, "pass", f"{n} case(s) meet the bar", ev)

    def criterion(self, s: Story, c: Criterion) -> CritResult:
        return self._tests(s, c) if c.kind == "tests" else self._bench(s, c)

    # ---------- stories ----------
    def story(self, sid: str) -> StoryResult:
        if sid in self._story_cache:
            return self._story_cache[sid]
        s = self.stories[sid]
        any_recs = [t for r in self.runs for t in r["tests"] if sid in t["stories"]]
        implemented = bool(any_recs)
        cpu_newest: dict[str, str] = {}
        for r in self.runs:
            if self.fresh(r, sid):
                for t in r["tests"]:
                    if sid in t["stories"] and t.get("device") == "cpu":
                        cpu_newest.setdefault(t["nodeid"], t["outcome"])
        tested = bool(cpu_newest) and all(o == "passed" for o in cpu_newest.values())
        if s.is_verdict:
            g = self.gate(s.verdict)
            members = [self.story(x.id) for x in stories_of_gate(self.stories, s.verdict)]
            # a failing gate reads like its worst member (a gate blocked by failing stories is
            # "failing", not merely "partial")
            member_status = {m.status for m in members}
            if g["verdict"] == "pass":
                status = "verified"
            elif "failing" in member_status:
                status = "failing"
            elif "stale" in member_status:
                status = "stale"
            else:
                status = "partial" if any(m.implemented for m in members) else "not-started"
            res = StoryResult(s, status, [], implemented, tested)
        else:
            crits = [self.criterion(s, c) for c in s.criteria]
            states = [c.state for c in crits]
            if all(st == "pass" for st in states):
                status = "verified"
            elif any(st in ("fail", "invalid") for st in states):
                status = "failing"
            elif any(st == "stale" for st in states):
                status = "stale"
            elif not implemented and not any(st == "pass" for st in states):
                status = "not-started"
            elif all(cr.passed or cr.criterion.device == "cuda" for cr in crits) and any(
                    cr.passed and cr.criterion.device == "cpu" for cr in crits):
                status = "cpu-only"
            else:
                status = "partial"
            res = StoryResult(s, status, crits, implemented, tested)
        self._story_cache[sid] = res
        return res

    def all_stories(self) -> list[StoryResult]:
        return [self.story(sid) for sid in self.stories]

    # ---------- gates ----------
    def gate(self, name: str) -> dict:
        if name in self._gate_cache:
            return self._gate_cache[name]
        g = GATES[name]
        members = stories_of_gate(self.stories, name)
        results = [self.story(s.id) for s in members]
        blockers = []
        if g.upstream:
            up = self.gate(g.upstream)
            if up["verdict"] != "pass":
                blockers.append({"story": None, "criterion": f"upstream {g.upstream}", "state": "fail",
                                 "reason": f"upstream gate {g.upstream} does not pass ({len(up['blockers'])} blocker(s))"})
        if not members:
            blockers.append({"story": None, "criterion": "stories", "state": "missing", "reason": f"no story cards for {name}"})
        for r in results:
            for cr in r.criteria:
                if not cr.passed:
                    blockers.append({"story": r.story.id, "criterion": cr.criterion.label, "state": cr.state, "reason": cr.reason})
        doc = {
            "gate": name, "verdict": "fail" if blockers else "pass", "upstream": g.upstream,
            "sprints": list(g.sprints),
            "stories": [{"id": r.story.id, "title": r.story.title, "status": r.status,
                         "criteria": [c.to_json() for c in r.criteria]} for r in results],
            "blockers": blockers,
            "evidence_files": [r["_file"] for r in self.runs],
        }
        self._gate_cache[name] = doc
        return doc


def percentages(results: list[StoryResult]) -> dict:
    counted = [r for r in results if not r.story.is_verdict]
    n = len(counted) or 1
    return {"stories": len(counted),
            "implemented": 100.0 * sum(r.implemented for r in counted) / n,
            "tested": 100.0 * sum(r.tested for r in counted) / n,
            "validated": 100.0 * sum(r.validated for r in counted) / n}
