"""Evidence is checked, not believed: which evidence files may count toward a gate, and why not.

Every check here answers "could this file be what the run really wrote, of the commit it
names, with only the project's own code in the process?":
- a committed file (and its log) is byte-identical to its first committed version, and no
  committed file has disappeared (history is append-only; CI fails otherwise);
- its name matches its content (finish time, machine class, commit);
- no timestamp lies in the future or before its commit;
- the commit exists, is an ancestor of HEAD, and holds exactly the file hashes the run
  recorded (a dirty tree, an edited file or a file that was never committed shows here), and
  the run's whole source tree, used or not, is the commit's (an untracked or edited file that no
  test was seen to use counts too: GPT_ENGINE_GIT_COMMIT names a commit without proving the tree);
  the commit tracks no symbolic link where sources live (the files behind it would be no
  story's source);
- the run was not dirty, interrupted, or short of collection errors; no phase that raised
  was reported as passed; an exit status of 1 (tests failed) has a failing record; the trace
  of used files was not displaced;
- every active plugin is pytest's, xdist's or the repository's own, and no option overrides
  the project's configuration (-o, -c, -W, -p of anything else, --pdb, --confcutdir,
  --keep-duplicates, ...); every repository conftest on the tests' paths was loaded; Python
  did not run with -O; no engine setting (GPT_ENGINE_* / GPTE_* other than the harness's) was in
  the environment; no module named like one of the repository's was loaded from a file outside it;
- a GPU run comes with its raw pytest log beside it, the log names the JSON's sha256, and
  the log's per-test outcomes (-rA) agree with the JSON's;
- a CPU run counts only where it was made, never committed: CI runs the CPU suite itself;
- the commit tracks no file that the source rules hide (.gitignore, build-output names).
What cannot be caught here (a file forged by hand, log included, by someone with write
access) is listed in docs/harness.md, "Threat model".
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gates import evidence as _evidence
from gates import sources as _sources

FUTURE_SLACK = timedelta(minutes=5)       # clocks of two machines disagree a little
BEFORE_COMMIT_SLACK = timedelta(hours=1)
OK_EXIT = (0, 1, 5)                       # passed, tests failed, nothing collected
FAILING = ("failed", "error")             # the outcomes of a report that makes pytest exit 1
OWN_P = {"gates.pytest_plugin", "xdist.plugin", "xdist", "no:cacheprovider"}
STRICTER_OVERRIDES = {"strict_markers=true", "strict_config=true", "strict=true", "xfail_strict=true"}
SHA = re.compile(r"^[0-9a-f]{40}$")
# GPT_ENGINE_* / GPTE_* variables a run may carry: the harness's own (where cards, evidence and
# benchmark models live; the commit of a tree without .git), the sha256-checked copy of the
# o200k oracle file (gpt_engine/testmodels.py) and the build's verbosity. Any other one switches
# an engine path or a kernel rule (GPT_ENGINE_DEVICE_LOOP, GPT_ENGINE_ATTN_SHORT_KEYS,
# GPT_ENGINE_CPU_CACHE_BYTES, GPTE_NO_PDL, ...): that run did not test the code as it ships.
ENGINE_ENV_OK = {"GPT_ENGINE_GIT_COMMIT", "GPT_ENGINE_GIT_DIRTY", "GPT_ENGINE_BENCH_MODELS", "GPT_ENGINE_GPT_OSS_20B",
                 "GPT_ENGINE_O200K_FILE", "GPT_ENGINE_ROOT", "GPT_ENGINE_STORIES_DIR", "GPT_ENGINE_EVIDENCE_DIR",
                 "GPT_ENGINE_REPORTS_DIR", "GPT_ENGINE_BUILD_VERBOSE"}
# Settings outside the engine's own that change what a run measures or builds: a launch that
# blocks until its kernel ends, allocations that bypass torch's cache (both add host time inside
# timed regions, unevenly between our op and its reference), extra nvcc flags for the extension
# build (not in its build key), cuBLAS's workspace size (prefill's GEMM speed, and the memory peak
# that memory_estimate() is judged against: the engine reads it to estimate, so a small workspace
# shrinks both). Refused unless set to the default ("0", or empty).
PROCESS_ENV_REFUSED = ("CUDA_LAUNCH_BLOCKING", "PYTORCH_NO_CUDA_MEMORY_CACHING", "NVCC_APPEND_FLAGS",
                       "NVCC_PREPEND_FLAGS", "CUBLAS_WORKSPACE_CONFIG")
_LOG_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S.*?)(?: - .*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Audit:
    file: str
    history: bool = False
    reasons: list = field(default_factory=list)     # why it does not count
    tampered: list = field(default_factory=list)    # edits of committed history: CI fails

    @property
    def counts(self) -> bool:
        return not self.history and not self.reasons and not self.tampered

    def to_json(self) -> dict:
        return {"file": self.file, "counts": self.counts, "history": self.history,
                "reasons": self.reasons, "tampered": self.tampered}


class Git:
    """The few git questions the audit asks, answered once each."""

    def __init__(self, root: Path):
        self.root = Path(root)
        top = self._run("rev-parse", "--show-toplevel")
        self.top = Path(top.strip()).resolve() if top else None
        self.head = (self._run("rev-parse", "HEAD") or "").strip() or None
        self._commits: dict = {}
        self._blobs: dict = {}
        self._hidden: dict = {}
        self._trees: dict = {}

    def _run(self, *args, input=None) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True,
                               input=input, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.top).as_posix()

    def commit(self, c: str) -> tuple[bool, datetime | None, bool]:
        """(exists, committer time, ancestor of HEAD)."""
        if c not in self._commits:
            out = self._run("show", "-s", "--format=%ct", f"{c}^{{commit}}")
            if out is None:
                self._commits[c] = (False, None, False)
            else:
                t = datetime.fromtimestamp(int(out.strip()), timezone.utc)
                anc = self.head is not None and self._run("merge-base", "--is-ancestor", c, self.head) is not None
                self._commits[c] = (True, t, anc)
        return self._commits[c]

    def blob_sha256(self, commit: str, paths) -> dict:
        """{root-relative path: sha256 of the file in `commit`, or None where it has none}."""
        prefix = self._prefix()
        want = [p for p in paths if (commit, p) not in self._blobs]
        if want:
            req = "".join(f"{commit}:{prefix}{p}\n" for p in want).encode()
            r = subprocess.run(["git", "-C", str(self.root), "cat-file", "--batch"], input=req,
                               capture_output=True, timeout=300)
            data, pos = r.stdout, 0
            for p in want:
                nl = data.find(b"\n", pos)
                head = data[pos:nl].split() if nl >= 0 else []
                pos = nl + 1
                if len(head) == 3 and head[1] == b"blob":
                    size = int(head[2])
                    self._blobs[(commit, p)] = hashlib.sha256(data[pos:pos + size]).hexdigest()
                    pos += size + 1
                else:                      # "<object> missing", or git failed: no such file there
                    self._blobs[(commit, p)] = None
        return {p: self._blobs[(commit, p)] for p in paths}

    def _prefix(self) -> str:
        prefix = self.rel(self.root)
        return "" if prefix == "." else prefix + "/"

    def hidden_tracked(self, commit: str) -> list[str]:
        """Files `commit` tracks under the root that its .gitignore or a build-output name hides
        from the sources (gates/sources.py hidden_tracked)."""
        if commit not in self._hidden:
            prefix = self._prefix()
            out = self._run("ls-tree", "-r", "-z", "--name-only", "--full-tree", commit) or ""
            tracked = [p[len(prefix):] for p in out.split("\0") if p and p.startswith(prefix)]
            ignore = self._run("show", f"{commit}:{prefix}.gitignore") or ""
            self._hidden[commit] = _sources.hidden_tracked(tracked, ignore)
        return self._hidden[commit]

    def source_tree(self, commit: str) -> tuple[dict, list]:
        """({path: sha256} of every file `commit` tracks under the root that counts as a source,
        by the commit's own .gitignore; [its tracked symlinks that count as sources])."""
        if commit not in self._trees:
            prefix = self._prefix()
            out = self._run("ls-tree", "-r", "-z", "--full-tree", commit) or ""
            ignore = self._run("show", f"{commit}:{prefix}.gitignore") or ""
            pats = _sources.parse_gitignore(ignore)
            files, links = [], []
            for entry in out.split("\0"):
                if not entry or "\t" not in entry:
                    continue
                meta, path = entry.split("\t", 1)
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):]
                if not _sources.is_source(rel, pats):
                    continue
                mode = meta.split()[0]
                if mode == "120000":
                    links.append(rel)
                elif mode != "160000":          # a submodule has no blob here
                    files.append(rel)
            self._trees[commit] = (self.blob_sha256(commit, files), sorted(links))
        return self._trees[commit]

    def first_versions(self, folder: Path) -> dict:
        """{file name: git blob id of its first committed version} for every evidence file
        (.json) and log (.log) git ever added to `folder` (renames count as additions: a
        renamed file starts a new history)."""
        rel = self.rel(folder)
        out = self._run("log", "--format=%x00%H", "--diff-filter=A", "--no-renames", "--name-only",
                        "--reverse", "--", rel)
        first: dict[str, str] = {}
        commit = None
        for line in (out or "").splitlines():
            if line.startswith("\0"):
                commit = line[1:]
            elif line.strip() and commit:
                name = line.strip()
                if name.startswith(rel + "/") and "/" not in name[len(rel) + 1:] and name.endswith((".json", ".log")):
                    first.setdefault(name[len(rel) + 1:], f"{commit}:{name}")
        if not first:
            return {}
        ids = (self._run("rev-parse", *first.values()) or "").split()
        return dict(zip(first, ids)) if len(ids) == len(first) else {}


    def added_times(self, folder: Path) -> dict:
        """{file name: committer time of the commit that first added it} for the evidence files
        and logs of `folder`, as first_versions finds them."""
        rel = self.rel(folder)
        out = self._run("log", "--format=%x00%ct", "--diff-filter=A", "--no-renames", "--name-only", "--reverse",
                        "--", rel)
        times: dict[str, datetime] = {}
        when = None
        for line in (out or "").splitlines():
            if line.startswith("\0"):
                when = datetime.fromtimestamp(int(line[1:]), timezone.utc)
            elif line.strip() and when is not None:
                name = line.strip()
                if name.startswith(rel + "/") and "/" not in name[len(rel) + 1:]:
                    times.setdefault(name[len(rel) + 1:], when)
        return times


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _ts(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _few(xs, n=3) -> str:
    xs = list(xs)
    return ", ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")


