"""Synthetic repositories for the harness's own tests: a git repository with the harness's
code, a catalog, cards, real (trivial) test files and evidence.

Nothing is mocked on the verdict's side: the expected test set is collected from the test
files by pytest, the audit asks git, and freshness hashes the files. Fabricated evidence is
built the way the plugin builds it (gates.sources.story_files over the tree as committed),
and GPU evidence gets a raw log that vouches for it, so a test that breaks one thing sees
exactly that thing caught. Nothing here imports the engine.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gates import cards, evidence, sources
from gates.paths import resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU = "NVIDIA H100 80GB HBM3"
GPU_CLASS = "nvidia-h100-80gb-hbm3"
GPU_BASELINE = {"copy_gbps": 3000.0, "matmul_tflops": 700.0}

PYPROJECT = '''[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "--strict-markers -ra"
markers = [
    "benchmark: records metrics",
    "cuda: needs an NVIDIA GPU",
]
'''


def card(sid, sprint, gate, sources_=(), criteria=(), verdict=None, title=None) -> str:
    lines = [f'id = "{sid}"', f'title = "{title or "synthetic " + sid}"',
             f"sprint = {sprint!r}".replace("'", '"'), f'gate = "{gate}"', 'description = "synthetic story"',
             "sources = [" + ", ".join(f'"{s}"' for s in sources_) + "]"]
    if verdict:
        lines.append(f'verdict = "{verdict}"')
    for c in criteria:
        lines.append("\n[[criteria]]")
        lines.append(textwrap.dedent(c).strip())
    return "\n".join(lines) + "\n"


TESTS_CPU = 'kind = "tests"\ndevice = "cpu"'
TESTS_CUDA = 'kind = "tests"\ndevice = "cuda"'
BENCH_LN = 'kind = "benchmark"\ndevice = "cuda"\nmetric = "layernorm.fp16"\nmin_ratio = { copy = 0.8, torch = 2.0 }'


def git(root, *args) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


class Repo:
    """A tmp repository: gates/ (the harness), stories/, tests/, reports/evidence/, git."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "stories").mkdir(parents=True, exist_ok=True)
        (self.root / "reports" / "evidence").mkdir(parents=True, exist_ok=True)
        (self.root / "gates").mkdir(exist_ok=True)
        for p in (REPO_ROOT / "gates").glob("*.py"):
            shutil.copy2(p, self.root / "gates" / p.name)
        shutil.copytree(REPO_ROOT / "gates" / "templates", self.root / "gates" / "templates")
        shutil.copy2(REPO_ROOT / ".gitignore", self.root / ".gitignore")
        shutil.copy2(REPO_ROOT / "noxfile.py", self.root / "noxfile.py")
        self.write("pyproject.toml", PYPROJECT)
        self.write("tests/__init__.py", "")
        self.catalog: dict[str, str] = {}
        self._write_catalog()
        self.paths = resolve(self.root, self.root / "stories", self.root / "reports" / "evidence", self.root / "reports")
        self.t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
        self._n = 0
        git(self.root, "init", "-q", "-b", "main")
        git(self.root, "config", "user.email", "synth@example.invalid")
        git(self.root, "config", "user.name", "synth")
        self.commit("synthetic repository")

    # ---------- files ----------
    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def commit(self, msg="change") -> str:
        git(self.root, "add", "-A")
        if git(self.root, "status", "--porcelain").strip():
            git(self.root, "commit", "-q", "-m", msg)
        return git(self.root, "rev-parse", "HEAD").strip()

    def _write_catalog(self):
        head = ('[kernels]\nsources = ["csrc/**"]\n\n'
                f'[devices."{GPU}"]\nhbm_gbps = 3350\nbf16_tflops = 989\n')
        self.write("gates/catalog.toml", head + "".join(self.catalog[k] for k in sorted(self.catalog)))

    def add_card(self, sid, sprint, gate, sources_=(), criteria=(), verdict=None, catalog=True):
        """The card, and (catalog=True) the catalog entry that pins exactly what it says."""
        self.write(f"stories/{sid}.toml", card(sid, sprint, gate, sources_, criteria, verdict))
        if catalog:
            s = cards.load_card(self.root / "stories" / f"{sid}.toml")
            sp = f'"{sprint}"' if isinstance(sprint, str) else sprint
            entry = [f'\n[stories.{sid}]\ntitle = "{s.title}"\nsprint = {sp}\ngate = "{gate}"\n']
            if verdict:
                entry.append(f'verdict = "{verdict}"\n')
            else:
                tests = [c for c in s.criteria if c.kind == "tests"]
                entry.append("tests = [" + ", ".join(
                    f'{{ device = "{c.device}", keyword = "{c.keyword}" }}' if c.keyword else f'"{c.device}"'
                    for c in tests) + "]\n")
                for c in s.criteria:
                    if c.kind == "benchmark":
                        entry.append(f"\n[[stories.{sid}.bars]]\nmetric = \"{c.metric}\"\ndevice = \"{c.device}\"\n")
                        for key in ("min_ratio", "max_ratio"):
                            if getattr(c, key):
                                entry.append(f"{key} = {{ " + ", ".join(f"{r} = {x}" for r, x in getattr(c, key).items()) + " }\n")
                        if c.where:
                            entry.append("where = { " + ", ".join(
                                f"{k} = {{ {', '.join(f'{op} = {x}' for op, x in v.items())} }}" for k, v in c.where.items()) + " }\n")
                        if c.aggregate != "each":
                            entry.append(f'aggregate = "{c.aggregate}"\n')
                        entry.append('why = "synthetic physics"\n')
            self.catalog[sid] = "".join(entry)
            self._write_catalog()

    def add_test(self, nodeid: str, stories_, cuda=False, benchmark=False):
        """A trivial test function at `nodeid` (tests/<file>.py::name[param]) with its markers."""
        path, _, name = nodeid.partition("::")
        m = re.fullmatch(r"(\w+)(?:\[(.+)\])?", name)
        func, param = m.group(1), m.group(2)
        p = self.root / path
        text = p.read_text() if p.exists() else "import pytest\n"
        if re.search(rf"^def {func}\(", text, re.M):
            if param and f'"{param}"' not in text:      # one more parameter of an existing test
                text = re.sub(rf'(@pytest.mark.parametrize\("p", \[)([^\]]*)(\])\n((?:@.*\n)*)def {func}\(',
                              lambda mm: f'{mm.group(1)}{mm.group(2)}, "{param}"{mm.group(3)}\n{mm.group(4)}def {func}(',
                              text)
                p.write_text(text)
            return
        marks = ["@pytest.mark.story(" + ", ".join(f'"{s}"' for s in stories_) + ")"]
        if cuda:
            marks.append("@pytest.mark.cuda")
        if benchmark:
            marks.append("@pytest.mark.benchmark")
        if param:
            marks.insert(0, f'@pytest.mark.parametrize("p", ["{param}"])')
        args = "p" if param else ""
        text += "\n\n" + "\n".join(marks) + f"\ndef {func}({args}):\n    pass\n"
        self.write(path, text)

    def gate1_minimal(self):
        """GT-001 (CPU tests), GT-008 (CPU + CUDA tests + LayerNorm-style benchmark), GT-022 verdict."""
        self.write("src/tok.py", "A = 1\n")
        self.write("src/emb.py", "B = 2\n")
        self.add_card("GT-001", 1, "gate1", ["src/tok.py"], [TESTS_CPU])
        self.add_card("GT-008", 2, "gate1", ["src/emb.py"], [TESTS_CPU, TESTS_CUDA, BENCH_LN])
        self.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")

    def stories(self):
        return cards.load_cards(self.paths.stories)

    # ---------- evidence ----------
    def run(self, tests=(), benchmarks=(), machine="cpu", minutes=0, collection_errors=(), commit=True,
            edit=None, log=True) -> Path:
        """One evidence file describing the tree as committed now (the test files for the
        records are created first). machine: "cpu" or "gpu". edit(doc): change the JSON
        before it is written (and before its log is made from it)."""
        bench_nodes = {m["nodeid"] for m in benchmarks}
        for nodeid, stories_, _outcome, device in tests:
            self.add_test(nodeid, stories_, cuda=device != "cpu", benchmark=nodeid in bench_nodes)
        head = self.commit("tests for a run") if commit else git(self.root, "rev-parse", "HEAD").strip()
        self._n += 1
        finished = self.t0 + timedelta(minutes=minutes or self._n)
        stories = self.stories()
        known = sources.snapshot(self.root)
        imports = sources.Imports(self.root, known)
        used: dict[str, set] = {}
        cuda: set = set()
        for nodeid, stories_, _o, device in tests:
            for sid in stories_:
                used.setdefault(sid, set()).add(nodeid.split("::")[0])
                if device not in ("cpu", None):
                    cuda.add(sid)
        for sid in used:
            if sid in stories:
                used[sid] |= set(sources.card_files(known, stories[sid]))
        conftests = [f for f in known if f.endswith("conftest.py")]
        story_files = {sid: sources.story_files(known, imports, u, stories.get(sid), sid in cuda, conftests, ("csrc/**",))
                       for sid, u in used.items()}
        gpu = GPU if machine != "cpu" else None
        doc = {
            "schema": evidence.SCHEMA_VERSION,
            "run": {"started": evidence.iso(finished - timedelta(seconds=30)), "finished": evidence.iso(finished),
                    "duration_s": 30.0, "exit_status": 0, "args": [], "xdist_workers": 0,
                    "story_filter": [], "interrupted": False, "selected": len(tests), "deselected": 0,
                    "modified_during_run": []},
            "pytest": {"args": [], "addopts_env": None, "plugin_autoload": False, "inifile": "pyproject.toml",
                       "rootdir_is_repo": True, "override_ini": ["strict_markers=true"], "pythonwarnings": [],
                       "importmode": "prepend", "assertmode": "rewrite", "noconftest": False, "usepdb": False,
                       "trace": False, "inifilename": None, "p": ["gates.pytest_plugin"],
                       "plugins": [{"module": "_pytest.runner", "file": "/venv/_pytest/runner.py", "in_repo": False},
                                   {"module": "gates.pytest_plugin", "file": "gates/pytest_plugin.py", "in_repo": True},
                                   {"module": "gates.pytest_plugin.Recorder", "file": None, "in_repo": False}],
                       "tracer_displaced": [], "rewritten": []},
            "provenance": {"commit": head, "dirty": False, "commit_source": "git", "cpu_model": "synthetic",
                           "gpu_name": gpu, "driver": None, "cuda": None, "torch": "2.13.0", "python": "3.11",
                           "machine_class": "cpu" if gpu is None else GPU_CLASS},
            "baselines": {GPU: dict(GPU_BASELINE)} if gpu else {},
            "source_hashes": {sid: sources.combine({f: known[f] for f in fs}) for sid, fs in story_files.items()},
            "story_files": story_files,
            "source_files": {f: known[f] for fs in story_files.values() for f in fs},
            "source_tree": dict(known),
            "tests": [], "benchmarks": list(benchmarks), "collection_errors": list(collection_errors),
        }
        for nodeid, stories_, outcome, device in tests:
            doc["tests"].append({"nodeid": nodeid, "stories": list(stories_), "outcome": outcome, "duration": 0.01,
                                 "device": device, "skip_reason": "synthetic skip" if outcome == "skipped" else None,
                                 "message": "synthetic failure" if outcome == "failed" else None})
        if edit:
            edit(doc)
        path = evidence.write(doc, self.paths.evidence)
        if gpu and log:
            write_log(path, doc)
        return path


