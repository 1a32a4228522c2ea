"""What a story's evidence depends on, and the sha256 that makes it stale.

A run records, per story, the files its tests used (gates/tracer.py measures them per test)
plus the files every story depends on, each with its sha256 taken when the run started.
Evidence is fresh for a story while every one of those files still has that hash.

The same rules must give the same hashes on CI (a git checkout) and on the GPU machine (a
copy of the working tree without .git, with build outputs lying around), so files are listed
from the filesystem and build outputs are dropped by fixed rules and the root .gitignore,
never by asking git. Those rules must never hide a file git tracks (a tracked file the tests
use would then be no story's source, and changing it could stale nothing): the audit refuses
a run whose commit tracks such a file (`hidden_tracked`), and .gitignore itself is a source
of every story, so the rules a run used are the ones its commit holds.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
from pathlib import Path

from gates.cards import CardError

# Build and cache outputs never count as sources: a JIT build folder or bytecode beside the
# code must not make evidence look stale. Keep build outputs in dot-folders or build/.
_SKIP_DIRS = {"__pycache__", "build", "_build", "dist", "node_modules"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".o", ".a", ".obj", ".dll", ".dylib", ".ninja_log", ".ninja_deps"}
_SKIP_NAMES = {"build.ninja"}
# Generated outputs and the evidence itself are never a story's source.
_SKIP_TOP = {"reports"}

# Every story depends on the code that records and judges its evidence (the pytest plugin and
# what it imports, the verdict and the catalog) and on the pytest configuration. The list is
# pinned against the plugin's real import closure by tests/harness/test_sources.py.
HARNESS_FILES = (
    "gates/__init__.py", "gates/pytest_plugin.py", "gates/bench.py", "gates/physics.py",
    "gates/tracer.py", "gates/evidence.py", "gates/provenance.py", "gates/sources.py",
    "gates/cards.py", "gates/catalog.py", "gates/catalog.toml", "gates/paths.py",
    "gates/manifest.py", "gates/verdict.py", "gates/audit.py",
)
CONFIG_FILES = ("pyproject.toml", ".gitignore")
# Files a repository module builds or loads at run time, beside the code the tracer sees run.
# gpt_engine/cpu_q4.py compiles csrc_cpu/q4_gemv.c and reads it only inside a cached load()
# (once per process), so the tracer charged the C file to whichever story's test came first.
# Like the catalog's [kernels] globs for GPU records, this does not depend on call order: every
# record whose files include the module depends on everything the globs match (`built_from`).
BUILT_FROM = {"gpt_engine/cpu_q4.py": ("csrc_cpu/**",)}
# The one dot-file that is a source: it decides which untracked files are not.
_ALWAYS = {".gitignore"}


def counts(rel: str) -> bool:
    if rel in _ALWAYS:
        return True
    parts = rel.split("/")
    if parts[0] in _SKIP_TOP:
        return False
    if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in parts):
        return False
    if parts[-1] in _SKIP_NAMES:
        return False
    return not any(rel.endswith(s) for s in _SKIP_SUFFIXES)


def gitignore_patterns(root: Path) -> list[tuple[str, bool, bool]]:
    """The root .gitignore as (pattern, anchored, dir_only). It travels with the tree (unlike
    .git/info/exclude), so CI and the GPU copy read the same rules. Negations are ignored."""
    try:
        return parse_gitignore((Path(root) / ".gitignore").read_text())
    except OSError:
        return []


def parse_gitignore(text: str) -> list[tuple[str, bool, bool]]:
    pats = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("!"):
            continue
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = line.startswith("/") or "/" in line
        pats.append((line.lstrip("/"), anchored, dir_only))
    return pats


def ignored(rel: str, pats) -> bool:
    if rel in _ALWAYS:
        return False
    parts = rel.split("/")
    for pat, anchored, dir_only in pats:
        # candidate paths: every leading directory, and the file itself unless dir_only
        cands = ["/".join(parts[: i + 1]) for i in range(len(parts) - (1 if dir_only else 0))]
        for c in cands:
            if anchored:
                if fnmatch.fnmatchcase(c, pat):
                    return True
            elif fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pat):
                return True
    return False


def is_source(rel: str, pats) -> bool:
    """Whether a path under the root can be a source: not a build output, not ignored."""
    return counts(rel) and not ignored(rel, pats)


def hidden_tracked(tracked, gitignore_text: str) -> list[str]:
    """Files git tracks that the rules above would never count as sources (a .gitignore
    pattern or a build-output name such as build/ or *.so hides them), sorted. Only the
    evidence and generated reports (reports/) and the top-level dot entries (.ci/, .github/)
    are tracked without being sources. A run whose commit tracks such a file cannot be
    trusted: a test could use the file, and no change to it would make the evidence stale."""
    pats = parse_gitignore(gitignore_text)
    return sorted(f for f in tracked
                  if f.split("/")[0] not in _SKIP_TOP and not f.startswith(".") and not is_source(f, pats))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """{path: sha256} of every file under root that can be a source, sorted by path."""
    root = Path(root)
    pats = gitignore_patterns(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        reldir = Path(dirpath).relative_to(root).as_posix()
        reldir = "" if reldir == "." else reldir + "/"
        dirnames[:] = sorted(d for d in dirnames if is_source(reldir + d + "/x", pats))
        for name in filenames:
            rel = reldir + name
            if is_source(rel, pats) and os.path.isfile(os.path.join(dirpath, name)):
                out[rel] = file_sha256(Path(dirpath) / name)
    return dict(sorted(out.items()))


def expand(known, patterns) -> list[str]:
    """The known paths matched by the globs (`**` recurses), sorted."""
    return sorted({p for pat in patterns for p in known if _match(p, pat)})


def _match(path: str, pat: str) -> bool:
    """fnmatch where `*` stays inside one path component and `**` spans any number."""
    def rec(ps, qs):
        if not qs:
            return not ps
        if qs[0] == "**":
            return any(rec(ps[i:], qs[1:]) for i in range(len(ps) + 1))
        return bool(ps) and fnmatch.fnmatchcase(ps[0], qs[0]) and rec(ps[1:], qs[1:])
    return rec(path.split("/"), pat.split("/"))


def card_files(known, story) -> list[str]:
    """A card's hand-listed extra sources; a glob that matches nothing is a card error (a
    typo or a deleted file would otherwise silently drop a dependency)."""
    out = []
    for pat in story.sources:
        hit = expand(known, [pat])
        if not hit:
            raise CardError(f"{story.path}: sources glob {pat!r} matches no file")
        out += hit
    return out


def _module_files(parts: list[str], known) -> list[str]:
    base = "/".join(parts)
    return [f for f in (base + ".py", base + "/__init__.py") if f in known]


def imports_of(rel: str, text: str, known) -> set[str]:
    """Repository files that the module at `rel` imports (module or function scope), one
    level deep: its own import-time dependencies, whether or not their code ran."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return set()
    pkg = rel.split("/")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.update(_module_files(a.name.split("."), known))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else list(pkg)
                if node.level - 1 > len(pkg):
                    continue
            else:
                base = []
            mod = base + (node.module.split(".") if node.module else [])
            if mod:
                out.update(_module_files(mod, known))
            for a in node.names:
                out.update(_module_files(mod + [a.name], known))
    out.discard(rel)
    return out