def gpu_run(doc) -> bool:
    return any(t.get("device") not in ("cpu", None) for t in doc["tests"]) or doc["provenance"].get("machine_class") != "cpu"


def env_problems(env: dict) -> list[str]:
    """Settings in a run's environment that mean it did not test the code as it ships (the audit of a
    recorded run and tests/bench/evidence_preflight.py before a GPU call use this one rule)."""
    out = []
    knobs = sorted(k for k in env if k.startswith(("GPT_ENGINE_", "GPTE_")) and k not in ENGINE_ENV_OK)
    if knobs:
        out.append(f"engine settings in the environment: {_few(knobs)} (the code as it ships was not what ran)")
    skew = sorted(k for k in PROCESS_ENV_REFUSED if env.get(k, "0") not in ("0", ""))
    if skew:
        out.append(f"process settings in the environment that change what runs or is timed: {_few(skew)}")
    return out


def tree_problems(tree: dict, at_commit: dict, commit: str) -> list[str]:
    """How a run's source tree ({path: sha256}) differs from its commit's: untracked, edited or missing
    files where sources live (the audit and the preflight before a GPU call use this one rule)."""
    extra = sorted(set(tree) - set(at_commit))
    missing = sorted(set(at_commit) - set(tree))
    edited = sorted(f for f in set(tree) & set(at_commit) if tree[f] != at_commit[f])
    return [f"the run's source tree differs from commit {commit[:10]}: {len(fs)} file(s) {what}: {_few(fs)}"
            for what, fs in (("not in the commit (untracked)", extra), ("edited", edited),
                             ("missing from the run's tree", missing)) if fs]