def write_log(path: Path, doc: dict):
    """The raw pytest log of a run, as `python -m gates.gpu` keeps it (-rA, the evidence line)."""
    lines = ["+ python -m pytest -p gates.pytest_plugin -rA -q tests", "." * len(doc["tests"]),
             "=========================== short test summary info ============================"]
    word = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "xpassed": "XPASS", "xfailed": "XFAIL"}
    for t in doc["tests"]:
        if t["outcome"] in word:
            lines.append(f"{word[t['outcome']]} {t['nodeid']}" + (" - synthetic" if t["outcome"] != "passed" else ""))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    lines.insert(2, f"evidence: {path} sha256={sha}")
    evidence.log_path(path).write_text("\n".join(lines) + "\n")


def metric(name, value, refs, nodeid, stories_, valid=True, reason=None, unit="GB/s", kind="bandwidth",
           device=GPU, params=None, higher_is_better=True):
    refs = dict(refs)
    if kind == "bandwidth" and device == GPU:
        refs.setdefault("copy", GPU_BASELINE["copy_gbps"])
    ratios = {k: (value / v if higher_is_better else v / value) for k, v in refs.items()}
    return {"name": name, "value": value, "unit": unit, "kind": kind, "higher_is_better": higher_is_better,
            "references": refs, "ratios": ratios, "params": params or {}, "valid": valid,
            "invalid_reason": reason, "device": device, "nodeid": nodeid, "stories": list(stories_)}


