"""`nox -s report`: results.csv (pandas) and the progress / M0 readiness reports (Jinja2).

Everything shown is computed from the story cards and the evidence files by gates.verdict;
nothing is typed by hand. HTML is self-contained: inline CSS and inline SVG, no scripts.
"""
from __future__ import annotations

import fnmatch
import json
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from gates import cards as _cards
from gates import evidence as _evidence
from gates import sources as _sources
from gates.cards import _fmt_where
from gates.charts import line_chart
from gates.provenance import git_state
from gates.verdict import STATUSES, Evaluator, age_text, device_matches, percentages

ROOFLINE_REFS = ("copy", "matmul", "roofline")   # device ceilings, measured in the same run


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


def _ev_view(e: dict, now) -> dict:
    return {**e, "age": age_text(e["finished"], now)}


def _target_text(c) -> str:
    parts = [f"≥ {v:g}× {r}" for r, v in sorted(c.min_ratio.items())]
    parts += [f"≤ {v:g}× {r}" for r, v in sorted(c.max_ratio.items())]
    if c.where:
        parts.append("where " + ", ".join(f"{k} {_fmt_where(v)}" for k, v in c.where.items()))
    return "; ".join(parts)


def build_context(paths) -> tuple[dict, list, tuple]:
    """(template context, evidence runs, current source hashes)."""
    now = datetime.now(timezone.utc)
    stories = _cards.load_cards(paths.stories)
    runs = _evidence.load_all(paths.evidence)
    current = _sources.hash_stories(paths.root, stories)
    ev = Evaluator(stories, runs, current)
    results = ev.all_stories()
    gates = {g: ev.gate(g) for g in _cards.GATES}
    pct = percentages(results)

    story_rows = []
    for r in results:
        story_rows.append({
            "id": r.story.id, "title": r.story.title, "sprint": r.story.sprint, "gate": r.story.gate,
            "status": r.status, "description": r.story.description, "verdict_of": r.story.verdict,
            "implemented": r.implemented, "tested": r.tested,
            "criteria": [{"label": c.criterion.label, "state": c.state, "reason": c.reason, "device": c.criterion.device,
                          "evidence": [_ev_view(e, now) for e in c.evidence]} for c in r.criteria],
        })
    sprint_rows = []
    for sp in [0, 1, 2, 3, 4, 5, 6, 7, 8, "GX"]:
        rs = [r for r in results if r.story.sprint == sp]
        if not rs:
            continue
        counts = {st: sum(r.status == st for r in rs) for st in STATUSES}
        sprint_rows.append({"sprint": sp, "gate": rs[0].story.gate, "n": len(rs), "counts": counts,
                            "ids": [r.story.id for r in rs], "gate_verdict": gates[rs[0].story.gate]["verdict"]})

    # performance: every benchmark criterion, newest fresh evidence (else the newest any)
    perf = []
    for r in results:
        for cr in r.criteria:
            c = cr.criterion
            if c.kind != "benchmark":
                continue
            cases = [case for e in cr.evidence for case in e.get("cases", [])]
            ev0 = cr.evidence[0] if cr.evidence else None
            if not cases:
                perf.append({"story": r.story.id, "metric": c.metric, "target": _target_text(c), "state": cr.state,
                             "reason": cr.reason, "value": None, "unit": "", "roofline": {}, "peers": {},
                             "card": None, "run": ev0})
            for case in cases:
                norm = case.get("normalized", {})
                perf.append({
                    "story": r.story.id, "metric": case["name"], "target": _target_text(c), "state": cr.state,
                    "reason": cr.reason, "value": case["value"], "unit": case["unit"],
                    "roofline": {k: v for k, v in norm.items() if k in ROOFLINE_REFS and v is not None},
                    "peers": {k: v for k, v in norm.items() if k not in ROOFLINE_REFS and v is not None},
                    "card": case.get("device"), "run": _ev_view(ev0, now) if ev0 else None, "valid": case.get("valid")})

    # risks, derived only from evidence states
    risks = []
    for r in results:
        for cr in r.criteria:
            if cr.state in ("fail", "invalid"):
                risks.append({"level": "high", "story": r.story.id, "what": f"{cr.criterion.label}: {cr.state}", "why": cr.reason})
            elif cr.state == "stale":
                risks.append({"level": "medium", "story": r.story.id, "what": f"{cr.criterion.label}: stale", "why": cr.reason})
    newest_by_class = {}
    for run in ev.runs:
        newest_by_class.setdefault(run["provenance"]["machine_class"], run)
    for mc, run in newest_by_class.items():
        for e in run.get("collection_errors", []):
            risks.append({"level": "high", "story": None, "what": f"collection error in newest {mc} run {run['_file']}",
                          "why": f"{e['nodeid']}: {e['message']}"})
        for m in run["benchmarks"]:
            if not m["valid"]:
                risks.append({"level": "high", "story": ", ".join(m["stories"]) or None,
                              "what": f"invalid metric {m['name']} in newest {mc} run", "why": m.get("invalid_reason")})
    for run in ev.runs:
        for t in run["tests"]:
            path = t["nodeid"].split("::")[0]
            for sid in t["stories"]:
                if sid in stories and stories[sid].sources and path not in current[1].get(sid, []):
                    risks.append({"level": "low", "story": sid, "what": f"{path} is not among {sid}'s sources",
                                  "why": "a change to that test file would not make the story's evidence stale"})
    seen, uniq = set(), []
    for k in risks:
        key = (k["level"], k["story"], k["what"])
        if key not in seen:
            seen.add(key)
            uniq.append(k)
    order = {"high": 0, "medium": 1, "low": 2}
    risks = sorted(uniq, key=lambda k: (order[k["level"]], k["story"] or ""))

    # trends: worst case of value / reference for each bound of each benchmark criterion
    charts = []
    for r in results:
        for c in r.story.criteria:
            if c.kind != "benchmark":
                continue
            bounds = [(k, x, True) for k, x in sorted(c.min_ratio.items())]
            bounds += [(k, x, False) for k, x in sorted(c.max_ratio.items())]
            for ref, target, worst_is_min in bounds:
                chart = _trend(ev, r, c, ref, target, worst_is_min)
                if chart:
                    charts.append(chart)

    tree = git_state(paths.root)
    ctx = {
        "generated": _evidence.iso(now), "commit": (tree.get("commit") or "")[:10] or "unknown",
        "dirty": tree.get("dirty"), "n_runs": len(runs), "has_evidence": bool(runs),
        "evidence_dir": str(paths.evidence), "runs": [
            {"file": x["_file"], "finished": x["run"]["finished"], "age": age_text(x["run"]["finished"], now),
             "machine_class": x["provenance"]["machine_class"], "commit": (x["provenance"].get("commit") or "")[:10],
             "dirty": x["provenance"].get("dirty"), "tests": len(x["tests"]), "metrics": len(x["benchmarks"]),
             "gpu": x["provenance"].get("gpu_name")} for x in ev.runs[:15]],
        "pct": pct, "statuses": STATUSES, "sprints": sprint_rows, "stories": story_rows,
        "gates": list(gates.values()), "perf": perf, "risks": risks, "charts": charts,
    }
    return ctx, runs, current


