"""From the catalog, the cards, the expected test set and the evidence to criterion states,
story statuses and gate verdicts.

Rules (docs/harness.md "Verdicts"):
- Only evidence that passes the audit counts (gates/audit.py); the rest is shown, never used.
- A record is fresh for a story while every file the run recorded for that story still has
  the hash it had (gates/sources.py); stale records never pass, they explain.
- Tests: the expected set comes from collection (gates/manifest.py). Every expected test of
  the story and device needs a fresh passing record from the newest run that has one; a test
  without one leaves the criterion incomplete, whatever the other tests did.
- Benchmarks: the cases are the metrics that the story's benchmark tests recorded in the run
  that gave each test its newest fresh record. Every ratio is recomputed from the value and
  the references, and the physics checks (gates/physics.py) are applied again.
- A gate's stories and bars come from the catalog: a missing, moved or loosened card is a
  blocker. Skipped, missing, stale, incomplete, failing and invalid never pass.
"""
from __future__ import annotations

import fnmatch
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone

from gates import audit as _audit
from gates import catalog as _catalog
from gates import manifest as _manifest
from gates import physics
from gates import sources as _sources
from gates.cards import GATES, CardError, Criterion, Story

SAMPLE_TESTS = 25     # test ids listed per evidence file in gate JSON and reports
STATUSES = ("verified", "partial", "cpu-only", "stale", "failing", "not-started")
STATES = ("pass", "fail", "invalid", "stale", "skipped", "incomplete", "missing")


def device_matches(required: str, actual) -> bool:
    if required == "cpu":
        return actual == "cpu"
    return isinstance(actual, str) and actual not in ("", "cpu")


def _ts(run) -> str:
    return run["run"]["finished"]


def _order(run) -> tuple:
    """Newest last: by finish, then start (runs of one second), then name. A run finishing in the
    same second as another of its commit gets the name X-2.json, longer than X.json (and X-10
    longer than X-9), so the later one sorts later."""
    return _ts(run), run["run"].get("started", ""), len(run["_file"]), run["_file"]


# Files whose addition can change what a recorded module or kernel runs (a package beside a
# module, a new kernel file that the extension build globs, a conftest).
_CODE_SUFFIXES = (".py", ".pth", ".cu", ".cuh", ".cpp", ".c", ".h", ".hpp")


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


def _few(xs, n=3) -> str:
    xs = list(xs)
    return "; ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")


@dataclass
class CritResult:
    criterion: Criterion
    state: str                   # one of STATES
    reason: str
    evidence: list = field(default_factory=list)   # [{file, commit, finished, machine_class, ...}]
    counts: dict = field(default_factory=dict)     # tests: expected / passed / ...

    @property
    def passed(self) -> bool:
        return self.state == "pass"

    def to_json(self) -> dict:
        c = self.criterion
        d = {"label": c.label, "kind": c.kind, "device": c.device, "state": self.state,
             "passed": self.passed, "reason": self.reason, "evidence": self.evidence, "counts": self.counts}
        if c.kind == "tests" and c.keyword:
            d["keyword"] = c.keyword
        if c.kind == "benchmark":
            d.update(metric=c.metric, min_ratio=c.min_ratio, max_ratio=c.max_ratio, where=c.where,
                     aggregate=c.aggregate)
        return d


@dataclass
class StoryResult:
    story: Story
    status: str
    criteria: list
    implemented: bool            # some test marked with the story ran somewhere
    tested: bool                 # its CPU tests all pass (fresh, counted evidence)
    card_problems: list = field(default_factory=list)   # disagreements with the catalog

    @property
    def validated(self) -> bool:
        return self.status == "verified"

    def to_json(self) -> dict:
        s = self.story
        return {"id": s.id, "title": s.title, "sprint": s.sprint, "gate": s.gate, "status": self.status,
                "implemented": self.implemented, "tested": self.tested, "validated": self.validated,
                "verdict_of": s.verdict, "card_problems": self.card_problems,
                "criteria": [c.to_json() for c in self.criteria]}


def _run_ref(run, **extra) -> dict:
    p = run["provenance"]
    return {"file": run["_file"], "commit": (p.get("commit") or "")[:10] or None, "dirty": p.get("dirty"),
            "finished": _ts(run), "machine_class": p.get("machine_class"), **extra}