GATE1_TESTS = [("tests/test_tok.py::test_a", ["GT-001"], False, False),
               ("tests/test_emb.py::test_ref", ["GT-008"], False, False),
               ("tests/test_emb.py::test_cuda", ["GT-008"], True, False),
               ("tests/test_emb.py::test_bench", ["GT-008"], True, True)]


def passing_gate1(repo: Repo):
    """Evidence under which the minimal gate1 passes: CPU run + GPU run with a good benchmark."""
    for nodeid, stories_, cuda, bench in GATE1_TESTS:
        repo.add_test(nodeid, stories_, cuda=cuda, benchmark=bench)
    repo.run(tests=[("tests/test_tok.py::test_a", ["GT-001"], "passed", "cpu"),
                    ("tests/test_emb.py::test_ref", ["GT-008"], "passed", "cpu"),
                    ("tests/test_emb.py::test_cuda", ["GT-008"], "skipped", None),
                    ("tests/test_emb.py::test_bench", ["GT-008"], "skipped", None)])
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU),
                                   ("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
             benchmarks=[metric("layernorm.fp16", 2600.0, {"torch": 1200.0},
                                "tests/test_emb.py::test_bench", ["GT-008"])])


def inner_env(repo: Repo, **extra) -> dict:
    """The environment of a pytest or harness command inside the synthetic repository: its
    own copy of the harness first on the path, entry-point plugins off (as gates/runner.py)."""
    import os
    env = {k: v for k, v in os.environ.items()
           if k not in ("OUT", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID")
           and not k.startswith("GPT_ENGINE_")}
    env.update({"PYTHONPATH": str(repo.root), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **extra})
    return env


def run_inner(repo: Repo, *args, commit=True, env=None, plugins=("-p", "gates.pytest_plugin")):
    """A real pytest run in the synthetic repository (committed first, so the tree is clean)."""
    import sys
    if commit:
        repo.commit("before an inner run")
    cmd = [sys.executable, "-m", "pytest", *plugins, *args]
    return subprocess.run(cmd, cwd=repo.root, env=inner_env(repo, **(env or {})), capture_output=True, text=True,
                          timeout=300)


def newest_evidence(repo: Repo) -> dict:
    files = sorted(repo.paths.evidence.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return evidence.load_file(files[-1])


def after_the_newest_run(repo: Repo):
    """Wait until the wall clock has left the second in which the newest evidence finished.
    Evidence times have one-second resolution and runs of the same second are ordered by file
    name (their commit), so a run meant to be newer than another must finish in a later second."""
    import time
    finished = datetime.strptime(newest_evidence(repo)["run"]["finished"], "%Y-%m-%dT%H:%M:%SZ")
    wait = finished.replace(tzinfo=timezone.utc).timestamp() + 1.0 - time.time()
    if wait > 0:
        time.sleep(wait)
