"""`nox -s report`: results.csv (pandas) and the progress / M0 readiness reports (Jinja2).

Everything shown is computed from the story cards and the evidence files by gates.verdict;
nothing is typed by hand. HTML is self-contained: inline CSS and inline SVG charts drawn by
matplotlib, no scripts. Every status links to its story card and to the evidence files behind
it with relative links, so they work wherever the repository is checked out.

Counting rule used on every page: the verdict stories (one per gate, e.g. GT-022 for gate1)
are the gates themselves; they are shown with their gate and never counted as stories, so
tiles, sprint rows and gate rows all count the same stories.
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
from gates import sources as _sources
from gates.cards import _fmt_where
from gates.charts import stories_over_time, trend_chart
from gates import history as _history
from gates.provenance import git_state
from gates.verdict import STATUSES, Evaluator, age_text, device_matches

ROOFLINE_REFS = ("copy", "matmul", "roofline")   # device ceilings, measured in the same run
# End-to-end throughput records: perf.<decode|prefill>.<model>.<weight type>, tok/s, with the
# peers measured in the same run as references.
THROUGHPUT_NAME = re.compile(r"^perf\.(decode|prefill)\.(.+)\.([^.]+)$")
PEER_ORDER = ("roofline", "llamacpp", "compiled", "hf", "eager")

# What each word on the pages means; shown in a glossary and as each badge's tooltip.
STATUS_MEANING = {
    "verified": "every criterion of the story passes on fresh evidence from the device it requires",
    "partial": "some criteria pass, none fails, others have no evidence yet",
    "cpu-only": "every CPU criterion passes; the CUDA criteria have no fresh GPU evidence yet",
    "stale": "evidence exists but predates a change to the story's source files: it must be run again",
    "failing": "a test fails, or a benchmark misses its bar or broke physics",
    "not-started": "no test marked with the story's id has run anywhere (no test is tagged with it yet, "
                   "or none has run)",
}
STATE_MEANING = {
    "pass": "met by fresh evidence from the required device",
    "fail": "a test failed or a benchmark case missed the bar",
    "invalid": "a benchmark figure is physically impossible (e.g. above the device's copy bandwidth)",
    "stale": "only evidence from before a change to the story's sources",
    "skipped": "its tests were skipped; a skip never counts as a pass",
    "incomplete": "some of the story's expected tests have no fresh passing record (not run, deselected "
                  "or skipped at collection)",
    "missing": "no evidence from the required device",
}
GATE_MEANING = {
    "pass": "every criterion of every story of the gate passes, and the gate before it passes",
    "fail": "at least one criterion of the gate's own stories is not met",
    "blocked upstream": "the gate's own stories all pass, but the gate before it does not",
}
_UNKNOWN = "(a word the verdict added after this page's glossary was written; see docs/harness.md)"
GATE_STATES = tuple(GATE_MEANING)


def results_frame(runs: list, current_hashes: dict) -> pd.DataFrame:
    """One row per (test or metric record, story) across every evidence file."""
    rows = []
    for r in runs:
        p, base = r["provenance"], {"file": r["_file"], "finished": r["run"]["finished"],
                                    "machine_class": r["provenance"]["machine_class"]}
        base.update(commit=(p.get("commit") or "")[:10], dirty=p.get("dirty"), gpu=p.get("gpu_name"))
        for t in r["tests"]:
            for sid in t["stories"] or [None]:
                rows.append({**base, "record": "test", "story": sid, "nodeid": t["nodeid"],
                             "outcome": t["outcome"], "duration_s": t["duration"], "device": t.get("device"),
                             "skip_reason": t.get("skip_reason"),
                             "fresh": r["source_hashes"].get(sid) == current_hashes.get(sid)})
        for m in r["benchmarks"]:
            for sid in m["stories"] or [None]:
                row = {**base, "record": "metric", "story": sid, "nodeid": m["nodeid"], "metric": m["name"],
                       "value": m["value"], "unit": m["unit"], "kind": m["kind"], "device": m.get("device"),
                       "valid": m["valid"], "invalid_reason": m.get("invalid_reason"),
                       "fresh": r["source_hashes"].get(sid) == current_hashes.get(sid),
                       "params": json.dumps(m.get("params", {}), sort_keys=True)}
                for ref, v in m["references"].items():
                    row[f"ref_{ref}"] = v
                for ref, v in m["ratios"].items():
                    row[f"ratio_{ref}"] = v
                rows.append(row)
    cols = ["file", "finished", "machine_class", "commit", "dirty", "gpu", "record", "story", "nodeid",
            "outcome", "duration_s", "device", "skip_reason", "metric", "value", "unit", "kind", "valid",
            "invalid_reason", "fresh", "params"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    extra = sorted(c for c in df.columns if c not in cols)
    return df[cols + extra]


# --------------------------------------------------------------------------- small helpers

def _device_label(device) -> str:
    """One spelling of a device everywhere: the GPU's name, or CPU."""
    return "CPU" if device in (None, "", "cpu") else str(device)