def plugin_problems(doc) -> list[str]:
    """Active plugins and options that are not the project's own."""
    pt = doc.get("pytest", {})
    out = []
    for p in pt.get("plugins", []):
        mod = p.get("module", "")
        if p.get("in_repo") or mod.startswith(("_pytest.", "xdist.", "__channelexec__.")):
            continue                     # repo conftests and plugins are hashed and committed
        if mod.startswith("gates.") and p.get("file") is None:
            continue                     # an object of the repository's plugin (its module is listed too)
        out.append(f"plugin {mod} ({p.get('file') or 'no file'}) is not the project's own")
    o = pt
    # pytest 9 spells --strict-markers (from the project's addopts) as an ini override
    overrides = [x for x in o.get("override_ini", []) if x not in STRICTER_OVERRIDES]
    if overrides:
        out.append(f"-o overrides the project's configuration: {overrides}")
    if o.get("pythonwarnings"):
        out.append(f"-W changes the project's warning filters: {o['pythonwarnings']}")
    for k, what in (("noconftest", "--noconftest"), ("usepdb", "--pdb"), ("trace", "--trace"),
                    ("runxfail", "--runxfail"), ("keepduplicates", "--keep-duplicates")):
        if o.get(k):
            out.append(f"{what} was given")
    if o.get("confcutdir") not in (None, "."):
        out.append(f"--confcutdir={o['confcutdir']}: conftests above it were not loaded")
    if o.get("conftests_not_loaded"):
        out.append(f"repository conftests on the tests' paths were not loaded: {_few(o['conftests_not_loaded'])}")
    if o.get("optimize"):
        out.append(f"Python ran with -O (optimize level {o['optimize']}, PYTHONOPTIMIZE): the asserts outside the"
                   " test modules pytest rewrites were removed")
    out += env_problems(o.get("env", {}))
    if o.get("inifilename") or o.get("inifile") not in ("pyproject.toml",):
        out.append(f"configuration came from {o.get('inifilename') or o.get('inifile')}, not pyproject.toml")
    if not o.get("rootdir_is_repo", False):
        out.append("pytest's rootdir was not the repository")
    if o.get("importmode") not in (None, "prepend") or o.get("assertmode") not in (None, "rewrite"):
        out.append(f"--import-mode={o.get('importmode')} / --assert={o.get('assertmode')} differ from the project's")
    extra_p = [p for p in o.get("p", []) if p not in OWN_P]
    if extra_p:
        out.append(f"-p {' '.join(extra_p)}: plugins are the project's own only")
    for d in o.get("tracer_displaced", []):
        out.append(f"files used could not be measured: {d}")
    if o.get("shadowed"):
        out.append(f"repository modules were loaded from outside the repository: {_few(o['shadowed'])}")
    if o.get("rewritten"):
        out.append(f"a hook reported a failing phase as passed: {_few(o['rewritten'])}")
    return out


