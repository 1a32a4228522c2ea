"""sha256 of each story's `sources`: what makes evidence stale.

The same rules must give the same hash on CI (a git checkout) and on the GPU machine (a
copy of the working tree without .git, with build outputs lying around), so file listing
does not use git: it globs the filesystem and drops build outputs by fixed rules.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
from pathlib import Path

# Build and cache outputs never count as sources: a JIT build folder or bytecode beside the
# code must not make evidence look stale. Keep build outputs in dot-folders or build/.
_SKIP_DIRS = {"__pycache__", "build", "_build", "dist", "node_modules"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".o", ".a", ".obj", ".dll", ".dylib", ".ninja_log", ".ninja_deps"}


_SKIP_NAMES = {"build.ninja"}


def _counts(rel: str) -> bool:
    parts = rel.split("/")
    if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in parts):
        return False
    if parts[-1] in _SKIP_NAMES:
        return False
    return not any(rel.endswith(s) for s in _SKIP_SUFFIXES)


def gitignore_patterns(root: Path) -> list[tuple[str, bool, bool]]:
    """The root .gitignore as (pattern, anchored, dir_only). It travels with the tree (unlike
    .git/info/exclude), so CI and the GPU copy read the same rules. Negations are ignored."""
    try:
        lines = (Path(root) / ".gitignore").read_text().splitlines()
    except OSError:
        return []
    pats = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("!"):
            continue
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = line.startswith("/") or "/" in line
        pats.append((line.lstrip("/"), anchored, dir_only))
    return pats


def ignored(rel: str, pats) -> bool:
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


def expand(root: Path, patterns, pats=None) -> list[str]:
    """Files (posix paths relative to root) matched by the globs, sorted. `**` recurses.
    Build outputs and whatever the root .gitignore ignores never count."""
    pats = gitignore_patterns(root) if pats is None else pats
    out = set()
    for pat in patterns:
        for rel in glob.glob(pat, root_dir=root, recursive=True):
            rel = Path(rel).as_posix()
            if _counts(rel) and not ignored(rel, pats) and (root / rel).is_file():
                out.add(rel)
    return sorted(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def combine(files: dict[str, str]) -> str:
    """Story hash from {path: file sha256}: covers contents, additions, removals and renames."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return h.hexdigest()


def hash_stories(root: Path, stories) -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """(story id -> hash, story id -> its files, path -> file sha256) for the tree at `root`."""
    root = Path(root)
    cache: dict[str, str] = {}
    hashes, members = {}, {}
    pats = gitignore_patterns(root)
    for s in stories.values():
        files = expand(root, s.sources, pats)
        for rel in files:
            if rel not in cache:
                cache[rel] = file_sha256(root / rel)
        members[s.id] = files
        hashes[s.id] = combine({rel: cache[rel] for rel in files})
    return hashes, members, dict(sorted(cache.items()))
