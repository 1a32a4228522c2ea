"""`nox -s report`: results.csv (pandas) and the progress / M0 readiness reports (Jinja2).

Everything shown is computed by the verdict (gates/verdict.py, built by gates.cli.load exactly
as `nox -s gate1` builds it) from the catalog, the story cards, the expected test set and the
evidence with its audit (gates/audit.py); nothing is typed by hand, and nothing an evidence
file claims is shown as fact without the check behind it: ratios are recomputed from value
and references, validity from the physics checks, and whether a file counts comes from the
audit. HTML is self-contained: inline CSS and inline SVG charts drawn by matplotlib, no
scripts. Every status links to its story card and to the evidence files behind it with
relative links, so they work wherever the repository is checked out.

Counting rule used on every page: the stories are the catalog's (gates/catalog.toml), placed
in the sprint and gate the catalog pins; a catalog story whose card is missing is shown as
failing, not dropped. The verdict stories (one per gate, e.g. GT-022 for gate1) are the gates
themselves; they are shown with their gate and never counted as stories, so tiles, sprint
rows and gate rows all count the same stories.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from gates import cards as _cards
from gates import evidence as _evidence
from gates import history as _history
from gates import physics
from gates.cards import _fmt_where
from gates.charts import stories_over_time, trend_chart
from gates.provenance import git_state
from gates.verdict import STATUSES, Evaluator, StoryResult, age_text, device_matches, metric_problems, normalized

ROOFLINE_REFS = ("copy", "matmul", "roofline")   # device ceilings, measured in the same run
# A measured bandwidth may exceed the copy bandwidth by the copy measurement's own spread
# (gates/physics.py): a bar is beyond physics only when it asks for more than that.
CEILING_SLACK = {"copy": physics.BANDWIDTH_SLACK}
# End-to-end throughput records: perf.<decode|prefill>.<model>.<weight type>, tok/s, with the
# peers measured in the same run as references.
THROUGHPUT_NAME = re.compile(r"^perf\.(decode|prefill)\.(.+)\.([^.]+)$")
PEER_ORDER = ("roofline", "llamacpp", "compiled", "hf", "eager")
CPU_RUNS_SHOWN = 10    # newest CPU evidence files listed; every GPU file is listed (they are committed)
EVIDENCE_SHOWN = 3     # evidence files listed under one criterion

# What each word on the pages means; shown in a glossary and as each badge's tooltip.
STATUS_MEANING = {
    "verified": "every criterion of the story passes on fresh, counted evidence from the device it requires",
    "partial": "some of its tests have run or some criteria pass, and none fails or is stale; the others are "
               "missing, incomplete or skipped",
    "cpu-only": "every CPU criterion passes; only the CUDA criteria are unmet (no fresh, counted GPU evidence yet)",
    "stale": "a criterion has only evidence from before a change to a file the story's tests used: run them again",
    "failing": "a test fails, a benchmark misses its bar or breaks physics, or the story's card disagrees with "
               "the catalog (missing, moved or loosened)",
    "not-started": "no test marked with the story's id has run anywhere, in any evidence file (no test is tagged "
                   "with it yet, or none has run)",
}
STATE_MEANING = {
    "pass": "met by fresh, counted evidence from the required device",
    "fail": "a test failed or a benchmark case missed the bar",
    "invalid": "a benchmark figure is physically impossible (e.g. above the device's copy bandwidth), as "
               "recomputed from the evidence",
    "stale": "only evidence from before a change to a file the story's tests used",
    "skipped": "its tests were skipped; a skip never counts as a pass",
    "incomplete": "some of the story's expected tests (from collection) have no fresh passing record: not run, "
                  "deselected, skipped at collection, or checked by no criterion of the card",
    "missing": "no fresh, counted record from the required device (or no test for it exists)",
}
GATE_MEANING = {
    "pass": "every criterion of every story of the gate passes, and the gate before it passes",
    "fail": "at least one criterion of the gate's own stories is not met, a card disagrees with the catalog, "
            "or committed evidence was edited",
    "blocked upstream": "the gate's own stories all pass, but the gate before it does not",
}
# Whether an evidence file may count toward a gate: the audit's answer (gates/audit.py).
AUDIT_MEANING = {
    "counts": "the audit accepts the file (committed code, clean tree, the project's own plugins, a raw log "
              "for GPU runs, ...); its records count for a story while the files the story's tests used are "
              "unchanged",
    "history": "schema 1: the H100 runs made before the audit existed, without raw logs or per-test sources; "
               "shown, never counted",
    "rejected": "the audit found a reason the file cannot count (a dirty tree, an unknown commit, a foreign "
                "plugin, a missing log, ...); shown, never counted",
    "edited": "committed evidence that differs from its first committed version: it never counts and blocks "
              "every gate",
}
_UNKNOWN = "(a word the verdict added after this page's glossary was written; see docs/harness.md)"
GATE_STATES = tuple(GATE_MEANING)


# --------------------------------------------------------------------------- small helpers

def _device_label(device) -> str:
    """One spelling of a device everywhere: the GPU's name, or CPU."""
    return "CPU" if device in (None, "", "cpu") else str(device)