def log_problems(path: Path, doc: dict, raw: bytes) -> list[str]:
    """The raw pytest log beside a GPU evidence file must vouch for it."""
    log = _evidence.log_path(path)
    if not log.is_file():
        return [f"no raw pytest log {log.name} beside it (run GPU evidence through python -m gates.gpu)"]
    text = log.read_text(encoding="utf-8", errors="replace")
    sha = hashlib.sha256(raw).hexdigest()
    if not re.search(rf"^evidence: \S*{re.escape(path.name)} sha256={sha}$", text, re.M):
        return [f"{log.name} does not name this file with sha256 {sha[:12]}…: the JSON is not what that run wrote"]
    passed_log, failed_log = set(), set()
    for line in text.splitlines():
        line = _ANSI.sub("", line).rstrip()       # a coloured log (FORCE_COLOR, PY_COLORS) says the same
        m = _LOG_LINE.match(line)
        if m and m.group(1) == "PASSED":          # no message follows a pass: an id may hold " - "
            passed_log.add(line[len("PASSED "):])
        elif m:
            failed_log.add(m.group(2))
    log_pass = passed_log - failed_log
    json_pass = {t["nodeid"] for t in doc["tests"] if t["outcome"] == "passed"}
    if json_pass and not (passed_log or failed_log):
        return [f"{log.name} has no per-test outcomes (-rA): it cannot confirm the JSON"]
    differ = sorted(log_pass ^ json_pass)
    if differ:
        return [f"{log.name} and the JSON disagree on {len(differ)} test outcome(s): {_few(differ)}"]
    return []


