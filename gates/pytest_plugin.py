"""pytest plugin: story markers (strictly validated), the `bench` fixture, one evidence file
per run, and the expected test set (--write-manifest).

The harness's runners load it with `-p gates.pytest_plugin` and PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
(gates/runner.py), so that a run's plugins are exactly pytest's own, xdist and this one: the
evidence lists every plugin and conftest that was active, and the verdict refuses runs with
others (gates/audit.py). A plain `pytest` in the venv still loads it through pyproject's
pytest11 entry point; its evidence then names the third-party plugins that came along.

With pytest-xdist, workers attach each test's stories, device, metrics and used files to
their reports (user_properties travel with the report) and send their plugin list at the
end (workeroutput); only the controller, which sees every report, writes the evidence file.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import pytest
from _pytest.reports import CollectReport

from gates import cards as _cards
from gates import catalog as _catalog
from gates import evidence as _evidence
from gates import provenance as _prov
from gates import sources as _sources
from gates import tracer as _tracer
from gates.bench import Baselines, Bench
from gates.paths import resolve

RECORDER = "gpt_engine_evidence_recorder"
_PROP = "gpt_engine"
STORY_REF = re.compile(r"\b(G[TX]-\d{3})\b")
TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")


def pytest_addoption(parser):
    g = parser.getgroup("gpt_engine", "gpt-engine story evidence")
    g.addoption("--no-evidence", action="store_true", default=False,
                help="do not write an evidence file for this run")
    g.addoption("--evidence-dir", default=None,
                help="evidence folder (default $GPT_ENGINE_EVIDENCE_DIR or reports/evidence)")
    g.addoption("--stories-dir", default=None, help="story card folder (default stories/)")
    g.addoption("--repo-root", default=None, help="the repository whose files are the sources")
    g.addoption("--story", action="append", default=[], dest="gpt_engine_story", metavar="ID",
                help="run only the tests marked with this story (repeatable)")
    g.addoption("--write-manifest", default=None, metavar="PATH",
                help="collect only and write the expected test set (gates/manifest.py) to PATH")


def pytest_configure(config):
    config.addinivalue_line("markers", "story(*ids): the story ids (GT-0xx / GX-0xx) this test proves")
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU; skipped (never passed) without one")
    config.addinivalue_line("markers", "benchmark: records metrics as evidence through the bench fixture")
    if not config.pluginmanager.has_plugin(RECORDER):
        config.pluginmanager.register(Recorder(config), RECORDER)
    if not config.pluginmanager.has_plugin(HOLD_INTERRUPTS):
        config.pluginmanager.register(HoldInterrupts(), HOLD_INTERRUPTS)


HOLD_INTERRUPTS = "gates-hold-interrupts"


class HoldInterrupts:
    """Holds a SIGINT while pytest_runtest_logreport runs and raises it when the hook returns.

    gates.gpu stops a run at its time limit with SIGINT (a KeyboardInterrupt in pytest). Raised
    inside the report hook, after the terminal reporter's implementation (which puts the phase's
    outcome in the log) and before the Recorder's (trylast: the JSON's), it left the two
    disagreeing on the test in flight, and the audit then refused the log (one CI failure of
    tests/harness/test_gpu.py::test_a_time_limit_still_leaves_a_complete_log, session 32). The
    interrupt still stops the run; it only waits until every implementation has seen the report.
    Installed only over Python's default handler, in the main thread (a SIGINT that was ignored or
    handled by someone else stays so)."""

    def __init__(self):
        self.holding = False
        self.pending = False
        self.installed = False

    def _on_sigint(self, signum, frame):
        if self.holding:
            self.pending = True
            return
        signal.default_int_handler(signum, frame)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._on_sigint)
            self.installed = True

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config):
        if self.installed and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.installed = False

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report):
        self.holding = True
        try:
            return (yield)
        finally:
            self.holding = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _item_stories(item) -> list[str]:
    ids = []
    for m in item.iter_markers("story"):
        ids.extend(m.args)
    return sorted(set(ids), key=ids.index)


# From the best outcome to the worst: a test's record keeps the worst any of its reports gave.
OUTCOME_RANK = {"passed": 0, "xfailed": 1, "skipped": 2, "xpassed": 3, "failed": 4, "error": 5}


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


def _raw_outcome(call) -> str:
    """What the phase itself did, before any plugin's report hook could restate it."""
    if call.excinfo is None:
        return "passed"
    return "skipped" if call.excinfo.errisinstance(pytest.skip.Exception) else "failed"


