"""The expected test set: every test of every story and device, from pytest's own collection.

A tests criterion passes only when every test the tree has for that story and device has a
fresh passing record, so the verdict must know the tests independently of what any run
reported: a run with `-k`, `--deselect`, `-m`, `--story` or a subset of files says nothing
about the tests it left out, and those stay missing.

Collection runs in a subprocess with pytest's own plugins and ours only
(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), the project's addopts cleared (`--deselect` in pyproject
must not shrink the set) and items recorded as they are created, before any deselection. It
takes seconds, so the result is cached under .cache/gates/ by the hash of every source file
in the tree and of the installed distributions: any change to a test, a conftest, a card,
the engine or the environment collects again. A cache file is read only when git says it is
this machine's own (ignored and untracked): a committed one is a file anyone could have
written (a test dropped from it would vanish from the expected set), so it is never read,
never overwritten, and the set is collected afresh instead. A digest inside the file would
not help: whoever edits the file can recompute it.

What collection cannot see is reported per story instead of dropped: a test module that is
skipped at collection (a module-level importorskip), fails to import, holds a test with a bad
marker, or is not collected at all (an --ignore or a conftest's collect_ignore) makes every
story it names incomplete, and every story when it names none.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gates import sources as _sources

FORMAT = 1


class ManifestError(Exception):
    """Collection itself failed; the message says how."""


class Manifest:
    def __init__(self, doc: dict):
        self.items = doc["items"]
        self.problems = doc["problems"]

    def expected(self, sid: str, device: str, keyword: str | None = None, benchmark_only: bool = False) -> list[str]:
        """Node ids of the story's tests on `device` ("cuda": marked cuda; "cpu": the others)."""
        return [i["nodeid"] for i in self.items
                if sid in i["stories"] and i["cuda"] == (device == "cuda")
                and (not keyword or keyword in i["nodeid"]) and (i["benchmark"] or not benchmark_only)]

    def problems_for(self, sid: str) -> list[str]:
        return [f"{p['path']} {p['problem']}" + (f" ({p['reason']})" if p.get("reason") else "")
                for p in self.problems if p["stories"] is None or sid in p["stories"]]

    def has_tests(self, sid: str) -> bool:
        return any(sid in i["stories"] for i in self.items)


def key(root: Path, known: dict) -> str:
    """The tree's source files, the interpreter and every installed distribution (a module
    that importorskips a package collects differently once the package is installed)."""
    import importlib.metadata
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    h = hashlib.sha256(f"{FORMAT}\0{sys.version}\0{'|'.join(dists)}\0".encode())
    h.update(_sources.combine(known).encode())
    return h.hexdigest()[:32]


def cache_path(root: Path, k: str) -> Path:
    return Path(root) / ".cache" / "gates" / f"manifest-{k}.json"


def own_cache(root: Path, path: Path) -> bool:
    """Whether git ignores `path` and does not track it: a cache this machine wrote. Anything
    else (a tracked file, a path through a symlink, no git at all) is not trusted."""
    try:
        rel = Path(path).relative_to(root).as_posix()
        r = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", rel],
                           capture_output=True, timeout=60)
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def collect(root: Path, stories_dir: Path, out: Path) -> None:
    root = Path(root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "OUT")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-p", "gates.pytest_plugin", "--collect-only", "-q",
           "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(root),
           "--repo-root", str(root), "--stories-dir", str(stories_dir), "--write-manifest", str(out), "tests"]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if not out.is_file():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise ManifestError(f"collecting the expected test set failed (exit {r.returncode}):\n{tail}")


def load(root: Path, stories_dir: Path | None = None, known: dict | None = None) -> Manifest:
    root = Path(root)
    known = _sources.snapshot(root) if known is None else known
    if not (root / "tests").is_dir():
        return Manifest({"items": [], "problems": []})
    stories_dir = Path(stories_dir or root / "stories")
    path = cache_path(root, key(root, known))
    if not own_cache(root, path):
        with tempfile.TemporaryDirectory(prefix="gates-manifest-") as tmp:
            out = Path(tmp) / path.name
            collect(root, stories_dir, out)
            return _read(out)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        collect(root, stories_dir, path)
    return _read(path)


def _read(path: Path) -> Manifest:
    try:
        return Manifest(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        path.unlink(missing_ok=True)
        raise ManifestError(f"{path}: corrupt cached test set ({e}); it was removed, run again") from None