def audit_run(doc: dict, git: Git | None, first: dict, now: datetime, added: dict | None = None) -> Audit:
    """added: {file name: time of the commit that first added it} (Git.added_times)."""
    path = Path(doc["_path"])
    a = Audit(doc["_file"], history=doc["_history"])
    raw = path.read_bytes()
    for p, what in ((path, "evidence file"), (_evidence.log_path(path), "log")):
        blob = first.get(p.name)
        if blob and (not p.is_file() or blob_id(p.read_bytes()) != blob):
            a.tampered.append(f"{p.name} differs from its first committed version: committed {what}s are immutable")
    if a.history:
        a.reasons.append(f"schema {doc['schema']} (before the audit existed): no raw log or per-test sources; history, never counted")
        return a
    run, prov = doc["run"], doc["provenance"]
    commit = prov.get("commit")
    try:
        finished = _ts(run["finished"])
        expect = _evidence.file_name(finished, prov.get("machine_class", "?"), commit)
        if path.name != expect and not re.fullmatch(re.escape(expect[:-5]) + r"-\d+\.json", path.name):
            a.reasons.append(f"its name does not match its content (expected {expect})")
        if finished > now + FUTURE_SLACK:
            a.reasons.append(f"finished {run['finished']} lies in the future")
        # a file committed before the time it says its run finished was stamped by a clock ahead of
        # the committer's: once that time has passed it would win "newest" over honest later runs
        committed = (added or {}).get(path.name)
        if committed is not None and finished > committed + FUTURE_SLACK:
            a.reasons.append(f"finished {run['finished']}, after the commit that added it"
                             f" ({committed.strftime('%Y-%m-%dT%H:%M:%SZ')}): its clock ran ahead")
        if _ts(run["started"]) > finished:
            a.reasons.append("started after it finished")
    except (KeyError, ValueError):
        a.reasons.append("run timestamps missing")
        finished = None
    if not commit or not SHA.match(str(commit)):
        a.reasons.append("no full commit recorded: it cannot be tied to code (set GPT_ENGINE_GIT_COMMIT on machines without .git)")
    elif git is None or git.top is None:
        a.reasons.append("no git repository here: its commit cannot be verified")
    else:
        exists, when, ancestor = git.commit(commit)
        if not exists:
            a.reasons.append(f"commit {commit[:10]} does not exist here (a shallow clone? fetch the full history)")
        else:
            if not ancestor:
                a.reasons.append(f"commit {commit[:10]} is not an ancestor of HEAD")
            if finished is not None and finished < when - BEFORE_COMMIT_SLACK:
                a.reasons.append(f"finished {run['finished']}, before its commit {commit[:10]} existed")
            files = doc.get("source_files", {})
            at = git.blob_sha256(commit, list(files))
            wrong = [f for f, h in files.items() if at.get(f) != h]
            if wrong:
                a.reasons.append(f"{len(wrong)} recorded source hash(es) differ from commit {commit[:10]}: {_few(wrong)}"
                                 " (the run's tree had uncommitted changes)")
            tree = doc.get("source_tree")
            at_commit, links = git.source_tree(commit)
            if links:
                a.reasons.append(f"commit {commit[:10]} tracks {len(links)} symbolic link(s) where sources live:"
                                 f" {_few(links)} (files behind a link are no story's source, so changing them"
                                 " would stale nothing)")
            if tree is not None:
                a.reasons += tree_problems(tree, at_commit, commit)
            hidden = git.hidden_tracked(commit)
            if hidden:
                a.reasons.append(f"commit {commit[:10]} tracks {len(hidden)} file(s) that .gitignore or a build-output name"
                                 f" hides from the sources: {_few(hidden)} (a test could use them and no change to them"
                                 " would stale its evidence: tracked files must be sources)")
    if prov.get("dirty"):
        a.reasons.append("run on a dirty tree (uncommitted or untracked files)")
    if run.get("modified_during_run"):
        a.reasons.append(f"sources changed while it ran: {_few(run['modified_during_run'])}")
    if doc.get("collection_errors"):
        a.reasons.append(f"{len(doc['collection_errors'])} collection error(s)")
    if run.get("interrupted") or run.get("exit_status") not in OK_EXIT:
        a.reasons.append(f"interrupted or aborted (exit status {run.get('exit_status')})")
    elif (run.get("exit_status") == 1 and not doc.get("collection_errors")
          and not any(t.get("outcome") in FAILING for t in doc.get("tests", []))):
        # pytest exits 1 only when a report failed: the records lost that failure (a test run twice
        # under one id, a hook that changed what was recorded)
        a.reasons.append("exit status 1 (tests failed) but no test is recorded as failing: the records do not"
                         " say what pytest saw")
    a.reasons += plugin_problems(doc)
    if gpu_run(doc):
        a.reasons += log_problems(path, doc, raw)
    elif path.name in first:
        a.reasons.append("committed CPU evidence never counts: it has no raw log to vouch for it (an edit made before"
                         " its first commit could not be seen), and CI writes its own (nox -s tests)")
    return a


def audit_runs(root: Path, runs: list, folder: Path | None = None, now: datetime | None = None) -> tuple[dict, list]:
    """({evidence file name: Audit}, [committed evidence files that are gone])."""
    now = now or datetime.now(timezone.utc)
    git = Git(root)
    git = git if git.top is not None else None
    if folder is None and runs:
        folder = Path(runs[0]["_path"]).parent
    first = git.first_versions(folder) if (git and folder and Path(folder).is_dir()) else {}
    added = git.added_times(folder) if (git and folder and Path(folder).is_dir()) else {}
    audits = {d["_file"]: audit_run(d, git, first, now, added) for d in runs}
    gone = sorted(n for n in first if not (Path(folder) / n).exists())
    return audits, [f"{n} was committed and is gone: committed evidence is history and stays" for n in gone]


def committed_names(root: Path, folder: Path) -> set:
    git = Git(root)
    return set(git.first_versions(folder)) if git.top is not None and Path(folder).is_dir() else set()