def marker_problems(item, catalog) -> list[str]:
    """Why an item's story markers are unacceptable ([] when they are fine)."""
    problems = []
    marks = list(item.iter_markers("story"))
    if not marks:
        problems.append("no @pytest.mark.story(...) marker (every test proves a story)")
    for m in marks:
        if m.kwargs or not m.args:
            problems.append("story marker needs story ids as positional arguments")
        for sid in m.args:
            entry = catalog.stories.get(sid)
            if entry is None:
                problems.append(f"story {sid!r} is not in the story catalog ({catalog.path.name})")
            elif entry.verdict:
                problems.append(f"{sid} is the {entry.verdict} verdict; it has no tests of its own")
    return problems


def plugin_facts(config, root: Path) -> list[dict]:
    """Every registered plugin: its module (or its class's, or the class itself when a class was
    registered), and its file when it is a module.
    in_repo: the file is one of the repository's sources (not the venv inside it)."""
    pats = _sources.gitignore_patterns(root)
    out = []
    for _name, p in config.pluginmanager.list_name_plugin():
        if p is None:
            continue
        f = getattr(p, "__file__", None)
        if f:
            path = Path(f).resolve()
            rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
            mine = rel is not None and _sources.counts(rel) and not _sources.ignored(rel, pats)
            out.append({"module": getattr(p, "__name__", "?"), "file": rel if mine else str(path), "in_repo": mine})
        elif isinstance(p, type):  # a class registered as the plugin itself (pytest's legacypath does this)
            out.append({"module": f"{p.__module__}.{p.__qualname__}", "file": None, "in_repo": False})
        else:
            out.append({"module": f"{type(p).__module__}.{type(p).__qualname__}", "file": None, "in_repo": False})
    return out


def shadowed_modules(root: Path) -> list[str]:
    """Imported modules named like one of the repository's modules but loaded from another file:
    a patched copy put first on sys.path, a stale installed copy of the package, a copy inside
    the root where sources are never counted (build/), a compiled module or a package beside the
    repository's .py (Python prefers both). The evidence would name the repository's file while
    the tests ran another."""
    root = Path(root).resolve()
    pats = _sources.gitignore_patterns(root)
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or name == "__main__":
            continue
        try:
            path = Path(f).resolve()
        except (OSError, RuntimeError):
            continue
        parts = name.split(".")
        mine = [rel for rel in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py")
                if _sources.is_source(rel, pats) and (root / rel).is_file()]
        if mine and path not in {(root / rel).resolve() for rel in mine}:
            out.append(f"{name} from {path} (the repository's is {mine[0]})")
    return sorted(out)


# Environment variables that can change what the engine, torch, CUDA or the interpreter does:
# every one set when the run starts is recorded with it (the audit refuses the engine's own
# settings other than the harness's, gates/audit.py ENGINE_ENV_OK; the rest is for the reader).
ENV_PREFIXES = ("GPT_ENGINE_", "GPTE_", "PYTHON", "PYTEST_", "CUBLAS", "CUDA_", "NVIDIA_", "NVCC_", "PYTORCH_",
                "TORCH_", "OMP_", "MKL_", "TOKENIZERS_", "FORCE_COLOR", "PY_COLORS", "NO_COLOR")


def env_facts() -> dict:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def conftests_on_path(nodeids, known) -> set[str]:
    """The repository conftest.py files pytest loads for these tests: one in every directory from
    the root down to each test module's (the root's own included)."""
    out = set()
    for nid in nodeids:
        parts = nid.split("::", 1)[0].split("/")[:-1]
        for i in range(len(parts) + 1):
            f = "/".join([*parts[:i], "conftest.py"])
            if f in known:
                out.add(f)
    return out


_DEFINES_TESTS = re.compile(r"^\s*(?:async\s+)?def test|^\s*class Test", re.M)