def _machine_label(run) -> str:
    return _device_label(run["provenance"].get("gpu_name"))


def _when(iso_ts: str) -> datetime:
    return datetime.strptime(iso_ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _target_text(c) -> str:
    agg = "median " if c.aggregate == "median" else ""
    parts = [f"{agg}≥ {v:g}× {r}" for r, v in sorted(c.min_ratio.items())]
    parts += [f"{agg}≤ {v:g}× {r}" for r, v in sorted(c.max_ratio.items())]
    if c.where:
        parts.append("where " + ", ".join(f"{k} {_fmt_where(v)}" for k, v in c.where.items()))
    return "; ".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _few(xs, n=3) -> str:
    xs = list(xs)
    return "; ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")


def audit_word(audit) -> str:
    """counts / history / rejected / edited: the audit's answer in one word."""
    if audit.tampered:
        return "edited"
    if audit.counts:
        return "counts"
    return "history" if audit.history else "rejected"


def results_frame(ev: Evaluator, runs: list) -> pd.DataFrame:
    """One row per (test or metric record, story) across every evidence file: whether the
    file counts (the audit), whether the record is fresh for the story, and for metrics the
    ratios and validity recomputed from the record (never read from it)."""
    audits = {r["_file"]: audit_word(ev.audits[r["_file"]]) for r in runs}
    rows = []
    for r in runs:
        p = r["provenance"]
        base = {"file": r["_file"], "finished": r["run"]["finished"], "machine_class": p["machine_class"],
                "commit": (p.get("commit") or "")[:10], "dirty": p.get("dirty"), "gpu": p.get("gpu_name"),
                "audit": audits[r["_file"]]}
        for t in r["tests"]:
            for sid in t["stories"] or [None]:
                rows.append({**base, "record": "test", "story": sid, "nodeid": t["nodeid"],
                             "outcome": t["outcome"], "duration_s": t["duration"], "device": t.get("device"),
                             "skip_reason": t.get("skip_reason"), "fresh": bool(sid) and ev.fresh(r, sid)})
        for m in r["benchmarks"]:
            bad = metric_problems(ev.catalog.devices, r, m)
            for sid in m["stories"] or [None]:
                row = {**base, "record": "metric", "story": sid, "nodeid": m["nodeid"], "metric": m["name"],
                       "value": m["value"], "unit": m["unit"], "kind": m["kind"], "device": m.get("device"),
                       "valid": not bad, "invalid_reason": "; ".join(bad) or None,
                       "fresh": bool(sid) and ev.fresh(r, sid),
                       "params": json.dumps(m.get("params", {}), sort_keys=True)}
                for ref, v in m["references"].items():
                    row[f"ref_{ref}"] = v
                for ref, v in normalized(m).items():
                    row[f"ratio_{ref}"] = v
                rows.append(row)
    cols = ["file", "finished", "machine_class", "commit", "dirty", "gpu", "audit", "record", "story", "nodeid",
            "outcome", "duration_s", "device", "skip_reason", "metric", "value", "unit", "kind", "valid",
            "invalid_reason", "fresh", "params"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    extra = sorted(c for c in df.columns if c not in cols)
    return df[cols + extra]


class _Context:
    """What every part of the page needs: the verdict (gates.cli.load), the runs by file,
    links and now."""

    def __init__(self, paths, now: datetime):
        from gates.cli import load    # the same verdict `nox -s gate1` prints
        self.paths, self.now = paths, now
        self.ev = load(paths)
        self.catalog = self.ev.catalog
        self.stories = self.ev.stories
        self.runs = sorted(self.ev.runs, key=lambda r: (r["run"]["finished"], r["_file"]))   # oldest first
        self.by_file = {r["_file"]: r for r in self.runs}

    def href(self, path: Path) -> str:
        """A link relative to the reports folder (where the pages are written)."""
        return Path(os.path.relpath(Path(path).resolve(), self.paths.reports)).as_posix()

    def story_href(self, sid: str) -> str:
        s = self.stories.get(sid)
        return self.href(s.path if s is not None else self.catalog.path)

    def evidence_href(self, file: str) -> str:
        return self.href(self.paths.evidence / file)

    def audit(self, file: str):
        return self.ev.audits[file]

    def fresh(self, run, sid: str) -> bool:
        return self.ev.fresh(run, sid)

    def why(self, run, sid: str) -> tuple[bool, str]:
        """Whether the run's records count for the story, and why (not): the audit first,
        then freshness."""
        au = self.audit(run["_file"])
        if not au.counts:
            word = audit_word(au)
            return False, f"never counts ({word}): " + "; ".join(au.tampered + au.reasons)
        if self.fresh(run, sid):
            n = len(run.get("story_files", {}).get(sid, []))
            return True, (f"counts: the audit accepts the file, and the {n} files {sid}'s tests used in this run "
                          "are unchanged")
        return False, f"does not count for {sid} any more: {self.ev.stale_reason(run, sid)}"

    def evidence_view(self, ref: dict, sid: str) -> dict:
        """One evidence file behind a criterion: where it came from, how old it is, and why it
        counts or does not."""
        run = self.by_file.get(ref["file"])
        devices = ref.get("devices") or ([run["provenance"].get("gpu_name") or "cpu"] if run else [])
        counts, why = self.why(run, sid) if run is not None else (False, "the file is gone")
        return {"file": ref["file"], "href": self.evidence_href(ref["file"]),
                "device": ", ".join(sorted({_device_label(d) for d in devices})),
                "commit": ref.get("commit"), "dirty": ref.get("dirty"), "finished": ref["finished"],
                "age": age_text(ref["finished"], self.now), "fresh": counts, "why": why,
                "tests": ref.get("tests"), "nodeids": ref.get("nodeids", [])}

    def not_counted(self, sid: str, c) -> list[dict]:
        """Evidence files that hold records of this criterion (the story's tests on its
        device, or its metrics) but do not count: the audit rejects them or they are history.
        Newest first."""
        out = []
        for run in reversed(self.runs):
            au = self.audit(run["_file"])
            if au.counts:
                continue
            if c.kind == "tests":
                n = sum(1 for t in run["tests"] if sid in t["stories"] and device_matches(c.device, t.get("device"))
                        and (not c.keyword or c.keyword in t["nodeid"]))
                what = f"{n} record(s) of these tests"
            else:
                n = sum(1 for m in run["benchmarks"] if sid in m.get("stories", [])
                        and fnmatch.fnmatchcase(m["name"], c.metric) and device_matches(c.device, m.get("device")))
                what = f"{n} {c.metric} case(s)"
            if n:
                out.append({"file": run["_file"], "href": self.evidence_href(run["_file"]),
                            "device": _machine_label(run), "age": age_text(run["run"]["finished"], self.now),
                            "word": audit_word(au), "what": what, "why": "; ".join(au.tampered + au.reasons)})
        return out


# --------------------------------------------------------------------------- the stories

def _results(cx: _Context) -> list[StoryResult]:
    """Every catalog story in the catalog's order: its verdict, or, when its card is missing,
    a failing placeholder that says so (the gate fails on it too)."""
    out = []
    for sid, entry in cx.catalog.stories.items():
        if sid in cx.stories:
            out.append(cx.ev.story(sid))
            continue
        story = _cards.Story(sid, entry.title, entry.sprint, entry.gate, "", (), (), entry.verdict, cx.catalog.path)
        out.append(StoryResult(story, "failing", [], False, False,
                               [f"card stories/{sid}.toml is missing: the catalog pins {sid} in {entry.gate}"]))
    return sorted(out, key=lambda r: _cards._sort_key(r.story.id))


def _placement(cx: _Context, r: StoryResult) -> tuple:
    """(sprint, gate) as the catalog pins them: a moved card cannot move its story's count."""
    e = cx.catalog.stories.get(r.story.id)
    return (e.sprint, e.gate) if e else (r.story.sprint, r.story.gate)


def _counts_text(c) -> str:
    """The expected test set's tally of a tests criterion, from the verdict's counts; empty
    where the reason already says it all (every test passed, none has a record, or the tests
    no criterion checks)."""
    k = c.counts
    if "expected" not in k or c.state == "pass" or k["lacking"] == k["expected"]:
        return ""
    parts = [f"{k['passed']} of {k['expected']} expected test(s) passed"]
    parts += [f"{k[w]} {w}" for w in ("failing", "skipped", "stale", "lacking") if k.get(w)]
    return " · ".join(parts)


# --------------------------------------------------------------------------- gates

def _audit_summary(cx: _Context, doc: dict) -> dict:
    """The gate's evidence_audit in words: how many files count, are history, rejected, edited."""
    by: dict[str, list] = {w: [] for w in AUDIT_MEANING}
    for a in doc["evidence_audit"]:
        word = "edited" if a["tampered"] else "counts" if a["counts"] else "history" if a["history"] else "rejected"
        by[word].append(a)
    return {"n": len(doc["evidence_audit"]), "by": {w: len(v) for w, v in by.items()},
            "history_machines": sorted({_machine_label(cx.by_file[a["file"]]) for a in by["history"]
                                        if a["file"] in cx.by_file})}


def _gate_views(cx: _Context, gates: dict, results: list) -> dict:
    """A gate's state separates a failure of its own stories from a block by the gate before it."""
    status = {r.story.id: r.status for r in results}
    views = {}
    for name, doc in gates.items():
        g = _cards.GATES[name]
        up = doc.get("upstream")
        up_passes = up is None or gates[up]["verdict"] == "pass"
        own = [b for b in doc["blockers"] if b["story"] is not None or not (up and b["criterion"] == f"upstream {up}")]
        state = ("pass" if doc["verdict"] == "pass" else
                 "blocked upstream" if not own and not up_passes else "fail")
        members = cx.catalog.stories_of_gate(name)
        views[name] = {
            "gate": name, "state": state, "verdict": doc["verdict"], "upstream": up,
            "upstream_passes": up_passes, "sprints": doc["sprints"], "n_stories": len(members),
            "n_verified": sum(status.get(sid) == "verified" for sid in members),
            "verdict_story": g.verdict_story,
            "verdict_story_href": cx.story_href(g.verdict_story) if g.verdict_story in cx.catalog.stories else None,
            "json_href": f"gates/{name}.json",
            "blockers": [{**b, "href": cx.story_href(b["story"]) if b["story"] in cx.catalog.stories else None}
                         for b in own],
            "audit": _audit_summary(cx, doc),
        }
    return views


def _not_counted_view(cx: _Context, sid: str, cr) -> dict:
    """The files behind an unmet criterion that do not count (at most EVIDENCE_SHOWN listed)."""
    nc = cx.not_counted(sid, cr.criterion) if cr.state != "pass" else []
    return {"not_counted": nc[:EVIDENCE_SHOWN], "n_not_counted": len(nc), "more_not_counted": len(nc) - EVIDENCE_SHOWN}


def _story_rows(cx: _Context, results: list, gate_views: dict) -> list:
    rows = []
    for r in results:
        s = r.story
        sprint, gate = _placement(cx, r)
        row = {"id": s.id, "title": s.title, "sprint": sprint, "gate": gate, "href": cx.story_href(s.id),
               "status": r.status, "verdict_of": s.verdict, "card_problems": r.card_problems, "criteria": []}
        if s.is_verdict:
            row["status"] = gate_views[s.verdict]["state"]   # the gate story is its gate's verdict
        for c in r.criteria:
            evs = [cx.evidence_view(e, s.id) for e in c.evidence]
            row["criteria"].append({"label": c.criterion.label, "state": c.state, "reason": c.reason,
                                    "why": c.criterion.why, "counts": _counts_text(c),
                                    "evidence": evs[:EVIDENCE_SHOWN], "more_evidence": len(evs) - EVIDENCE_SHOWN,
                                    **_not_counted_view(cx, s.id, c)})
        rows.append(row)
    return rows


def _sprint_rows(cx: _Context, results: list, gate_views: dict, statuses: tuple) -> tuple[list, dict]:
    rows, total = [], {st: 0 for st in statuses}
    placed = [(r, *_placement(cx, r)) for r in results]
    sprints = sorted({sp for _, sp, _ in placed}, key=lambda sp: (isinstance(sp, str), str(sp).zfill(3)))
    for sp in sprints:
        rs = [r for r, s, _ in placed if s == sp and not r.story.is_verdict]
        gate_ids = [r.story.id for r, s, _ in placed if s == sp and r.story.is_verdict]
        counts = {st: sum(r.status == st for r in rs) for st in statuses}
        for st, n in counts.items():
            total[st] += n
        gate = next(g for _, s, g in placed if s == sp)
        rows.append({"sprint": sp, "gate": gate, "gate_state": gate_views[gate]["state"],
                     "n": len(rs), "counts": counts, "gate_stories": gate_ids})
    return rows, total


# --------------------------------------------------------------------------- benchmarks

def _median(xs):
    return statistics.median(xs) if xs else None


def _perf_rows(cx: _Context, results: list) -> list:
    """One row per benchmark criterion (a metric family): its bar, the worst and the median
    case for each bound (the bar judges the worst, or the median for aggregate = "median"),
    and every case in a details table. Ratios are the verdict's, recomputed from each case."""
    rows = []
    for r in results:
        for cr in r.criteria:
            c = cr.criterion
            if c.kind != "benchmark":
                continue
            cases = [case for e in cr.evidence for case in e.get("cases", [])]
            bounds = []
            for refs, op in ((c.min_ratio, "≥"), (c.max_ratio, "≤")):
                for ref, bar in sorted(refs.items()):
                    vals = [(case["ratios"][ref], case) for case in cases if case["ratios"].get(ref) is not None]
                    b = {"ref": ref, "op": op, "bar": bar, "n": len(vals),
                         "decides": "median" if c.aggregate == "median" else "worst"}
                    if vals:
                        vals.sort(key=lambda v: v[0], reverse=(op == "≤"))
                        missed = [v for v, _ in vals if (v < bar if op == "≥" else v > bar)]
                        worst_ratio, worst = vals[0]
                        med = _median([v for v, _ in vals])
                        b.update(n_missed=len(missed), worst=worst_ratio, worst_case=worst["name"],
                                 worst_value=worst["value"], unit=worst["unit"], median=med,
                                 median_missed=(med < bar if op == "≥" else med > bar))
                    bounds.append(b)
            # the bar's references show value ÷ reference (what the bar judges); the others show
            # the verdict's normalized ratio (inverted for lower-is-better metrics: above 1× is better)
            judged = sorted({b["ref"] for b in bounds})
            others = sorted({k for case in cases for k, v in case.get("normalized", {}).items()
                             if v is not None and k not in judged})
            context_refs = {k: _median([case["normalized"][k] for case in cases
                                        if case.get("normalized", {}).get(k) is not None]) for k in others}
            evs = [cx.evidence_view(e, r.story.id) for e in cr.evidence]
            rows.append({
                "story": r.story.id, "href": cx.story_href(r.story.id), "metric": c.metric, "target": _target_text(c),
                "aggregate": c.aggregate, "why": c.why, "state": cr.state, "reason": cr.reason,
                "n_cases": len(cases), "bounds": bounds, "context": context_refs, "evidence": evs,
                "judged_refs": judged, "other_refs": others,
                "device": ", ".join(sorted({_device_label(case.get("device")) for case in cases}))
                or ("CPU" if c.device == "cpu" else "a GPU"),
                "anchor": f"perf-{r.story.id}-{_slug(c.label)}",
                **_not_counted_view(cx, r.story.id, cr),
                "cases": [{"name": case["name"], "value": case["value"], "unit": case["unit"], "valid": case["valid"],
                           "bar_ratios": {k: case["ratios"].get(k) for k in judged},
                           "vs": {k: case.get("normalized", {}).get(k) for k in others}} for case in cases],
            })
    return rows


def _raw_metrics(run) -> dict:
    out: dict[str, list] = {}
    for m in run["benchmarks"]:
        out.setdefault(m["name"], []).append(m)
    return out


def _beyond_physics(cx: _Context, results: list) -> list:
    """Bars no kernel can meet: "≥ x × reference" asks for more than a device ceiling (copy
    bandwidth, matmul rate) measured in the same run, beyond that measurement's own spread.
    The bar must change, not the kernel."""
    risks = []
    for r in results:
        for cr in r.criteria:
            c = cr.criterion
            if c.kind != "benchmark" or not c.min_ratio:
                continue
            for ref, bar in sorted(c.min_ratio.items()):
                hits, total = [], 0
                for e in cr.evidence:
                    run = cx.by_file.get(e["file"])
                    raw = _raw_metrics(run) if run else {}
                    for case in e.get("cases", []):
                        ms = raw.get(case["name"], [])
                        if ms and not ms[0].get("higher_is_better", True):
                            continue   # a time: its ceiling is not a reference here
                        rv = case["references"].get(ref)
                        if not physics.positive(rv):
                            continue
                        total += 1
                        need = bar * rv
                        for ceil_name in ROOFLINE_REFS:
                            cv = case["references"].get(ceil_name)
                            if physics.positive(cv) and need > CEILING_SLACK.get(ceil_name, 1.0) * cv:
                                hits.append((need / cv, case, rv, need, ceil_name, cv))
                                break
                if hits:
                    over, case, rv, need, ceil_name, cv = max(hits, key=lambda h: h[0])
                    u = case["unit"]
                    risks.append({
                        "level": "high", "story": r.story.id, "kind": "physics",
                        "what": f"bar beyond physics: {c.metric} ≥ {bar:g}× {ref}",
                        "why": f"in {len(hits)} of {total} case(s) the bar asks for more than the device can do; "
                               f"worst {case['name']}: {bar:g} × {ref} {rv:.4g} {u} = {need:.4g} {u}, which is "
                               f"{over:.2f}× the {ceil_name} ceiling measured in the same run ({cv:.4g} {u}). "
                               f"Change the bar, not the kernel."})
    return risks


def _throughput(cx: _Context) -> dict:
    """Newest perf.<phase>.<model>.<type> record per device: our tok/s and each peer's, the
    ratios recomputed, validity re-checked, and whether its file counts."""
    newest: dict[tuple, tuple] = {}
    for run in reversed(cx.runs):
        if cx.audit(run["_file"]).tampered:
            continue    # an edited file's numbers are not shown as measurements
        for m in run["benchmarks"]:
            mt = THROUGHPUT_NAME.match(m["name"])
            if mt:
                newest.setdefault((mt.group(1), mt.group(2), mt.group(3), _device_label(m.get("device"))), (run, m))
    tables = {}
    for phase in ("decode", "prefill"):
        recs = {k[1:]: v for k, v in newest.items() if k[0] == phase}
        if not recs:
            continue
        seen = {ref for _, m in recs.values() for ref in m["references"]}
        peers = [p for p in PEER_ORDER if p in seen] + sorted(seen - set(PEER_ORDER))
        rows = []
        for (model, qtype, device), (run, m) in sorted(recs.items()):
            ratios = normalized(m)
            cells = {p: {"value": m["references"].get(p), "ratio": ratios.get(p)} for p in peers}
            au = cx.audit(run["_file"])
            rows.append({"model": model, "type": qtype, "device": device, "value": m["value"], "unit": m["unit"],
                         "valid": not metric_problems(cx.ev.catalog.devices, run, m), "peers": cells, "file": run["_file"],
                         "href": cx.evidence_href(run["_file"]), "age": age_text(run["run"]["finished"], cx.now),
                         "audit": audit_word(au),
                         # the code it measured has changed since (the record is shown, not current)
                         "stale": not all(cx.ev.fresh(run, sid) for sid in m.get("stories", []))})
        tables[phase] = {"peers": peers, "rows": rows}
    return tables


def _series_label(run, metric: dict) -> str:
    """The device that was measured: the GPU's name, or the CPU model of the machine."""
    if _device_label(metric.get("device")) != "CPU":
        return _device_label(metric.get("device"))
    return f"CPU ({run['provenance'].get('cpu_model') or 'unknown model'})"


def _trend_charts(cx: _Context, results: list) -> tuple[list, list]:
    """Per benchmark bound, the case the bar judges (the worst, or the median for aggregate =
    "median") in each run, per device, with ratios recomputed from each record. Runs whose file
    does not count (history, rejected) are drawn with open markers; edited files are left out.
    Returns (charts, titles of bounds measured in one run only: no line to draw yet)."""
    charts, single = [], []
    shown = [run for run in cx.runs if not cx.audit(run["_file"]).tampered]
    for r in results:
        for c in r.story.criteria:
            if c.kind != "benchmark":
                continue
            bounds = [(k, x, "≥") for k, x in sorted(c.min_ratio.items())]
            bounds += [(k, x, "≤") for k, x in sorted(c.max_ratio.items())]
            for ref, target, op in bounds:
                runs, series, hollow = [], {}, set()
                for run in shown:
                    per_device: dict[str, list] = {}
                    for m in run["benchmarks"]:
                        rv = m["references"].get(ref)
                        if fnmatch.fnmatchcase(m["name"], c.metric) and device_matches(c.device, m.get("device")) \
                                and cx.ev._where_ok(c, m.get("params", {})) and physics.positive(rv) \
                                and physics.positive(m["value"]):
                            per_device.setdefault(_series_label(run, m), []).append(m["value"] / rv)
                    if per_device:
                        runs.append(_when(run["run"]["finished"]))
                        if not cx.audit(run["_file"]).counts:
                            hollow.add(len(runs) - 1)
                        for label, vals in per_device.items():
                            v = _median(vals) if c.aggregate == "median" else min(vals) if op == "≥" else max(vals)
                            series.setdefault(label, []).append((len(runs) - 1, v))
                if not runs:
                    continue
                which = "median case" if c.aggregate == "median" else "worst case"
                title = f"{r.story.id} {c.metric}: {which} ÷ {ref}"
                if len(runs) < 2:
                    single.append(title)
                    continue
                agg = "median " if c.aggregate == "median" else ""
                charts.append({"story": r.story.id, "title": title, "bar": f"{agg}{op} {target:g}× {ref}",
                               "href": cx.story_href(r.story.id), "n_hollow": len(hollow),
                               "svg": trend_chart(_slug(title), runs, series, f"value ÷ {ref}", target,
                                                  f"bar {op} {target:g}×", hollow=hollow)})
    return charts, single


# --------------------------------------------------------------------------- risks

def _risks(cx: _Context, results: list) -> list:
    risks = []
    for r in results:
        for p in r.card_problems:
            risks.append({"level": "high", "story": r.story.id, "what": "card disagrees with the catalog", "why": p})
        for cr in r.criteria:
            if cr.state in ("fail", "invalid"):
                risks.append({"level": "high", "story": r.story.id, "what": f"{cr.criterion.label}: {cr.state}", "why": cr.reason})
            elif cr.state in ("stale", "incomplete"):
                risks.append({"level": "medium", "story": r.story.id, "what": f"{cr.criterion.label}: {cr.state}",
                              "why": cr.reason})
    risks += _beyond_physics(cx, results)
    for msg in cx.ev.gone:
        risks.append({"level": "high", "story": None, "what": "committed evidence is gone", "why": msg})
    for run in cx.runs:
        for t in cx.audit(run["_file"]).tampered:
            risks.append({"level": "high", "story": None, "what": "committed evidence was edited", "why": t,
                          "file": run["_file"]})
    newest_by_class = {}
    for run in reversed(cx.runs):
        newest_by_class.setdefault(run["provenance"]["machine_class"], run)
    for run in newest_by_class.values():
        au = cx.audit(run["_file"])
        where = f"newest {_machine_label(run)} run"
        if au.history:
            continue    # the evidence table says what history is; it is not news
        if not au.counts and not au.tampered:
            errs = [f"{e['nodeid']}: {e['message']}" for e in run.get("collection_errors", [])]
            risks.append({"level": "medium", "story": None, "what": f"the {where} does not count",
                          "why": "; ".join(au.reasons) + (f" — collection errors: {_few(errs)}" if errs else ""),
                          "file": run["_file"]})
        for m in run["benchmarks"]:
            bad = metric_problems(cx.ev.catalog.devices, run, m)
            if bad:
                risks.append({"level": "high", "story": ", ".join(m["stories"]) or None,
                              "what": f"invalid metric {m['name']} in the {where}", "why": "; ".join(bad),
                              "file": run["_file"]})
    seen, uniq = set(), []
    for k in risks:
        key = (k["level"], k["story"], k["what"], k["why"])
        if key not in seen:
            seen.add(key)
            uniq.append(k)
    order = {"high": 0, "medium": 1, "low": 2}
    uniq.sort(key=lambda k: (order[k["level"]], k["story"] or "", k["what"]))
    for k in uniq:
        k["href"] = cx.story_href(k["story"]) if k["story"] in cx.catalog.stories else None
        k["file_href"] = cx.evidence_href(k["file"]) if k.get("file") else None
    return uniq


# --------------------------------------------------------------------------- evidence files

def _run_row(cx: _Context, run) -> dict:
    p = run["provenance"]
    au = cx.audit(run["_file"])
    sids = sorted({sid for x in [*run["tests"], *run["benchmarks"]] for sid in x.get("stories", [])
                   if sid in cx.stories and not cx.stories[sid].is_verdict})
    return {"file": run["_file"], "href": cx.evidence_href(run["_file"]), "finished": run["run"]["finished"],
            "age": age_text(run["run"]["finished"], cx.now), "machine": _machine_label(run),
            "cpu": p.get("cpu_model"), "commit": (p.get("commit") or "")[:10], "dirty": p.get("dirty"),
            "schema": run["schema"], "tests": len(run["tests"]), "metrics": len(run["benchmarks"]),
            "audit": audit_word(au), "reasons": au.tampered + au.reasons,
            "n_stories": len(sids), "fresh_for": sum(cx.fresh(run, sid) for sid in sids) if au.counts else 0}


def _run_rows(cx: _Context) -> tuple[list, int]:
    """Every GPU evidence file (committed: the project's record) and the newest CPU files
    (local, git-ignored), newest first; and how many CPU files were left out."""
    cpu = [r for r in reversed(cx.runs) if r["provenance"]["machine_class"] == "cpu"]
    keep = {r["_file"] for r in cpu[:CPU_RUNS_SHOWN]}
    shown = [r for r in reversed(cx.runs) if r["provenance"]["machine_class"] != "cpu" or r["_file"] in keep]
    return [_run_row(cx, r) for r in shown], len(cx.runs) - len(shown)


# --------------------------------------------------------------------------- the page context

def _glossary(statuses: tuple, states: set) -> dict:
    return {"statuses": [(s, STATUS_MEANING.get(s, _UNKNOWN)) for s in statuses],
            "states": [(s, STATE_MEANING.get(s, _UNKNOWN)) for s in
                       [*STATE_MEANING, *sorted(states - set(STATE_MEANING))]],
            "gates": list(GATE_MEANING.items()), "audit": list(AUDIT_MEANING.items())}


def build_context(paths) -> tuple[dict, _Context]:
    """(template context, the context it was built from: the verdict and the runs)."""
    now = datetime.now(timezone.utc)
    cx = _Context(paths, now)
    results = _results(cx)
    gates = {g: cx.ev.gate(g) for g in _cards.GATES}
    gate_views = _gate_views(cx, gates, results)
    counted = [r for r in results if not r.story.is_verdict]
    # a status the verdict adds later gets its own column instead of vanishing from the sums
    statuses = tuple(STATUSES) + tuple(sorted({r.status for r in counted} - set(STATUSES)))
    sprints, sprint_total = _sprint_rows(cx, results, gate_views, statuses)
    n = len(counted)
    totals = {"stories": n,
              "implemented": sum(r.implemented for r in counted), "tested": sum(r.tested for r in counted),
              "verified": sum(r.status == "verified" for r in counted),
              "gates": len(gate_views), "gates_passing": sum(g["state"] == "pass" for g in gate_views.values()),
              "by_status": sprint_total}
    history = _history.status_history(cx.ev, now) if cx.runs else []
    shown = tuple(s for s in ("verified", "cpu-only", "failing") if s in statuses)
    history_svg = stories_over_time("stories-over-time", [(None if lbl == _history.NOW else t, c)
                                                          for t, c, lbl in history], n, shown) \
        if len(history) >= 2 else ""
    charts, single_run = _trend_charts(cx, results)
    story_rows = _story_rows(cx, results, gate_views)
    states = {c["state"] for s in story_rows for c in s["criteria"]}
    runs, more_runs = _run_rows(cx)
    tree = git_state(paths.root)
    ctx = {
        "generated": _evidence.iso(now), "commit": (tree.get("commit") or "")[:10] or "unknown",
        "dirty": tree.get("dirty"), "n_runs": len(cx.runs), "has_evidence": bool(cx.runs),
        "evidence_dir": cx.href(paths.evidence) + "/", "stories_dir": cx.href(paths.stories) + "/",
        "catalog_href": cx.href(cx.catalog.path),
        "runs": runs, "more_runs": more_runs,
        "audit_totals": gate_views["gate1"]["audit"] if gate_views else {"n": 0, "by": {}, "history_machines": []},
        "totals": totals, "statuses": statuses, "sprints": sprints, "stories": story_rows,
        "gates": list(gate_views.values()), "perf": _perf_rows(cx, results), "risks": _risks(cx, results),
        "charts": charts, "single_run": single_run, "history_svg": history_svg,
        "history": [{"when": _evidence.iso(t), "counts": c, "label": lbl} for t, c, lbl in history],
        "throughput": _throughput(cx), "glossary": _glossary(statuses, states),
        "status_meaning": STATUS_MEANING, "state_meaning": STATE_MEANING, "gate_meaning": GATE_MEANING,
        "audit_meaning": AUDIT_MEANING, "gate_docs": gates,
    }
    return ctx, cx


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda part, whole: f"{100.0 * part / whole:.0f}%" if whole else "—"
    env.filters["num"] = lambda v: "—" if v is None else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    env.filters["ratio"] = lambda v: "—" if v is None else f"{v:.2f}×"
    env.filters["slug"] = _slug
    env.filters["mdcell"] = lambda v: str(v if v is not None else "").replace("|", "\\|").replace("\n", " ")
    return env


def render_all(paths) -> list[Path]:
    ctx, cx = build_context(paths)
    out = paths.reports
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv = out / "results.csv"
    results_frame(cx.ev, cx.runs).to_csv(csv, index=False)
    written.append(csv)
    gdir = out / "gates"
    gdir.mkdir(exist_ok=True)
    for name, doc in ctx["gate_docs"].items():
        p = gdir / f"{name}.json"
        p.write_text(json.dumps({**doc, "evaluated_at": ctx["generated"]}, indent=1) + "\n")
        written.append(p)
    env = _env()
    for name in ("progress", "m0_readiness"):
        for ext in ("html", "md"):
            p = out / f"{name}.{ext}"
            p.write_text(env.get_template(f"{name}.{ext}.j2").render(**ctx), encoding="utf-8")
            written.append(p)
    return written