def _machine_label(run) -> str:
    return _device_label(run["provenance"].get("gpu_name"))


def _when(iso_ts: str) -> datetime:
    return datetime.strptime(iso_ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _target_text(c) -> str:
    parts = [f"≥ {v:g}× {r}" for r, v in sorted(c.min_ratio.items())]
    parts += [f"≤ {v:g}× {r}" for r, v in sorted(c.max_ratio.items())]
    if c.where:
        parts.append("where " + ", ".join(f"{k} {_fmt_where(v)}" for k, v in c.where.items()))
    return "; ".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class _Context:
    """What every part of the page needs: the evaluation, the runs by file, links and now."""

    def __init__(self, paths, now: datetime):
        self.paths, self.now = paths, now
        self.stories = _cards.load_cards(paths.stories)
        self.runs = _evidence.load_all(paths.evidence)
        self.current = _sources.hash_stories(paths.root, self.stories)
        self.ev = Evaluator(self.stories, self.runs, self.current)
        self.by_file = {r["_file"]: r for r in self.runs}

    def href(self, path: Path) -> str:
        """A link relative to the reports folder (where the pages are written)."""
        return Path(os.path.relpath(Path(path).resolve(), self.paths.reports)).as_posix()

    def evidence_href(self, file: str) -> str:
        return self.href(self.paths.evidence / file)

    def fresh(self, run, sid: str) -> bool:
        return self.ev.fresh(run, sid)

    def evidence_view(self, ref: dict, sid: str) -> dict:
        """One evidence file behind a criterion: where it came from, how old it is, and why it
        counts (the story's sources are byte-for-byte those the run saw) or does not."""
        run = self.by_file.get(ref["file"])
        devices = ref.get("devices") or ([run["provenance"].get("gpu_name") or "cpu"] if run else [])
        fresh = run is not None and self.fresh(run, sid)
        why = (f"counts: {sid}'s source files are unchanged since this run" if fresh
               else f"does not count: {sid}'s source files changed since this run")
        return {"file": ref["file"], "href": self.evidence_href(ref["file"]),
                "device": ", ".join(sorted({_device_label(d) for d in devices})),
                "commit": ref.get("commit"), "dirty": ref.get("dirty"), "finished": ref["finished"],
                "age": age_text(ref["finished"], self.now), "fresh": fresh, "why": why,
                "tests": ref.get("tests"), "nodeids": ref.get("nodeids", [])}


# --------------------------------------------------------------------------- gates

def _gate_views(cx: _Context, gates: dict) -> dict:
    """A gate's state separates a failure of its own stories from a block by the gate before it."""
    views = {}
    for name, doc in gates.items():
        g = _cards.GATES[name]
        up = doc.get("upstream")
        up_passes = up is None or gates[up]["verdict"] == "pass"
        own = [b for b in doc["blockers"] if b["story"] is not None or not (up and up in b["criterion"])]
        state = ("pass" if doc["verdict"] == "pass" else
                 "blocked upstream" if not own and not up_passes else "fail")
        members = doc["stories"]
        views[name] = {
            "gate": name, "state": state, "verdict": doc["verdict"], "upstream": up,
            "upstream_passes": up_passes, "sprints": doc["sprints"], "n_stories": len(members),
            "n_verified": sum(s["status"] == "verified" for s in members),
            "verdict_story": g.verdict_story,
            "verdict_story_href": cx.href(cx.stories[g.verdict_story].path) if g.verdict_story in cx.stories else None,
            "json_href": f"gates/{name}.json",
            "blockers": [{**b, "href": cx.href(cx.stories[b["story"]].path) if b["story"] in cx.stories else None}
                         for b in own],
        }
    return views


# --------------------------------------------------------------------------- stories

def _story_rows(cx: _Context, results: list, gate_views: dict) -> list:
    rows = []
    for r in results:
        s = r.story
        row = {"id": s.id, "title": s.title, "sprint": s.sprint, "gate": s.gate, "href": cx.href(s.path),
               "status": r.status, "verdict_of": s.verdict, "criteria": []}
        if s.is_verdict:
            row["status"] = gate_views[s.verdict]["state"]   # the gate story is its gate's verdict
        for c in r.criteria:
            evs = [cx.evidence_view(e, s.id) for e in c.evidence]
            row["criteria"].append({"label": c.criterion.label, "state": c.state, "reason": c.reason,
                                    "why": c.criterion.why, "evidence": evs[:3], "more_evidence": len(evs) - 3})
        rows.append(row)
    return rows


def _sprint_rows(results: list, gate_views: dict, statuses: tuple) -> tuple[list, dict]:
    rows, total = [], {st: 0 for st in statuses}
    sprints = sorted({r.story.sprint for r in results}, key=lambda sp: (isinstance(sp, str), str(sp).zfill(3)))
    for sp in sprints:
        rs = [r for r in results if r.story.sprint == sp and not r.story.is_verdict]
        gate_ids = [r.story.id for r in results if r.story.sprint == sp and r.story.is_verdict]
        counts = {st: sum(r.status == st for r in rs) for st in statuses}
        for st, n in counts.items():
            total[st] += n
        gate = next((r.story.gate for r in results if r.story.sprint == sp), None)
        rows.append({"sprint": sp, "gate": gate, "gate_state": gate_views[gate]["state"] if gate else None,
                     "n": len(rs), "counts": counts, "gate_stories": gate_ids})
    return rows, total


# --------------------------------------------------------------------------- benchmarks

def _median(xs):
    return statistics.median(xs) if xs else None


def _perf_rows(cx: _Context, results: list) -> list:
    """One row per benchmark criterion (a metric family): its bar, the worst and the median
    case for each bound, and every case in a details table."""
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
                    if not vals:
                        bounds.append({"ref": ref, "op": op, "bar": bar, "n": 0})
                        continue
                    vals.sort(key=lambda v: v[0], reverse=(op == "≤"))
                    missed = [v for v, _ in vals if (v < bar if op == "≥" else v > bar)]
                    worst_ratio, worst = vals[0]
                    bounds.append({"ref": ref, "op": op, "bar": bar, "n": len(vals), "n_missed": len(missed),
                                   "worst": worst_ratio, "worst_case": worst["name"], "worst_value": worst["value"],
                                   "unit": worst["unit"], "median": _median([v for v, _ in vals])})
            judged = {b["ref"] for b in bounds}
            others = sorted({k for case in cases for k, v in case.get("normalized", {}).items()
                             if v is not None and k not in judged})
            context_refs = {k: _median([case["normalized"][k] for case in cases
                                        if case.get("normalized", {}).get(k) is not None]) for k in others}
            refs = sorted({k for case in cases for k in case.get("normalized", {})})
            evs = [cx.evidence_view(e, r.story.id) for e in cr.evidence]
            rows.append({
                "story": r.story.id, "href": cx.href(r.story.path), "metric": c.metric, "target": _target_text(c),
                "why": c.why, "state": cr.state, "reason": cr.reason, "n_cases": len(cases), "bounds": bounds,
                "context": context_refs, "evidence": evs, "refs": refs,
                "device": ", ".join(sorted({_device_label(case.get("device")) for case in cases}))
                or ("CPU" if c.device == "cpu" else "a GPU"),
                "anchor": f"perf-{r.story.id}-{_slug(c.metric)}",
                "cases": [{"name": case["name"], "value": case["value"], "unit": case["unit"], "valid": case["valid"],
                           "ratios": {k: case.get("normalized", {}).get(k) for k in refs}} for case in cases],
            })
    return rows


def _raw_metrics(run) -> dict:
    out: dict[str, list] = {}
    for m in run["benchmarks"]:
        out.setdefault(m["name"], []).append(m)
    return out


def _beyond_physics(cx: _Context, results: list) -> list:
    """Bars no kernel can meet: "≥ x × reference" asks for more than a device ceiling (copy
    bandwidth, matmul rate) measured in the same run. The bar must change, not the kernel."""
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
                        if not isinstance(rv, (int, float)) or rv <= 0:
                            continue
                        total += 1
                        need = bar * rv
                        for ceil_name in ROOFLINE_REFS:
                            cv = case["references"].get(ceil_name)
                            if isinstance(cv, (int, float)) and cv > 0 and need > cv:
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
    """Newest perf.<phase>.<model>.<type> record per device: our tok/s and each peer's."""
    newest: dict[tuple, tuple] = {}
    for run in sorted(cx.runs, key=lambda x: (x["run"]["finished"], x["_file"]), reverse=True):
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
            cells = {}
            for p in peers:
                v = m["references"].get(p)
                ratio = m.get("ratios", {}).get(p)
                if ratio is None and isinstance(v, (int, float)) and v > 0:
                    ratio = m["value"] / v
                cells[p] = {"value": v, "ratio": ratio}
            rows.append({"model": model, "type": qtype, "device": device, "value": m["value"], "unit": m["unit"],
                         "valid": m.get("valid", False), "peers": cells, "file": run["_file"],
                         "href": cx.evidence_href(run["_file"]), "age": age_text(run["run"]["finished"], cx.now)})
        tables[phase] = {"peers": peers, "rows": rows}
    return tables


def _series_label(run, metric: dict) -> str:
    """The device that was measured: the GPU's name, or the CPU model of the machine."""
    if _device_label(metric.get("device")) != "CPU":
        return _device_label(metric.get("device"))
    return f"CPU ({run['provenance'].get('cpu_model') or 'unknown model'})"


def _trend_charts(cx: _Context, results: list) -> tuple[list, list]:
    """Per benchmark bound, the worst case of value / reference in each run, per device.
    Returns (charts, titles of bounds measured in one run only: no line to draw yet)."""
    charts, single = [], []
    ordered = sorted(cx.runs, key=lambda x: (x["run"]["finished"], x["_file"]))
    for r in results:
        for c in r.story.criteria:
            if c.kind != "benchmark":
                continue
            bounds = [(k, x, "≥") for k, x in sorted(c.min_ratio.items())]
            bounds += [(k, x, "≤") for k, x in sorted(c.max_ratio.items())]
            for ref, target, op in bounds:
                runs, series = [], {}
                for run in ordered:
                    per_device: dict[str, list] = {}
                    for m in run["benchmarks"]:
                        if fnmatch.fnmatchcase(m["name"], c.metric) and device_matches(c.device, m.get("device")) \
                                and cx.ev._where_ok(c, m.get("params", {})) and m["references"].get(ref):
                            per_device.setdefault(_series_label(run, m), []).append(m["value"] / m["references"][ref])
                    if per_device:
                        runs.append(_when(run["run"]["finished"]))
                        for label, vals in per_device.items():
                            series.setdefault(label, []).append((len(runs) - 1, min(vals) if op == "≥" else max(vals)))
                if not runs:
                    continue
                title = f"{r.story.id} {c.metric}: worst case ÷ {ref}"
                if len(runs) < 2:
                    single.append(title)
                    continue
                charts.append({"story": r.story.id, "title": title, "bar": f"{op} {target:g}× {ref}",
                               "href": cx.href(r.story.path),
                               "svg": trend_chart(_slug(title), runs, series, f"value ÷ {ref}", target,
                                                  f"bar {op} {target:g}×")})
    return charts, single


# --------------------------------------------------------------------------- risks

def _risks(cx: _Context, results: list) -> list:
    risks = []
    for r in results:
        for cr in r.criteria:
            if cr.state in ("fail", "invalid"):
                risks.append({"level": "high", "story": r.story.id, "what": f"{cr.criterion.label}: {cr.state}", "why": cr.reason})
            elif cr.state == "stale":
                risks.append({"level": "medium", "story": r.story.id, "what": f"{cr.criterion.label}: stale", "why": cr.reason})
    risks += _beyond_physics(cx, results)
    newest_by_class = {}
    for run in cx.ev.runs:
        newest_by_class.setdefault(run["provenance"]["machine_class"], run)
    for run in newest_by_class.values():
        where = f"newest {_machine_label(run)} run"
        for e in run.get("collection_errors", []):
            risks.append({"level": "high", "story": None, "what": f"collection error in the {where}",
                          "why": f"{e['nodeid']}: {e['message']}", "file": run["_file"]})
        for m in run["benchmarks"]:
            if not m["valid"]:
                risks.append({"level": "high", "story": ", ".join(m["stories"]) or None,
                              "what": f"invalid metric {m['name']} in the {where}", "why": m.get("invalid_reason"),
                              "file": run["_file"]})
    # test files outside a story's sources: one row per story, the files listed once
    outside: dict[str, set] = {}
    for run in cx.ev.runs:
        for t in run["tests"]:
            path = t["nodeid"].split("::")[0]
            for sid in t["stories"]:
                if sid in cx.stories and cx.stories[sid].sources and path not in cx.current[1].get(sid, []):
                    outside.setdefault(sid, set()).add(path)
    for sid, files in sorted(outside.items()):
        risks.append({"level": "low", "story": sid, "what": f"{len(files)} test file(s) not among {sid}'s sources",
                      "why": f"{', '.join(sorted(files))}: a change there would not make the story's evidence stale"})
    seen, uniq = set(), []
    for k in risks:
        key = (k["level"], k["story"], k["what"])
        if key not in seen:
            seen.add(key)
            uniq.append(k)
    order = {"high": 0, "medium": 1, "low": 2}
    uniq.sort(key=lambda k: (order[k["level"]], k["story"] or "", k["what"]))
    for k in uniq:
        k["href"] = cx.href(cx.stories[k["story"]].path) if k["story"] in cx.stories else None
        k["file_href"] = cx.evidence_href(k["file"]) if k.get("file") else None
    return uniq


# --------------------------------------------------------------------------- the page context

def _glossary(statuses: tuple, states: set) -> dict:
    return {"statuses": [(s, STATUS_MEANING.get(s, _UNKNOWN)) for s in statuses],
            "states": [(s, STATE_MEANING.get(s, _UNKNOWN)) for s in
                       [*STATE_MEANING, *sorted(states - set(STATE_MEANING))]],
            "gates": list(GATE_MEANING.items())}


def build_context(paths) -> tuple[dict, list, tuple]:
    """(template context, evidence runs, current source hashes)."""
    now = datetime.now(timezone.utc)
    cx = _Context(paths, now)
    results = cx.ev.all_stories()
    gates = {g: cx.ev.gate(g) for g in _cards.GATES}
    gate_views = _gate_views(cx, gates)
    counted = [r for r in results if not r.story.is_verdict]
    # a status the verdict adds later gets its own column instead of vanishing from the sums
    statuses = tuple(STATUSES) + tuple(sorted({r.status for r in counted} - set(STATUSES)))
    sprints, sprint_total = _sprint_rows(results, gate_views, statuses)
    n = len(counted)
    totals = {"stories": n,
              "implemented": sum(r.implemented for r in counted), "tested": sum(r.tested for r in counted),
              "verified": sum(r.status == "verified" for r in counted),
              "gates": len(gate_views), "gates_passing": sum(g["state"] == "pass" for g in gate_views.values()),
              "by_status": sprint_total}
    history = _history.status_history(cx.stories, cx.runs, cx.current, now) if cx.runs else []
    shown = tuple(s for s in ("verified", "cpu-only", "failing") if s in statuses)
    history_svg = stories_over_time("stories-over-time", [(None if lbl == _history.NOW else t, c)
                                                          for t, c, lbl in history], n, shown) \
        if len(history) >= 2 else ""
    charts, single_run = _trend_charts(cx, results)
    story_rows = _story_rows(cx, results, gate_views)
    states = {c["state"] for s in story_rows for c in s["criteria"]}
    tree = git_state(paths.root)
    ctx = {
        "generated": _evidence.iso(now), "commit": (tree.get("commit") or "")[:10] or "unknown",
        "dirty": tree.get("dirty"), "n_runs": len(cx.runs), "has_evidence": bool(cx.runs),
        "evidence_dir": cx.href(paths.evidence) + "/", "stories_dir": cx.href(paths.stories) + "/",
        "runs": [_run_row(cx, x) for x in cx.ev.runs[:15]], "more_runs": max(0, len(cx.runs) - 15),
        "totals": totals, "statuses": statuses, "sprints": sprints, "stories": story_rows,
        "gates": list(gate_views.values()), "perf": _perf_rows(cx, results), "risks": _risks(cx, results),
        "charts": charts, "single_run": single_run, "history_svg": history_svg,
        "history": [{"when": _evidence.iso(t), "counts": c, "label": lbl} for t, c, lbl in history],
        "throughput": _throughput(cx), "glossary": _glossary(statuses, states),
        "status_meaning": STATUS_MEANING, "state_meaning": STATE_MEANING, "gate_meaning": GATE_MEANING,
        "gate_docs": gates,
    }
    return ctx, cx.runs, cx.current


def _run_row(cx: _Context, run) -> dict:
    p = run["provenance"]
    fresh_for = sum(cx.fresh(run, sid) for sid, s in cx.stories.items() if not s.is_verdict)
    return {"file": run["_file"], "href": cx.evidence_href(run["_file"]), "finished": run["run"]["finished"],
            "age": age_text(run["run"]["finished"], cx.now), "machine": _machine_label(run),
            "cpu": p.get("cpu_model"), "commit": (p.get("commit") or "")[:10], "dirty": p.get("dirty"),
            "tests": len(run["tests"]), "metrics": len(run["benchmarks"]), "fresh_for": fresh_for,
            "n_stories": sum(not s.is_verdict for s in cx.stories.values())}


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
    ctx, runs, current = build_context(paths)
    out = paths.reports
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv = out / "results.csv"
    results_frame(runs, current[0]).to_csv(csv, index=False)
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
