"""pytest plugin: story markers (strictly validated), the `bench` fixture, evidence files.

Loaded through pyproject's pytest11 entry point when the package is installed, or with
`-p gates.pytest_plugin` where it is only on PYTHONPATH (the GPU machine). Do not pass
both: pluggy refuses one module under two names (gates.runner.plugin_args() picks one).

With pytest-xdist, workers attach each test's stories, device and metrics to their
reports (user_properties travel with the report); only the controller, which sees every
report, writes the one evidence file.
"""
from __future__ import annotations

import pytest
from _pytest.reports import CollectReport

from gates import cards as _cards
from gates import evidence as _evidence
from gates import provenance as _prov
from gates import sources as _sources
from gates.bench import Baselines, Bench
from gates.paths import resolve

RECORDER = "gpt_engine_evidence_recorder"
_PROP = "gpt_engine"


def pytest_addoption(parser):
    g = parser.getgroup("gpt_engine", "gpt-engine story evidence")
    g.addoption("--no-evidence", action="store_true", default=False,
                help="do not write an evidence file for this run")
    g.addoption("--evidence-dir", default=None,
                help="evidence folder (default $GPT_ENGINE_EVIDENCE_DIR or reports/evidence)")
    g.addoption("--stories-dir", default=None, help="story card folder (default stories/)")
    g.addoption("--repo-root", default=None, help="root that story `sources` globs are relative to")
    g.addoption("--story", action="append", default=[], dest="gpt_engine_story", metavar="ID",
                help="run only the tests marked with this story (repeatable)")


def pytest_configure(config):
    config.addinivalue_line("markers", "story(*ids): the story ids (GT-0xx / GX-0xx) this test proves")
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU; skipped (never passed) without one")
    config.addinivalue_line("markers", "benchmark: records metrics as evidence through the bench fixture")
    if not config.pluginmanager.has_plugin(RECORDER):
        config.pluginmanager.register(Recorder(config), RECORDER)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _item_stories(item) -> list[str]:
    ids = []
    for m in item.iter_markers("story"):
        ids.extend(m.args)
    return sorted(set(ids), key=ids.index)


def _skip_reason(report) -> str | None:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail}".rstrip(": ")
    lr = report.longrepr
    if isinstance(lr, (tuple, list)) and len(lr) == 3:
        msg = str(lr[2])
    else:
        msg = str(getattr(report, "longreprtext", "") or lr or "")
    return msg.removeprefix("Skipped: ").strip() or None


def _failure_message(report) -> str | None:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    msg = getattr(crash, "message", None)
    if not msg:
        lines = (getattr(report, "longreprtext", "") or "").strip().splitlines()
        msg = lines[-1] if lines else ""
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return first[:300] or None