def _defines_tests(path: Path) -> bool:
    """Whether a test file's text defines a test function or class (a helper module named
    test_*.py, such as tests/test_tokenizer_oracles.py, defines none)."""
    try:
        return bool(_DEFINES_TESTS.search(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return True


def _pytest_name(name: str, patterns) -> bool:
    """pytest's rule for python_functions / python_classes: a prefix, or a glob."""
    return any(name.startswith(p) or (any(c in p for c in "*?[") and fnmatch.fnmatch(name, p)) for p in patterns)


def _story_ids(exprs, aliases: dict) -> set:
    """The story ids written as string literals in the `story(...)` marks among these decorator or
    `pytestmark` expressions, through module-level names bound to such marks (STORY = ...)."""
    ids = set()
    for expr in exprs:
        for node in ast.walk(expr):
            if isinstance(node, ast.Name) and node.id in aliases:
                ids |= aliases[node.id]
            elif isinstance(node, ast.Call):
                f = node.func
                if (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)) == "story":
                    ids |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return ids


def _pytestmark(body) -> list:
    """The expressions assigned to `pytestmark` in a module or class body."""
    out = []
    for st in body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in st.targets):
            out.append(st.value)
        elif isinstance(st, (ast.AnnAssign, ast.AugAssign)) and isinstance(st.target, ast.Name) \
                and st.target.id == "pytestmark" and st.value is not None:
            out.append(st.value)
    return out


def _is_fixture(fn) -> bool:
    """Decorated with `fixture`, `pytest.fixture` or `pytest.fixture(...)`."""
    for d in fn.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == "fixture":
            return True
    return False