def metric_problems(devices: dict, run: dict, m: dict) -> list[str]:
    """Why a metric record is invalid, recomputed (gates/physics.py) from its value, references
    and the run's own baselines; the record's `valid` is not believed. devices: the catalog's
    datasheet peaks per device."""
    dev = m.get("device") or "cpu"
    base = run.get("baselines", {}).get(dev, {})
    copy, matmul = base.get("copy_gbps"), base.get("matmul_tflops")
    refs = m.get("references", {})
    reasons = [] if m.get("valid", False) else [m.get("invalid_reason") or "recorded invalid"]
    try:
        f = physics.factor(m["kind"], m["unit"])
        for ref, base_v in (("copy", copy), ("matmul", matmul)):
            if ref in refs and (base_v is None or abs(refs[ref] * f - base_v) > 1e-9 * base_v):
                reasons.append(f"reference {ref} {refs[ref]:.6g} is not the run's measured baseline")
    except (KeyError, TypeError):
        reasons.append(f"unknown kind/unit {m.get('kind')}/{m.get('unit')}")
    reasons += physics.problems(m.get("kind"), m.get("unit"), m.get("value"), refs, m.get("params", {}),
                                dev != "cpu", copy, matmul)
    reasons += physics.baseline_problems(dev, copy, matmul, devices.get(dev))
    return list(dict.fromkeys(reasons))


def normalized(m: dict) -> dict:
    """value vs each reference, recomputed, never read from the evidence (inverted where lower
    is better: above 1 is better)."""
    hib = m.get("higher_is_better", True)
    return {ref: physics.ratio(m["value"], rv, hib) for ref, rv in m.get("references", {}).items()
            if physics.positive(rv) and physics.positive(m.get("value"))}