def _trend(ev, r, c, ref, target, worst_is_min):
    """Per run and machine class, the worst case of value / reference for one criterion."""
    series: dict[str, list] = {}
    for run in sorted(ev.runs, key=lambda x: x["run"]["finished"]):
        vals = []
        for m in run["benchmarks"]:
            if fnmatch.fnmatchcase(m["name"], c.metric) and device_matches(c.device, m.get("device")) \
                    and ev._where_ok(c, m.get("params", {})) and m["references"].get(ref):
                vals.append(m["value"] / m["references"][ref])
        if vals:
            x = run["run"]["finished"][5:16].replace("T", " ")
            series.setdefault(run["provenance"]["machine_class"], []).append((x, min(vals) if worst_is_min else max(vals)))
    if not series:
        return None
    return {"story": r.story.id, "metric": c.metric,
            "svg": line_chart(f"{r.story.id} {c.metric}: value / {ref}", series, "ratio", target)}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: f"{v:.0f}%"
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.4g}"
    env.filters["ratio"] = lambda v: "—" if v is None else f"{v:.2f}×"
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
    env = _env()
    for name in ("progress", "m0_readiness"):
        for ext in ("html", "md"):
            p = out / f"{name}.{ext}"
            p.write_text(env.get_template(f"{name}.{ext}.j2").render(**ctx), encoding="utf-8")
            written.append(p)
    gdir = out / "gates"
    gdir.mkdir(exist_ok=True)
    for g in ctx["gates"]:
        p = gdir / f"{g['gate']}.json"
        p.write_text(json.dumps({**g, "evaluated_at": ctx["generated"]}, indent=1) + "\n")
        written.append(p)
    return written