def defined_tests(text: str, functions=("test",), classes=("Test",)) -> list[tuple]:
    """The tests a test module's source defines, as pytest would collect them by name (its
    python_functions / python_classes; fixtures are not tests): (class name or None, function
    name, {story ids its marks name}) for every top-level test function and every test method of
    a top-level test class (nested test classes too). The ids are those written as literals in
    its own decorators, its classes' decorators or `pytestmark`, or the module's `pytestmark`,
    also through a module-level name bound to a story mark; {} when none is written so."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    aliases: dict[str, set] = {}
    for st in tree.body:                 # STORY = pytest.mark.story("GT-040"), MARKS = [STORY, ...]
        if isinstance(st, ast.Assign):
            ids = _story_ids([st.value], aliases)
            for t in st.targets:
                if isinstance(t, ast.Name) and ids:
                    aliases[t.id] = ids
    out = []

    def walk(body, cls, inherited):
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)) and _pytest_name(st.name, functions) \
                    and not _is_fixture(st):
                out.append((cls, st.name, inherited | _story_ids(st.decorator_list, aliases)))
            elif isinstance(st, ast.ClassDef) and _pytest_name(st.name, classes):
                walk(st.body, st.name, inherited | _story_ids([*st.decorator_list, *_pytestmark(st.body)], aliases))

    walk(tree.body, None, _story_ids(_pytestmark(tree.body), aliases))
    return out


def options_facts(config, root: Path) -> dict:
    o = config.option
    ini = config.inipath
    cut = getattr(config.known_args_namespace, "confcutdir", None) or getattr(o, "confcutdir", None)
    try:
        cut = Path(cut).resolve().relative_to(root).as_posix() if cut else None
    except ValueError:
        cut = str(cut)
    return {
        "args": [str(a) for a in config.invocation_params.args],
        "addopts_env": os.environ.get("PYTEST_ADDOPTS") or None,
        "plugin_autoload": os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") is None,
        "inifile": (ini.relative_to(root).as_posix() if ini and ini.is_relative_to(root) else (str(ini) if ini else None)),
        "rootdir_is_repo": Path(config.rootpath).resolve() == root,
        "override_ini": list(getattr(o, "override_ini", None) or []),
        "pythonwarnings": list(getattr(o, "pythonwarnings", None) or []),
        "importmode": getattr(o, "importmode", None),
        "assertmode": getattr(o, "assertmode", None),
        "noconftest": bool(getattr(o, "noconftest", False)),
        "runxfail": bool(getattr(o, "runxfail", False)),
        # a test file given twice runs its tests twice under the same ids
        "keepduplicates": bool(getattr(o, "keepduplicates", False)),
        # conftests above this folder are not loaded; pytest's own default is the ini file's folder
        "confcutdir": cut,
        # -O / PYTHONOPTIMIZE: plain asserts outside the test modules pytest rewrites are removed
        "optimize": sys.flags.optimize,
        "usepdb": bool(getattr(o, "usepdb", False)),
        "trace": bool(getattr(o, "trace", False)),
        "inifilename": getattr(o, "inifilename", None),
        "p": list(getattr(o, "plugins", None) or []),
    }


class Recorder:
    def __init__(self, config):
        self.config = config
        self.paths = resolve(config.getoption("--repo-root"), config.getoption("--stories-dir"),
                             config.getoption("--evidence-dir"))
        self.root = self.paths.root
        self.manifest_out = config.getoption("--write-manifest")
        self.enabled = not config.getoption("--no-evidence") and not self.manifest_out
        self.baselines = Baselines()
        self._sent_baselines: set = set()
        self.pending: dict[str, list] = {}        # nodeid -> metrics not yet attached to a report
        self.tests: dict[str, dict] = {}
        self.metrics: list[dict] = []
        self.collection_errors: list[dict] = []
        self.run_baselines: dict = {}
        self.written = None
        self.written_sha = None
        self._cuda_name = None
        self.started = _evidence.utc_now()
        self.env = env_facts()                     # as the run was started (a test may set its own)
        self.stories = None
        self.catalog = None
        self.snapshot = None
        self.git = None
        # where tests run: what they used
        self._pats = _sources.gitignore_patterns(self.root)
        self._module_files: dict[str, set] = {}    # test module path -> data files its import opened
        self._fixture_files: dict = {}             # FixtureDef -> files its setup used
        self._test_scope = None
        self._raw: dict[str, str] = {}             # nodeid -> worst raw phase outcome seen
        self.rewritten: list[str] = []
        self.worker_facts: list[dict] = []
        self.deselected = 0
        self.selected = 0
        # --write-manifest
        self._items: list = []
        self._collected_modules: set = set()
        self._manifest_problems: list[dict] = []

    # ---------- cards ----------
    def _load_cards(self):
        if self.stories is None:
            try:
                self.stories = _cards.load_cards(self.paths.stories)
                self.catalog = _catalog.load(self.root)
                unknown = _catalog.unknown_cards(self.catalog, self.stories)
                if unknown:
                    raise _cards.CardError("; ".join(unknown))
            except _cards.CardError as e:
                raise pytest.UsageError(str(e)) from None
        return self.stories

    def _rel(self, path: str) -> str | None:
        p = Path(path)
        try:
            rel = p.relative_to(self.root).as_posix() if p.is_absolute() else None
        except ValueError:
            return None
        if rel and _sources.counts(rel) and not _sources.ignored(rel, self._pats):
            return rel
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        self.started = _evidence.utc_now()
        if _is_worker(self.config):
            return
        # A bad card stops the run here, in the controller, before any worker starts.
        stories = self._load_cards()
        if self.enabled or self.manifest_out:
            # Hash the tree at the start: the evidence describes the code that was tested.
            self.snapshot = _sources.snapshot(self.root)
            for s in stories.values():      # a glob that matches nothing stops the run
                try:
                    _sources.card_files(self.snapshot, s)
                except _cards.CardError as e:
                    raise pytest.UsageError(str(e)) from None
        if self.enabled:
            self.git = _prov.git_state(self.root)

    # ---------- collection ----------
    def pytest_itemcollected(self, item):
        if self.manifest_out:
            self._items.append(item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        """Data files a test module opens while it is imported belong to its tests."""
        if not (self.enabled and isinstance(collector, pytest.Module)):
            yield
            return
        tr = _tracer.start()
        scope = tr.begin(code=False)
        try:
            yield
        finally:
            tr.end(scope, collector.nodeid, code=False)
            self._module_files[collector.nodeid] = {r for r in map(self._rel, scope) if r}

    def pytest_collection_modifyitems(self, session, config, items):
        self._load_cards()
        known = set(self.catalog.stories)
        bad = [(item, p) for item in items if (p := marker_problems(item, self.catalog))]
        if bad:
            # Reported as collection errors (not an exception): plain pytest and pytest-xdist
            # alike then stop with "errors during collection" before running anything, unless
            # --continue-on-collection-errors asks to run the valid tests anyway.
            for item, problems in bad:
                rep = CollectReport(item.nodeid, "failed", "story marker: " + "; ".join(problems), [])
                session.ihook.pytest_collectreport(report=rep)
            dropped = {id(item) for item, _ in bad}
            items[:] = [item for item in items if id(item) not in dropped]
        if self.manifest_out:
            return
        wanted = set(config.getoption("gpt_engine_story") or [])
        if wanted:
            unknown = wanted - known
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

    def pytest_deselected(self, items):
        self.deselected += len(items)

    def pytest_collection_finish(self, session):
        self.selected = len(session.items)

    # ---------- per test (runs where the test runs: worker or single process) ----------
    def _device(self, item) -> str | None:
        if not item.get_closest_marker("cuda"):
            return "cpu"
        if self._cuda_name is None:
            import torch
            self._cuda_name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        return self._cuda_name or None   # None: a CUDA test on a machine without CUDA

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        if self.enabled:
            self._test_scope = _tracer.start().begin()
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        if not self.enabled or self._test_scope is None:
            yield
            return
        tr = _tracer.start()
        scope = tr.begin()
        try:
            yield
        finally:
            tr.end(scope, f"fixture {fixturedef.argname}")
            self._fixture_files.setdefault(fixturedef, set()).update(scope)
            self._test_scope |= scope

    def _used_files(self, item, scope) -> list[str]:
        files = set(scope)
        info = getattr(item, "_fixtureinfo", None)
        for defs in (getattr(info, "name2fixturedefs", None) or {}).values():
            for fd in defs:
                files |= self._fixture_files.get(fd, set())
                code = getattr(getattr(fd, "func", None), "__code__", None)
                if code is not None:       # the file defining a fixture it requested (a conftest)
                    files.add(code.co_filename)
        rels = {r for r in map(self._rel, files) if r}
        module = item.nodeid.split("::", 1)[0]
        rels |= self._module_files.get(module, set())
        mod_rel = self._rel(str(item.path))
        if mod_rel:
            rels.add(mod_rel)
        return sorted(rels)

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_makereport(self, item, call):
        # trylast: the innermost wrapper, so `call` and the report are seen before any other
        # plugin's wrapper restates them; the controller compares the final report with this.
        outcome = yield
        report = outcome.get_result()
        payload = {"stories": _item_stories(item), "device": self._device(item), "raw": _raw_outcome(call)}
        # The Bench object holds this very list: copy and clear it in place, never replace it.
        metrics = self.pending.get(item.nodeid)
        if metrics:
            payload["metrics"] = list(metrics)
            metrics.clear()
        if call.when == "teardown":
            self.pending.pop(item.nodeid, None)
            if self.enabled and self._test_scope is not None:
                scope = _tracer.start().end(self._test_scope, item.nodeid)
                self._test_scope = None
                payload["files"] = self._used_files(item, scope)
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
    @pytest.hookimpl(trylast=True)
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
                "skip_reason": None, "message": None, "_files": set()}
        rec["duration"] = round(rec["duration"] + float(report.duration or 0.0), 6)
        raw = payload.get("raw")
        if raw != "passed" and report.passed and not hasattr(report, "wasxfail"):
            # a phase that raised was reported as passed: some hook rewrote it
            self.rewritten.append(f"{report.nodeid} ({report.when}: {raw or 'no raw outcome'} reported as passed)")
        new = None
        if report.when in ("setup", "call"):
            if report.skipped:
                new = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            elif report.failed:
                new = "error" if report.when == "setup" else "failed"
            elif report.when == "call":
                new = "xpassed" if hasattr(report, "wasxfail") else "passed"
        elif report.failed:              # teardown failure spoils a pass
            new = "error"
        # The worst outcome of the id stands. In one run of a test the phases only ever make it worse
        # (setup or call decide, a failing teardown makes it an error), so this is the phases' own
        # rule; a test run twice under one id (--keep-duplicates, a hook that repeats items) must not
        # have a later pass hide an earlier failure.
        if new is not None and OUTCOME_RANK[new] >= OUTCOME_RANK.get(rec["outcome"], -1):
            rec["outcome"] = new
            if new in ("skipped", "xfailed"):
                rec["skip_reason"] = _skip_reason(report)
        if report.failed and not rec["message"]:
            rec["message"] = _failure_message(report)
        rec["_files"].update(payload.get("files", []))
        for m in payload.get("metrics", []):
            self.metrics.append({**m, "nodeid": report.nodeid, "stories": rec["stories"]})
        for dev, vals in payload.get("baselines", {}).items():
            self.run_baselines.setdefault(dev if dev == "cpu" else (rec["device"] or dev), {}).update(vals)

    def pytest_collectreport(self, report):
        if self.manifest_out and report.nodeid.endswith(".py") and "::" not in report.nodeid:
            self._collected_modules.add(report.nodeid)
            if report.outcome in ("skipped", "failed"):
                what = "skipped at collection" if report.skipped else "could not be collected"
                self._manifest_problems.append({"path": report.nodeid, "problem": what,
                                                "reason": _skip_reason(report) if report.skipped else _failure_message(report)})
        if _is_worker(self.config) or not report.failed:
            return
        self.collection_errors.append({"nodeid": report.nodeid, "message": _failure_message(report)})

    # ---------- end of the run ----------
    def _facts(self) -> dict:
        tr = _tracer._ACTIVE
        return {"plugins": plugin_facts(self.config, self.root), "displaced": list(tr.displaced) if tr else [],
                "deselected": self.deselected, "selected": self.selected, "shadowed": shadowed_modules(self.root),
                "optimize": sys.flags.optimize, "env": env_facts()}

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        facts = getattr(node, "workeroutput", {}).get(_PROP)
        if facts:
            self.worker_facts.append(facts)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if _is_worker(self.config):
            self.config.workeroutput[_PROP] = self._facts()
            return
        if self.manifest_out:
            self._write_manifest()
            return
        if not self.enabled or self.snapshot is None:
            return
        if self.config.option.collectonly or not (self.tests or self.collection_errors):
            return      # nothing ran: an empty file would only be noise in the folder
        self._write_evidence(exitstatus)

    def _write_evidence(self, exitstatus):
        finished = _evidence.utc_now()
        prov = _prov.describe(self.root, self.git)
        gpu_names = {t["device"] for t in self.tests.values() if t["device"] not in ("cpu", None)}
        if gpu_names and not prov.get("gpu_name"):
            prov["gpu_name"] = sorted(gpu_names)[0]
        prov["machine_class"] = _prov.machine_class(prov.get("gpu_name"))
        facts = [self._facts(), *self.worker_facts]
        plugins = {(p["module"], p["file"], p["in_repo"]) for f in facts for p in f["plugins"]}
        repo_plugins = sorted(p[1] for p in plugins if p[2])
        known = self.snapshot
        imports = _sources.Imports(self.root, known)
        loaded = {p[1] for p in plugins if p[2]}
        conftests_missing = sorted(conftests_on_path(self.tests, known) - loaded)
        env = dict(self.env)
        for f in facts:          # a worker's environment, where it differs (it should not)
            env.update({k: v for k, v in f.get("env", {}).items() if env.get(k) != v})
        story_files, used_by_story, cuda_stories = {}, {}, set()
        for t in self.tests.values():
            if t["outcome"] is None:
                t["outcome"] = "error"
                t["message"] = t["message"] or "no call phase was reported"
            for sid in t["stories"]:
                used_by_story.setdefault(sid, set()).update(t["_files"])
                if t["device"] not in ("cpu", None):
                    cuda_stories.add(sid)
        for sid, used in sorted(used_by_story.items()):
            story_files[sid] = _sources.story_files(known, imports, used, self.stories.get(sid), sid in cuda_stories,
                                                    repo_plugins, self.catalog.kernel_sources)
        files = {f: known[f] for fs in story_files.values() for f in fs}
        modified = sorted(f for f in files if self._sha_now(f) != files[f])
        if modified:
            prov["dirty"] = True     # the tested files changed while the tests ran
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
                "selected": max([f["selected"] for f in facts] or [0]),
                "deselected": max([f["deselected"] for f in facts] or [0]),
                "modified_during_run": modified,
            },
            "pytest": {**options_facts(self.config, self.root),
                       "optimize": max([sys.flags.optimize, *(f.get("optimize", 0) for f in facts)]),
                       "env": env,
                       "conftests_not_loaded": conftests_missing,
                       "plugins": [{"module": m, "file": f, "in_repo": r} for m, f, r in sorted(plugins, key=str)],
                       "tracer_displaced": sorted({d for f in facts for d in f["displaced"]}),
                       "rewritten": sorted(self.rewritten),
                       "shadowed": sorted({m for f in facts for m in f.get("shadowed", [])})},
            "provenance": prov,
            "baselines": self.run_baselines,
            "source_hashes": {sid: _sources.combine({f: known[f] for f in fs}) for sid, fs in story_files.items()},
            # every source of the tree when the run started, used or not: the audit compares it with
            # the commit's (an untracked, edited or missing file anywhere makes the run not count)
            "source_tree": dict(known),
            "story_files": story_files,
            "source_files": dict(sorted(files.items())),
            "tests": sorted(({k: v for k, v in t.items() if k != "_files"} for t in self.tests.values()),
                            key=lambda t: t["nodeid"]),
            "benchmarks": self.metrics,
            "collection_errors": self.collection_errors,
        }
        self.written = _evidence.write(doc, self.paths.evidence)
        self.written_sha = hashlib.sha256(self.written.read_bytes()).hexdigest()

    def _sha_now(self, rel):
        p = self.root / rel
        return _sources.file_sha256(p) if p.is_file() else None

    def _write_manifest(self):
        """The expected test set (gates/manifest.py): every item collected, before any
        deselection, and every test file that produced no items."""
        self._load_cards()
        known_ids = set(self.catalog.stories)
        items, problems = [], list(self._manifest_problems)
        for item in self._items:
            bad = marker_problems(item, self.catalog)
            if bad:
                problems.append({"path": item.nodeid, "problem": "has a bad story marker", "reason": "; ".join(bad)})
                continue
            items.append({"nodeid": item.nodeid, "stories": _item_stories(item),
                          "cuda": item.get_closest_marker("cuda") is not None,
                          "benchmark": item.get_closest_marker("benchmark") is not None})
        with_items = {item.nodeid.split("::", 1)[0] for item in self._items}
        for rel in self.snapshot:
            if rel.startswith("tests/") and TEST_FILE.search(rel) and rel not in self._collected_modules:
                problems.append({"path": rel, "problem": "was not collected", "reason": "ignored by an option or a conftest"})
            elif (rel.startswith("tests/") and TEST_FILE.search(rel) and rel not in with_items
                  and not any(p["path"].split("::", 1)[0] == rel for p in problems) and _defines_tests(self.root / rel)):
                # it defines tests, was collected, and gave none: `__test__ = False`, a collection hook
                problems.append({"path": rel, "problem": "collected no test although it defines some",
                                 "reason": "__test__ = False or a collection hook"})
        problems += self._uncollected_tests(known_ids, {p["path"].split("::", 1)[0] for p in problems})
        for p in problems:
            if p.get("stories"):
                continue                     # the stories the uncollected test itself names
            path = p["path"].split("::", 1)[0]
            try:
                text = (self.root / path).read_text(encoding="utf-8")
                ids = sorted(set(STORY_REF.findall(text)) & known_ids)
            except (OSError, UnicodeDecodeError):
                ids = []
            p["stories"] = ids or None       # None: it names no story, so every story is incomplete
        doc = {"items": sorted(items, key=lambda x: x["nodeid"]), "problems": problems}
        out = Path(self.manifest_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".partial")
        tmp.write_text(json.dumps(doc, indent=0) + "\n")
        os.replace(tmp, out)

    def _uncollected_tests(self, known_ids, reported) -> list[dict]:
        """Tests a collected module defines that gave no item: `test_x.__test__ = False`, a class
        with `__init__`, a collection hook dropping one item. The module itself collected other
        tests, so the file-level checks see nothing. Every test must carry a story mark, so a test
        definition pytest would collect by its name but did not is hidden, marked or not (a mark
        can come through any expression; the ids are read where they are literals, else the
        file's). An item matches a definition by its module, its function's own name
        (originalname: every parametrization of it) and, for a method, a class of its class's MRO
        (a base class's tests run under its subclasses)."""
        seen = set()
        for item in self._items:
            rel = item.nodeid.split("::", 1)[0]
            name = getattr(item, "originalname", None) or item.name.split("[", 1)[0]
            cls = getattr(item, "cls", None)
            if cls is None:
                seen.add((rel, None, name))
            else:
                seen.update((rel, c.__name__, name) for c in cls.__mro__)
        functions = self.config.getini("python_functions") or ["test"]
        classes = self.config.getini("python_classes") or ["Test"]
        out = []
        for rel in sorted(self._collected_modules - reported):
            if not (rel.startswith("tests/") and TEST_FILE.search(rel)):
                continue
            try:
                text = (self.root / rel).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for cls, name, ids in defined_tests(text, functions, classes):
                if (rel, cls, name) in seen:
                    continue
                out.append({"path": f"{rel}::{cls + '::' if cls else ''}{name}",
                            "problem": "defines a test that was not collected",
                            "reason": "__test__ = False, a test class with __init__, or a collection hook",
                            "stories": sorted(set(ids) & known_ids) or None})
        return out

    def pytest_terminal_summary(self, terminalreporter):
        if self.written is not None:
            # the raw log carries the evidence file's hash: the two vouch for each other
            terminalreporter.write_line(f"evidence: {self.written} sha256={self.written_sha}")


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