def _kind(v) -> str | None:
    """What a `where` may compare: numbers with numbers, strings and booleans by equality."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number" if math.isfinite(v) else None
    return "str" if isinstance(v, str) else None


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _under(path_dir: str, d: str) -> bool:
    """Whether directory path_dir is d or inside it ("" is the root, which holds everything)."""
    return d == "" or path_dir == d or path_dir.startswith(d + "/")


class Evaluator:
    def __init__(self, stories: dict, runs: list, tree, *, catalog=None, manifest=None, audits=None):
        """tree: gates.sources.Tree (sources.hash_stories(root)). catalog, manifest and audits
        default to the ones of tree.root (the harness's own tests pass synthetic ones)."""
        self.stories = stories
        self.tree = tree
        self.runs = sorted(runs, key=_order, reverse=True)   # newest first
        self.catalog = catalog or _catalog.load(tree.root)
        unknown = _catalog.unknown_cards(self.catalog, stories)
        if unknown:
            raise CardError("; ".join(unknown))
        if manifest is None:
            folder = next(iter(stories.values())).path.parent if stories else tree.root / "stories"
            manifest = _manifest.load(tree.root, folder)
        self.manifest = manifest
        if audits is None:
            audits = _audit.audit_runs(tree.root, runs)
        self.audits, self.gone = audits
        self.counting = [r for r in self.runs if self.audits[r["_file"]].counts]
        self._index: dict[str, dict] = {}
        self._fresh: dict = {}
        self._story_cache: dict[str, StoryResult] = {}
        self._gate_cache: dict[str, dict] = {}

    # ---------- freshness ----------
    @staticmethod
    def _files(run, sid) -> tuple[list | None, dict]:
        """(the files a run's records of the story depend on, their hashes at the run). The
        recorded story_files, plus what a module among them builds at run time
        (sources.BUILT_FROM: gpt_engine/cpu_q4.py compiles csrc_cpu/**) as the run's source tree
        held it: a run whose first test to build the C kernel was another story's recorded the C
        file for that story only. Runs without a source tree are judged on story_files alone."""
        files = run.get("story_files", {}).get(sid)
        recorded = run.get("source_files", {})
        tree = run.get("source_tree")
        if files is None or not tree:
            return files, recorded
        listed = set(files)
        extra = [f for f in _sources.built_from(listed, tree) if f not in listed]
        if not extra:
            return files, recorded
        return [*files, *extra], {**{f: tree[f] for f in extra}, **recorded}

    def fresh(self, run, sid) -> bool:
        key = (run["_file"], sid)
        if key not in self._fresh:
            files, recorded = self._files(run, sid)
            if files is None:
                self._fresh[key] = False
            else:
                changed, removed = self.tree.changes(recorded, files)
                self._fresh[key] = not changed and not removed and not self.added(run, sid)
        return self._fresh[key]

    def added(self, run, sid) -> list[str]:
        """Sources added since the run that can change what its records of the story ran (runs
        that recorded their whole source tree only; older ones are judged without this):
        - a file the card's `sources` globs match, or, where the run has GPU records of the
          story, one the kernel globs match (the extension compiles every csrc/*.cu);
        - a conftest.py in a directory on one of the story's tests' paths;
        - a code file (.py, .cu, ...) other than a test module, under the directory of a recorded
          module or kernel that is not a test module (a package beside a module is imported in
          its place; a new test file beside the tests' helpers changes nothing they run);
        - a file a recorded module builds from at run time (sources.BUILT_FROM: a new
          csrc_cpu/*.h where gpt_engine/cpu_q4.py is recorded);
        - for every story: a code file added at the repository root, or under a top-level
          directory the run's tree did not have, or a new top-level package's __init__.py (the
          root is first on sys.path: a root gguf.py or gguf/__init__.py is imported instead of
          the installed gguf, whatever the story's tests import it from)."""
        tree = run.get("source_tree")
        if tree is None:
            return []
        new = [f for f in self.tree.snapshot() if f not in tree]
        if not new:
            return []
        story = self.stories.get(sid)
        mine = [t for t in run["tests"] if sid in t["stories"]]
        globs = list(story.sources) if story is not None else []
        if any(t.get("device") not in ("cpu", None) for t in mine):
            globs += list(self.catalog.kernel_sources)
        out = set(_sources.expand(new, globs))
        out.update(_sources.built_from(run.get("story_files", {}).get(sid, []), new))
        tops = {f.split("/", 1)[0] for f in tree if "/" in f}
        for f in new:
            parts = f.split("/")
            if f.endswith(_CODE_SUFFIXES) and (len(parts) == 1 or parts[0] not in tops
                                               or parts[1:] == ["__init__.py"]):
                out.add(f)
        test_dirs = {_parent(t["nodeid"].split("::", 1)[0]) for t in mine}
        code_dirs = {_parent(f) for f in run.get("story_files", {}).get(sid, [])
                     if f.endswith(_CODE_SUFFIXES) and not f.rsplit("/", 1)[-1].startswith("test_") and "/" in f}
        for f in new:
            d = _parent(f)
            if f.rsplit("/", 1)[-1] == "conftest.py" and any(_under(td, d) for td in test_dirs):
                out.add(f)
            elif (f.endswith(_CODE_SUFFIXES) and not f.rsplit("/", 1)[-1].startswith("test_")
                  and any(_under(d, cd) for cd in code_dirs)):
                out.add(f)      # (a new test module shadows nothing a recorded module imports)
        return sorted(out)

    def stale_reason(self, run, sid) -> str:
        files, recorded = self._files(run, sid)
        changed, removed = self.tree.changes(recorded, files or [])
        added = self.added(run, sid)
        parts = [f"{label} {_few(fs)}" for label, fs in (("changed", changed), ("removed", removed),
                                                          ("added", added)) if fs]
        return ", ".join(parts) or "the run recorded no files for this story"

    def _records(self, run) -> dict:
        if run["_file"] not in self._index:
            self._index[run["_file"]] = {t["nodeid"]: t for t in run["tests"]}
        return self._index[run["_file"]]

    def _choose(self, sid: str, device: str, nodeids: list) -> dict:
        """nodeid -> ("fresh", record, run) | ("stale", record, run) | ("rejected", record, run) | None."""
        out = {}
        for nid in nodeids:
            best = None
            for run in self.runs:
                t = self._records(run).get(nid)
                if t is None or sid not in t["stories"] or not device_matches(device, t.get("device")):
                    continue
                if not self.audits[run["_file"]].counts:
                    best = best or ("rejected", t, run)
                elif self.fresh(run, sid):
                    best = ("fresh", t, run)
                    break
                elif best is None or best[0] == "rejected":
                    best = ("stale", t, run)
            out[nid] = best
        return out

    def _not_counted(self, chosen: dict) -> str:
        files = {c[2]["_file"]: c[2] for c in chosen.values() if c and c[0] == "rejected"}
        if not files:
            return ""
        f, run = sorted(files.items())[-1]
        a = self.audits[f]
        why = (a.tampered + a.reasons)[:2]
        return f"; evidence that does not count: {f} ({'; '.join(why)})"

    # ---------- criteria ----------
    def _also_ran(self, sid: str, device: str, keyword=None, benchmark=False) -> list[str]:
        """Tests of the story that a fresh, counted run recorded on the device but collection
        here did not produce (a test collected only where there is a GPU): they are judged too,
        so a failure there cannot hide outside the expected set."""
        out = set()
        for run in self.counting:
            if not self.fresh(run, sid):
                continue
            if benchmark:
                out.update(m["nodeid"] for m in run["benchmarks"]
                           if sid in m.get("stories", []) and device_matches(device, m.get("device")))
            else:
                out.update(t["nodeid"] for t in run["tests"] if sid in t["stories"]
                           and device_matches(device, t.get("device")) and (not keyword or keyword in t["nodeid"]))
        return sorted(out)

    def _tests(self, s: Story, c: Criterion) -> CritResult:
        expected = self.manifest.expected(s.id, c.device, c.keyword)
        expected += [n for n in self._also_ran(s.id, c.device, c.keyword) if n not in set(expected)]
        problems = self.manifest.problems_for(s.id)
        sel = f" matching '{c.keyword}'" if c.keyword else ""
        if not expected:
            if problems:
                return CritResult(c, "incomplete", "its tests cannot be known: " + _few(problems))
            return CritResult(c, "missing", f"no {c.device} test is marked {s.id}{sel} in the tree")
        chosen = self._choose(s.id, c.device, expected)
        fresh = {n: (t, r) for n, x in chosen.items() if x and x[0] == "fresh" for t, r in [x[1:]]}
        stale = {n: x[2] for n, x in chosen.items() if x and x[0] == "stale"}
        lacking = [n for n in expected if n not in fresh]
        bad = [(n, t) for n, (t, r) in fresh.items() if t["outcome"] in ("failed", "error", "xpassed")]
        skipped = [(n, t) for n, (t, r) in fresh.items() if t["outcome"] in ("skipped", "xfailed")]
        runs_used: dict[str, list] = {}
        for n, (t, r) in fresh.items():
            runs_used.setdefault(r["_file"], [r, []])[1].append(t)
        ev = [_run_ref(r, tests=len(ts), devices=sorted({t["device"] for t in ts}),
                       nodeids=sorted(t["nodeid"] for t in ts)[:SAMPLE_TESTS])
              for r, ts in sorted(runs_used.values(), key=lambda x: _ts(x[0]), reverse=True)]
        n = len(expected)
        counts = {"expected": n, "fresh": len(fresh), "passed": sum(t["outcome"] == "passed" for t, _ in fresh.values()),
                  "failing": len(bad), "skipped": len(skipped), "stale": len(stale), "lacking": len(lacking)}
        if bad:
            names = _few([f"{nid} {t['outcome']}" + (f" ({t['message']})" if t.get("message") else "") for nid, t in bad])
            return CritResult(c, "fail", f"{len(bad)}/{n} failing: {names}", ev, counts)
        if problems:
            return CritResult(c, "incomplete", f"the expected test set is incomplete: {_few(problems)}", ev, counts)
        if lacking:
            if not fresh:
                if stale:
                    run = max(stale.values(), key=_ts)
                    return CritResult(c, "stale", f"only stale evidence for the {n} {c.device} test(s){sel} ("
                                      + self.stale_reason(run, s.id) + f"); newest was {run['_file']}",
                                      [_run_ref(run)], counts)
                nodev = ""
                if c.device == "cuda":
                    nodev = " (CUDA tests that ran where there was no GPU count for nothing)"
                return CritResult(c, "missing", f"none of the {n} {c.device} test(s){sel} has a fresh record{nodev}"
                                  + self._not_counted(chosen), ev, counts)
            return CritResult(c, "incomplete", f"{len(lacking)} of {n} {c.device} test(s){sel} have no fresh record "
                              f"(not run, deselected or stale): {_few(lacking)}" + self._not_counted(chosen), ev, counts)
        if skipped:
            names = _few([f"{nid} ({t.get('skip_reason') or 'no reason'})" for nid, t in skipped])
            return CritResult(c, "skipped", f"{len(skipped)}/{n} skipped (a skip is not a pass): {names}", ev, counts)
        return CritResult(c, "pass", f"all {n} test(s) passed", ev, counts)

    def _where_ok(self, c: Criterion, params: dict) -> bool | None:
        """Whether a case is one the bar's `where` selects; None where a param cannot be compared
        with the bar's value (a string where a number belongs): such a case is a problem, never
        silently left out of the bar."""
        for key, cond in c.where.items():
            if key not in params:
                return False
            v = params[key]
            ops = cond if isinstance(cond, dict) else {"eq": cond}
            try:
                for op, x in ops.items():
                    if _kind(v) != _kind(x) or _kind(v) is None or (op != "eq" and _kind(v) != "number"):
                        return None
                    if not {"gt": v > x, "ge": v >= x, "lt": v < x, "le": v <= x, "eq": v == x}[op]:
                        return False
            except TypeError:
                return None
        return True

    def _bench(self, s: Story, c: Criterion) -> CritResult:
        tests = self.manifest.expected(s.id, c.device, benchmark_only=True)
        tests += [n for n in self._also_ran(s.id, c.device, benchmark=True) if n not in set(tests)]
        if not tests:
            return CritResult(c, "missing", f"no {c.device} benchmark test is marked {s.id} in the tree")
        chosen = self._choose(s.id, c.device, tests)
        fresh = [n for n in tests if chosen[n] and chosen[n][0] == "fresh"]
        lacking = [n for n in tests if n not in fresh]
        if lacking:
            stale = [x[2] for x in chosen.values() if x and x[0] == "stale"]
            if stale and len(lacking) == len(tests):
                run = max(stale, key=_ts)
                return CritResult(c, "stale", "only stale benchmark evidence (" + self.stale_reason(run, s.id)
                                  + f"); newest was {run['_file']}", [_run_ref(run)])
            state = "missing" if len(lacking) == len(tests) else "incomplete"
            why = (f"{len(lacking)} of {len(tests)} benchmark test(s) of {s.id} have no fresh record: {_few(lacking)}"
                   + self._not_counted(chosen))
            # A fresh case that misses a per-case bar, or is invalid, decides the criterion for the
            # code as it is now, whatever the tests without a fresh record would show; left
            # "incomplete", the story read as if only evidence were missing. A median needs every case.
            if fresh and c.aggregate != "median":
                cases, problems, _ = self._cases(s, c, fresh, chosen)
                if cases or problems:
                    got = self._judge(c, cases, problems)
                    if got.state in ("fail", "invalid"):
                        got.reason += f"; and {why}"
                        return got
            return CritResult(c, state, why)
        cases, problems, named = self._cases(s, c, tests, chosen)
        if not cases:
            if named and not problems:
                return CritResult(c, "missing", f"metric {c.metric} recorded, but no case satisfies where {c.where}")
            if not problems:
                return CritResult(c, "missing", f"the benchmark tests of {s.id} recorded no metric {c.metric} on {c.device}")
        return self._judge(c, cases, problems)

    def _cases(self, s: Story, c: Criterion, tests: list, chosen: dict) -> tuple[list, list, int]:
        """The (metric, test record, run) cases of c that tests' chosen records hold, the problems
        found on the way (a case lacking a param its `where` needs), and how many metrics matched
        c's name before the `where`."""
        cases, problems = [], []
        named = 0
        for nid in tests:
            _, t, run = chosen[nid]
            ms = [m for m in run["benchmarks"] if m.get("nodeid") == nid and s.id in m.get("stories", [])
                  and fnmatch.fnmatchcase(m["name"], c.metric) and device_matches(c.device, m.get("device"))]
            named += len(ms)
            for m in ms:
                lack = [k for k in c.where if k not in m.get("params", {})]
                if lack:
                    problems.append(f"{m['name']}: lacks param(s) {', '.join(lack)} that the bar's `where` needs")
                else:
                    ok = self._where_ok(c, m.get("params", {}))
                    if ok is None:
                        problems.append(f"{m['name']}: its params {m.get('params')} cannot be compared with the bar's"
                                        f" `where` {c.where}")
                    elif ok:
                        cases.append((m, t, run))
        return cases, problems, named

    def _judge(self, c: Criterion, cases: list, problems: list) -> CritResult:
        invalid = []
        by_run: dict[str, list] = {}
        ratios: dict[str, list] = {}
        for m, t, run in cases:
            refs = dict(m.get("references", {}))
            reasons = metric_problems(self.catalog.devices, run, m)
            if reasons:
                invalid.append(f"{m['name']}: {'; '.join(reasons)}")
            if t["outcome"] != "passed":
                problems.append(f"{m['name']}: its test {t['nodeid']} {t['outcome']}")
            case = {"name": m["name"], "value": m["value"], "unit": m["unit"], "kind": m["kind"],
                    "device": m.get("device"), "valid": not reasons, "params": m.get("params", {}),
                    "references": refs, "ratios": {}, "normalized": normalized(m)}
            for ref in {**c.min_ratio, **c.max_ratio}:
                rv = refs.get(ref)
                if not physics.positive(rv) or not physics.positive(m["value"]):
                    problems.append(f"{m['name']}: no reference '{ref}' measured in the run")
                    continue
                r = m["value"] / rv        # the bar is on value / reference, recomputed here
                case["ratios"][ref] = r
                ratios.setdefault(ref, []).append((r, m))
            by_run.setdefault(run["_file"], [run, []])[1].append(case)
        for bounds, ok, op in ((c.min_ratio, lambda r, x: r >= x, ">="), (c.max_ratio, lambda r, x: r <= x, "<=")):
            for ref, x in bounds.items():
                rs = ratios.get(ref, [])
                if c.aggregate == "median":
                    if rs and not ok(statistics.median(r for r, _ in rs), x):
                        problems.append(f"median {ref} ratio over {len(rs)} case(s) = {statistics.median(r for r, _ in rs):.3g}, needs {op} {x:g}")
                    continue
                for r, m in rs:
                    if not ok(r, x):
                        problems.append(f"{m['name']}: {m['value']:.4g} {m['unit']} / {ref} {m['references'][ref]:.4g} = {r:.3g}, needs {op} {x:g}")
        ev = [_run_ref(run, cases=cs) for run, cs in sorted(by_run.values(), key=lambda x: _ts(x[0]), reverse=True)]
        n = len(cases)
        if invalid:
            return CritResult(c, "invalid", f"{len(invalid)}/{n} invalid: " + _few(invalid), ev)
        if problems:
            return CritResult(c, "fail", f"{len(problems)} problem(s) in {n} case(s): " + _few(problems), ev)
        what = "the median case meets" if c.aggregate == "median" else f"{n} case(s) meet"
        return CritResult(c, "pass", f"{what} the bar", ev)

    def _unchecked(self, s: Story) -> list[CritResult]:
        """Tests marked with the story that no criterion of its card looks at (a failing CPU
        test relabelled `cuda` in a CPU-only story would otherwise vanish)."""
        out = []
        for dev in ("cpu", "cuda"):
            kws = [c.keyword for c in s.criteria if c.kind == "tests" and c.device == dev]
            left = [n for n in self.manifest.expected(s.id, dev)
                    if not any(kw is None or kw in n for kw in kws)]
            if left:
                c = Criterion("tests", dev, why="every test marked with the story is checked by a criterion")
                out.append(CritResult(c, "incomplete", f"{len(left)} {dev} test(s) marked {s.id} are checked by no "
                                      f"criterion of its card: {_few(left)}", counts={"unchecked": len(left)}))
        return out

    def criterion(self, s: Story, c: Criterion) -> CritResult:
        return self._tests(s, c) if c.kind == "tests" else self._bench(s, c)

    # ---------- stories ----------
    def story(self, sid: str) -> StoryResult:
        if sid in self._story_cache:
            return self._story_cache[sid]
        s = self.stories[sid]
        entry = self.catalog.stories.get(sid)
        card_problems = _catalog.card_problems(entry, s) if entry else []
        # only evidence that counts: a forged or rejected file must not turn not-started into
        # partial. Fresh or not: a stale run still shows the story was implemented (its
        # criteria say stale), only its proof is out of date.
        implemented = any(sid in t["stories"] for r in self.counting for t in r["tests"])
        if s.is_verdict:
            g = self.gate(s.verdict)
            members = [self.story(x) for x in self.catalog.stories_of_gate(s.verdict) if x in self.stories]
            member_status = {m.status for m in members}
            if g["verdict"] == "pass":
                status = "verified"
            elif "failing" in member_status or card_problems:
                status = "failing"
            elif "stale" in member_status:
                status = "stale"
            else:
                status = "partial" if any(m.implemented for m in members) else "not-started"
            res = StoryResult(s, status, [], implemented, False, card_problems)
        else:
            crits = [self.criterion(s, c) for c in s.criteria] + self._unchecked(s)
            states = [c.state for c in crits]
            cpu_tests = [c for c in crits if c.criterion.kind == "tests" and c.criterion.device == "cpu"]
            tested = bool(cpu_tests) and all(c.passed for c in cpu_tests)
            if card_problems or any(st in ("fail", "invalid") for st in states):
                status = "failing"
            elif all(st == "pass" for st in states):
                status = "verified"
            elif any(st == "stale" for st in states):
                status = "stale"
            elif not implemented and not any(st == "pass" for st in states):
                status = "not-started"
            elif all(cr.passed or cr.criterion.device == "cuda" for cr in crits) and any(
                    cr.passed and cr.criterion.device == "cpu" for cr in crits):
                status = "cpu-only"
            else:
                status = "partial"
            res = StoryResult(s, status, crits, implemented, tested, card_problems)
        self._story_cache[sid] = res
        return res

    def all_stories(self) -> list[StoryResult]:
        return [self.story(sid) for sid in self.stories]

    # ---------- gates ----------
    def gate(self, name: str) -> dict:
        if name in self._gate_cache:
            return self._gate_cache[name]
        g = GATES[name]
        ids = self.catalog.stories_of_gate(name)
        results = [self.story(sid) for sid in ids if sid in self.stories]
        blockers = []
        if g.upstream:
            up = self.gate(g.upstream)
            if up["verdict"] != "pass":
                blockers.append({"story": None, "criterion": f"upstream {g.upstream}", "state": "fail",
                                 "reason": f"upstream gate {g.upstream} does not pass ({len(up['blockers'])} blocker(s))"})
        if not ids:
            blockers.append({"story": None, "criterion": "stories", "state": "missing", "reason": f"the catalog has no story for {name}"})
        for sid in [*ids, *([g.verdict_story] if g.verdict_story else [])]:
            entry = self.catalog.stories.get(sid)
            if entry is None:
                continue
            for p in _catalog.card_problems(entry, self.stories.get(sid)):
                blockers.append({"story": sid, "criterion": "card", "state": "fail", "reason": p})
        for r in results:
            for cr in r.criteria:
                if not cr.passed:
                    blockers.append({"story": r.story.id, "criterion": cr.criterion.label, "state": cr.state, "reason": cr.reason})
        # an edited or deleted committed evidence file blocks every gate: dropping it from the
        # judgement would let the older evidence it replaced decide
        for msg in [*self.gone, *(t for r in self.runs for t in self.audits[r["_file"]].tampered)]:
            blockers.append({"story": None, "criterion": "evidence", "state": "fail", "reason": msg})
        doc = {
            "gate": name, "verdict": "fail" if blockers else "pass", "upstream": g.upstream,
            "sprints": list(g.sprints),
            "stories": [{"id": r.story.id, "title": r.story.title, "status": r.status, "card_problems": r.card_problems,
                         "criteria": [c.to_json() for c in r.criteria]} for r in results],
            "blockers": blockers,
            "evidence_files": [r["_file"] for r in self.runs],
            "evidence_audit": [self.audits[r["_file"]].to_json() for r in self.runs],
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