def package_inits(rel: str, known) -> list[str]:
    parts = rel.split("/")[:-1]
    return [f for f in ("/".join(parts[: i + 1]) + "/__init__.py" for i in range(len(parts))) if f in known]


class Imports:
    """imports_of, cached by file hash (the same files come up for every test)."""

    def __init__(self, root: Path, known: dict):
        self.root, self.known, self._cache = Path(root), known, {}

    def __call__(self, rel: str) -> set[str]:
        key = (rel, self.known.get(rel))
        if key not in self._cache:
            try:
                text = (self.root / rel).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            self._cache[key] = imports_of(rel, text, self.known)
        return self._cache[key]


def story_files(known: dict, imports: Imports, used: set, story=None, cuda: bool = False,
                plugins=(), kernel_globs=()) -> list[str]:
    """Everything one story's records in a run depend on (sorted):
    - `used`: the files its tests used (functions that ran, data files opened, the test
      modules, the files defining the fixtures they requested), plus the repository modules
      those import directly (one level: a module's import-time code is not traced, see
      gates/tracer.py) and their packages' __init__.py;
    - `plugins`: every conftest and repository pytest plugin the run loaded (they can change
      any test's outcome), themselves only: their imports count for the tests that use them;
    - the harness code and pytest configuration (HARNESS_FILES, CONFIG_FILES);
    - the story's card and the extra files it lists;
    - for records from a GPU, the kernel sources the extension is built from (kernel_globs);
    - where the files include a module that builds code at run time (BUILT_FROM:
      gpt_engine/cpu_q4.py compiles csrc_cpu/), the files it builds from."""
    base = {f for f in used if f in known}
    out = set(base)
    for f in base:
        if f.endswith(".py"):
            out |= imports(f)
    out |= {f for f in plugins if f in known}
    for f in list(out):
        out.update(package_inits(f, known))
    out.update(built_from(out, known))
    out.update(f for f in (*HARNESS_FILES, *CONFIG_FILES) if f in known)
    if story is not None:
        card = _rel_card(story)
        if card in known:
            out.add(card)
        out.update(card_files(known, story))
    if cuda:
        out.update(expand(known, kernel_globs))
    return sorted(out)


def _rel_card(story) -> str:
    return f"stories/{Path(story.path).name}"


def built_from(files, known) -> list[str]:
    """The files of `known` that the modules among `files` build or load at run time
    (BUILT_FROM), sorted."""
    files = set(files)
    return expand(known, [g for mod, globs in BUILT_FROM.items() if mod in files for g in globs])


def combine(files: dict[str, str]) -> str:
    """Story hash from {path: file sha256}: covers contents, additions, removals and renames."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return h.hexdigest()


class Tree:
    """The working tree now: file hashes on demand (a verdict hashes only what evidence names)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._pats = gitignore_patterns(self.root)
        self._sha: dict[str, str | None] = {}
        self._all: dict[str, str] | None = None

    def snapshot(self) -> dict[str, str]:
        """Every source now (taken once: files added since a run are looked for here)."""
        if self._all is None:
            self._all = snapshot(self.root)
        return self._all

    def sha(self, rel: str) -> str | None:
        """sha256 of the file now, None when it is gone or no longer counts as a source."""
        if rel not in self._sha:
            p = self.root / rel
            ok = is_source(rel, self._pats) and p.is_file()
            self._sha[rel] = file_sha256(p) if ok else None
        return self._sha[rel]

    def changes(self, recorded: dict[str, str], files) -> tuple[list, list]:
        """(changed, removed) among `files`, against the hashes `recorded` in a run."""
        changed, removed = [], []
        for f in files:
            now = self.sha(f)
            if now is None:
                removed.append(f)
            elif now != recorded.get(f):
                changed.append(f)
        return changed, removed


def hash_stories(root: Path, stories=None) -> Tree:
    """The working tree as the verdict sees it."""
    return Tree(root)