class Recorder:
    def __init__(self, config):
        self.config = config
        self.paths = resolve(config.getoption("--repo-root"), config.getoption("--stories-dir"),
                             config.getoption("--evidence-dir"))
        self.enabled = not config.getoption("--no-evidence")
        self.baselines = Baselines()
        self._sent_baselines: set = set()
        self.pending: dict[str, list] = {}        # nodeid -> metrics not yet attached to a report
        self.tests: dict[str, dict] = {}
        self.metrics: list[dict] = []
        self.collection_errors: list[dict] = []
        self.run_baselines: dict = {}
        self.written = None
        self._cuda_name = None
        self.started = _evidence.utc_now()
        self.stories = None
        self.hashes = None

    # ---------- collection: strict marker validation ----------
    def _load_cards(self):
        if self.stories is None:
            try:
                self.stories = _cards.load_cards(self.paths.stories)
            except _cards.CardError as e:
                raise pytest.UsageError(str(e)) from None
        return self.stories

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        self.started = _evidence.utc_now()
        if not _is_worker(self.config):
            # A bad card stops the run here, in the controller, before any worker starts.
            stories = self._load_cards()
            if self.enabled:
                # Hash the tree at the start: the evidence describes the code that was tested.
                self.hashes = _sources.hash_stories(self.paths.root, stories)

    def pytest_collection_modifyitems(self, session, config, items):
        stories = self._load_cards()
        bad = []
        for item in items:
            problems = []
            marks = list(item.iter_markers("story"))
            if not marks:
                problems.append("no @pytest.mark.story(...) marker (every test proves a story)")
            for m in marks:
                if m.kwargs or not m.args:
                    problems.append("story marker needs story ids as positional arguments")
                for sid in m.args:
                    if sid not in stories:
                        problems.append(f"story {sid!r} has no card in {self.paths.stories}")
                    elif stories[sid].is_verdict:
                        problems.append(f"{sid} is the {stories[sid].verdict} verdict; it has no tests of its own")
            if problems:
                bad.append((item, problems))
        if bad:
            # Reported as collection errors (not an exception): plain pytest and pytest-xdist
            # alike then stop with "errors during collection" before running anything, unless
            # --continue-on-collection-errors asks to run the valid tests anyway.
            for item, problems in bad:
                rep = CollectReport(item.nodeid, "failed", "story marker: " + "; ".join(problems), [])
                session.ihook.pytest_collectreport(report=rep)
            dropped = {id(item) for item, _ in bad}
            items[:] = [item for item in items if id(item) not in dropped]
        wanted = set(config.getoption("gpt_engine_story") or [])
        if wanted:
            unknown = wanted - set(stories)
            if unknown:
                raise pytest.UsageError(f"--story: unknown story id(s) {sorted(unknown)}")
            keep, drop = [], []
            for item in items:
                (keep if wanted & set(_item_stories(item)) else drop).append(item)
            if drop:
                config.hook.pytest_deselected(items=drop)
                items[:] = keep
        if any(item.get_closest_marker("cuda") for item in items):
            import torch
            if not torch.cuda.is_available():
                skip = pytest.mark.skip(reason="needs CUDA: no NVIDIA GPU on this machine")
                for item in items:
                    if item.get_closest_marker("cuda"):
                        item.add_marker(skip)

    # ---------- per test (runs where the test runs: worker or single process) ----------
    def _device(self, item) -> str | None:
        if not item.get_closest_marker("cuda"):
            return "cpu"
        if self._cuda_name is None:
            import torch
            self._cuda_name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        return self._cuda_name or None   # None: a CUDA test on a machine without CUDA

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        payload = {"stories": _item_stories(item), "device": self._device(item)}
        # The Bench object holds this very list: copy and clear it in place, never replace it.
        metrics = self.pending.get(item.nodeid)
        if metrics:
            payload["metrics"] = list(metrics)
            metrics.clear()
        if call.when == "teardown":
            self.pending.pop(item.nodeid, None)
        new = {}
        for dev, vals in self.baselines.values.items():
            for k, v in vals.items():
                if (dev, k) not in self._sent_baselines:
                    self._sent_baselines.add((dev, k))
                    new.setdefault(dev, {})[k] = v
        if new:
            payload["baselines"] = new
        report.user_properties.append((_PROP, payload))

    # ---------- aggregation (controller or single process) ----------
    def pytest_runtest_logreport(self, report):
        if _is_worker(self.config):
            return
        payload = {}
        for k, v in report.user_properties:
            if k == _PROP:
                payload = v
        rec = self.tests.get(report.nodeid)
        if rec is None:
            rec = self.tests[report.nodeid] = {
                "nodeid": report.nodeid, "stories": list(payload.get("stories", [])),
                "outcome": None, "duration": 0.0, "device": payload.get("device", "cpu"),
                "skip_reason": None, "message": None}
        rec["duration"] = round(rec["duration"] + float(report.duration or 0.0), 6)
        if report.when in ("setup", "call"):
            if report.skipped:
                rec["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
                rec["skip_reason"] = _skip_reason(report)
            elif report.failed:
                rec["outcome"] = "error" if report.when == "setup" else "failed"
            elif report.when == "call":
                rec["outcome"] = "xpassed" if hasattr(report, "wasxfail") else "passed"
        elif report.failed:              # teardown failure spoils a pass
            rec["outcome"] = "error"
        if report.failed and not rec["message"]:
            rec["message"] = _failure_message(report)
        for m in payload.get("metrics", []):
            self.metrics.append({**m, "nodeid": report.nodeid, "stories": rec["stories"]})
        for dev, vals in payload.get("baselines", {}).items():
            self.run_baselines.setdefault(dev if dev == "cpu" else (rec["device"] or dev), {}).update(vals)

    def pytest_collectreport(self, report):
        if _is_worker(self.config) or not report.failed:
            return
        self.collection_errors.append({"nodeid": report.nodeid, "message": _failure_message(report)})

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if _is_worker(self.config) or not self.enabled or self.hashes is None:
            return
        if self.config.option.collectonly or not (self.tests or self.collection_errors):
            return      # nothing ran: an empty file would only be noise in the folder
        finished = _evidence.utc_now()
        prov = _prov.describe(self.paths.root)
        gpu_names = {t["device"] for t in self.tests.values() if t["device"] not in ("cpu", None)}
        if gpu_names and not prov.get("gpu_name"):
            prov["gpu_name"] = sorted(gpu_names)[0]
        prov["machine_class"] = _prov.machine_class(prov.get("gpu_name"))
        for t in self.tests.values():
            if t["outcome"] is None:
                t["outcome"] = "error"
                t["message"] = t["message"] or "no call phase was reported"
        hashes, members, files = self.hashes
        wi = getattr(self.config, "workerinput", None)
        numproc = getattr(self.config.option, "numprocesses", None)
        doc = {
            "schema": _evidence.SCHEMA_VERSION,
            "run": {
                "started": _evidence.iso(self.started), "finished": _evidence.iso(finished),
                "duration_s": round((finished - self.started).total_seconds(), 3),
                "exit_status": int(exitstatus), "args": [str(a) for a in self.config.invocation_params.args],
                "xdist_workers": numproc if numproc and wi is None else 0,
                "story_filter": list(self.config.getoption("gpt_engine_story") or []),
                "interrupted": int(exitstatus) == int(pytest.ExitCode.INTERRUPTED),
            },
            "provenance": prov,
            "baselines": self.run_baselines,
            "source_hashes": hashes,
            "story_files": members,
            "source_files": files,
            "tests": sorted(self.tests.values(), key=lambda t: t["nodeid"]),
            "benchmarks": self.metrics,
            "collection_errors": self.collection_errors,
        }
        self.written = _evidence.write(doc, self.paths.evidence)

    def pytest_terminal_summary(self, terminalreporter):
        if self.written is not None:
            terminalreporter.write_line(f"evidence: {self.written}")


@pytest.fixture
def bench(request):
    """Benchmark helper (see gates/bench.py); metrics land in this run's evidence file."""
    item = request.node
    if item.get_closest_marker("benchmark") is None:
        pytest.fail(f"{item.nodeid}: uses the bench fixture but is not marked @pytest.mark.benchmark", pytrace=False)
    rec = request.config.pluginmanager.get_plugin(RECORDER)
    sink = rec.pending.setdefault(item.nodeid, [])
    dev = "cuda" if item.get_closest_marker("cuda") else "cpu"
    return Bench(dev, rec.baselines, sink, device_name=rec._device(item) if dev == "cuda" else None)
