"""`python -m gates <command>`: the harness's one entry point (nox sessions call it).

Exit codes: 0 success / gate passes / story verified, 1 gate fails, story not verified or
committed evidence was edited, 2 harness error (bad card, corrupt evidence file, collection
that cannot run), with a one-line message naming the file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from gates import audit as _audit
from gates import cards as _cards
from gates import evidence as _evidence
from gates import manifest as _manifest
from gates import provenance as _prov
from gates import sources as _sources
from gates.paths import resolve
from gates.verdict import Evaluator

GATE_NAMES = list(_cards.GATES)


def load(paths) -> Evaluator:
    """Everything a verdict needs: cards, catalog, expected test set, evidence and its audit."""
    stories = _cards.load_cards(paths.stories)
    runs = _evidence.load_all(paths.evidence)
    tree = _sources.hash_stories(paths.root)
    audits = _audit.audit_runs(paths.root, runs, paths.evidence)
    man = _manifest.load(paths.root, paths.stories)
    return Evaluator(stories, runs, tree, manifest=man, audits=audits)


def _clip(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def gate_table(ev: Evaluator, doc: dict) -> str:
    width = max(100, shutil.get_terminal_size((140, 20)).columns)
    lines = [f"{doc['gate']}: {doc['verdict'].upper()}   (sprints {', '.join(map(str, doc['sprints']))}; "
             f"upstream {doc['upstream'] or 'none'}; {len(ev.runs)} evidence file(s))", ""]
    hdr = f"{'STORY':<7} {'STATUS':<11} {'STATE':<8} {'CRITERION':<44} REASON"
    lines += [hdr, "-" * min(width, 160)]
    for st in doc["stories"]:
        first = True
        for c in st["criteria"] or [{"state": "-", "label": "(no criteria)", "reason": ""}]:
            sid = st["id"] if first else ""
            status = st["status"] if first else ""
            lines.append(f"{sid:<7} {status:<11} {c['state']:<8} {_clip(c['label'], 44):<44} "
                         f"{_clip(c['reason'], max(20, width - 74))}")
            first = False
    lines.append("")
    if doc["blockers"]:
        lines.append(f"{len(doc['blockers'])} blocker(s):")
        for b in doc["blockers"]:
            lines.append(f"  {b['story'] or doc['gate']}: {b['criterion']} [{b['state']}] {b['reason']}")
    else:
        lines.append("no blockers")
    lines.append(f"verdict: {doc['gate']} {doc['verdict'].upper()}")
    return "\n".join(lines)


def write_gate_json(paths, doc: dict) -> Path:
    out = paths.reports / "gates"
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{doc['gate']}.json"
    p.write_text(json.dumps(doc, indent=1) + "\n")
    return p


def _gate_and_upstream(name: str) -> list[str]:
    out = []
    while name:
        out.append(name)
        name = _cards.GATES[name].upstream
    return out


def cpu_stories_to_run(ev: Evaluator, gates: list[str]) -> list[str]:
    """Stories of these gates whose CPU tests lack fresh, counted evidence (missing, stale or
    incomplete): running them here can fix that. Failures are not rerun: they are the answer."""
    out = []
    for g in gates:
        for sid in ev.catalog.stories_of_gate(g):
            if sid not in ev.stories or ev.manifest.problems_for(sid):
                continue      # no card, or tests that collection cannot see: a rerun cannot help
            for cr in ev.story(sid).criteria:
                if cr.criterion.device == "cpu" and cr.state in ("missing", "stale", "incomplete") \
                        and ev.manifest.expected(sid, "cpu", cr.criterion.keyword):
                    out.append(sid)
                    break
    return sorted(set(out))


def cmd_gate(a, paths) -> int:
    t0 = time.perf_counter()
    ev = load(paths)
    if not a.no_run:
        todo = cpu_stories_to_run(ev, _gate_and_upstream(a.gate))
        if todo:
            print(f"{a.gate}: CPU evidence is missing or stale for {', '.join(todo)}: running their CPU tests")
            if _prov.git_state(paths.root).get("dirty"):
                print("  note: the tree has uncommitted or untracked changes, so this run's evidence will not count;"
                      " commit first")
            from gates.runner import run_pytest, xdist_available
            args = (["-n", "auto"] if xdist_available() else []) + [x for sid in todo for x in ("--story", sid)]
            rc = run_pytest([*args, "-m", "not cuda"], cwd=paths.root, paths=paths)
            if rc not in (0, 1, 5):
                print(f"{a.gate}: the CPU run ended with exit status {rc}", file=sys.stderr)
            ev = load(paths)
    doc = ev.gate(a.gate)
    doc["evaluated_at"] = _evidence.iso(_evidence.utc_now())
    print(gate_table(ev, doc))
    p = write_gate_json(paths, doc)
    print(f"wrote {p} in {time.perf_counter() - t0:.2f}s")
    if doc["verdict"] == "pass" and a.gate not in enforced_gates(paths.root / ".ci" / "enforced_gates"):
        print(f"{a.gate} passes and is not enforced yet: add it to .ci/enforced_gates so it cannot silently regress")
    return 0 if doc["verdict"] == "pass" else 1


def enforced_gates(listfile: Path) -> list[str]:
    if not listfile.exists():
        return []
    names = []
    for line in listfile.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def story_text(ev: Evaluator, sid: str) -> str:
    r = ev.story(sid)
    s = r.story
    lines = [f"{s.id} {s.title} (sprint {s.sprint}, {s.gate}): {r.status.upper()}", f"  bar: {s.description}"]
    for p in r.card_problems:
        lines.append(f"  [card   ] {p}")
    if s.is_verdict:
        lines.append(f"  status is the {s.verdict} verdict: {ev.gate(s.verdict)['verdict']}")
    for c in r.criteria:
        lines.append(f"  [{c.state:<7}] {c.criterion.label}: {c.reason}")
        for e in c.evidence[:3]:
            lines.append(f"             evidence {e['file']} (commit {e['commit']}, {e['machine_class']})")
    return "\n".join(lines)


def cmd_story(a, paths) -> int:
    from gates.runner import run_pytest
    stories = _cards.load_cards(paths.stories)
    unknown = [s for s in a.ids if s not in stories]
    if unknown:
        print(f"unknown story id(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not a.no_run:
        args = [x for sid in a.ids for x in ("--story", sid)] + list(a.pytest_args)
        rc = run_pytest(args, cwd=paths.root, paths=paths)
        if rc not in (0, 1, 5):
            print(f"pytest ended with exit status {rc}", file=sys.stderr)
    ev = load(paths)
    print()
    for sid in a.ids:
        print(story_text(ev, sid))
    not_verified = [sid for sid in a.ids if ev.story(sid).status != "verified"]
    if not_verified:
        print(f"not verified: {', '.join(not_verified)}")
    return 1 if not_verified else 0


def cmd_status(a, paths) -> int:
    ev = load(paths)
    for r in ev.all_stories():
        print(f"{r.story.id:<7} {r.status:<11} {r.story.title}")
    return 0


def history_problems(paths) -> list[str]:
    """Edits of committed evidence (or its disappearance): CI fails on any of them."""
    runs = _evidence.load_all(paths.evidence)
    audits, gone = _audit.audit_runs(paths.root, runs, paths.evidence)
    return [t for a in audits.values() for t in a.tampered] + gone


def cmd_evidence(a, paths) -> int:
    """Every evidence file: does it count, and if not, why."""
    runs = _evidence.load_all(paths.evidence)
    audits, gone = _audit.audit_runs(paths.root, runs, paths.evidence)
    for r in sorted(runs, key=lambda r: r["run"]["finished"]):
        au = audits[r["_file"]]
        state = "counts" if au.counts else ("history" if au.history and not au.tampered else "rejected")
        print(f"{state:<9} {r['_file']}")
        for why in au.tampered + au.reasons:
            print(f"          - {why}")
    for g in gone:
        print(f"gone      {g}")
    bad = [t for au in audits.values() for t in au.tampered] + gone
    return 1 if bad else 0


def cmd_enforce(a, paths) -> int:
    listfile = Path(a.file) if a.file else paths.root / ".ci" / "enforced_gates"
    names = enforced_gates(listfile)
    unknown = [n for n in names if n not in _cards.GATES]
    if unknown:
        print(f"{listfile}: unknown gate(s) {unknown}; known {GATE_NAMES}", file=sys.stderr)
        return 2
    edits = history_problems(paths)
    for e in edits:
        print(f"evidence history: {e}", file=sys.stderr)
    if not names:
        print(f"{listfile}: no enforced gates yet")
        return 1 if edits else 0
    ev = load(paths)
    failed = []
    for n in names:
        doc = ev.gate(n)
        write_gate_json(paths, doc)
        print(f"enforced {n}: {doc['verdict'].upper()}")
        if doc["verdict"] != "pass":
            failed.append(n)
            for b in doc["blockers"]:
                print(f"  {b['story'] or n}: {b['criterion']} [{b['state']}] {b['reason']}")
    if failed:
        print(f"enforced gate(s) regressed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or edits else 0


def cmd_prune(a, paths) -> int:
    committed = _audit.committed_names(paths.root, paths.evidence)
    removed = _evidence.prune(paths.evidence, a.keep, dry_run=a.dry_run, committed=committed)
    verb = "would remove" if a.dry_run else "removed"
    for p in removed:
        print(f"{verb} {p}")
    print(f"{verb} {len(removed)} file(s); kept the newest {a.keep} per machine class and every committed file")
    return 0


def cmd_report(a, paths) -> int:
    from gates.report import render_all
    t0 = time.perf_counter()
    for p in render_all(paths):
        print(f"wrote {p}")
    print(f"report rendered in {time.perf_counter() - t0:.2f}s")
    return 0


def cmd_tests(a, paths) -> int:
    from gates.runner import run_pytest, xdist_available
    args = (["-n", "auto"] if xdist_available() else []) + list(a.pytest_args)
    return run_pytest(args, cwd=paths.root, paths=paths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gates", description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="repository root (default: the checkout gates/ lives in)")
    ap.add_argument("--stories", help="story card folder (default <root>/stories)")
    ap.add_argument("--evidence", help="evidence folder (default $GPT_ENGINE_EVIDENCE_DIR or <root>/reports/evidence)")
    ap.add_argument("--reports", help="output folder for reports (default <root>/reports)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gate", help="evaluate a gate (first running the CPU tests whose evidence is missing or stale): "
                                    "table on stdout, reports/gates/<gate>.json; exit 0 iff it passes")
    g.add_argument("gate", choices=GATE_NAMES)
    g.add_argument("--no-run", action="store_true", help="judge the existing evidence only")
    s = sub.add_parser("story", help="run one story's tests and benchmarks, then print its status")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.add_argument("--no-run", action="store_true", help="only print the status from existing evidence")
    sub.add_parser("status", help="one line per story with its status")
    sub.add_parser("evidence", help="every evidence file: whether it counts and why not; exit 1 if committed evidence was edited")
    e = sub.add_parser("enforce", help="exit non-zero if any gate listed in .ci/enforced_gates fails")
    e.add_argument("--file", help="list file (default <root>/.ci/enforced_gates)")
    p = sub.add_parser("prune", help="keep the newest N uncommitted evidence files per machine class")
    p.add_argument("--keep", type=int, required=True)
    p.add_argument("--dry-run", action="store_true")
    sub.add_parser("report", help="results.csv, progress.{html,md}, m0_readiness.{html,md}, gates/*.json")
    sub.add_parser("tests", help="the full CPU suite with pytest-xdist (writes evidence)")
    # `tests` and `story` pass any option they do not know on to pytest (-k, -x, -q, ...)
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd not in ("tests", "story"):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    a.pytest_args = extra
    paths = resolve(a.root, a.stories, a.evidence, a.reports)
    try:
        return {"gate": cmd_gate, "story": cmd_story, "status": cmd_status, "enforce": cmd_enforce,
                "prune": cmd_prune, "report": cmd_report, "tests": cmd_tests, "evidence": cmd_evidence}[a.cmd](a, paths)
    except (_cards.CardError, _evidence.EvidenceError, _manifest.ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
