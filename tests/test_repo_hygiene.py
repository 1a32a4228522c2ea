"""What a newcomer meets around the code: nox says nothing about tools the project does not
use, and nothing in the repository points at files outside it (a clone is all one has)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# References to documents a clone does not have: the shared folder the project was planned in,
# its planning files, and issue numbers of a tracker that is not part of the repository.
OUTSIDE = re.compile(r"\.\./shared\b|/work/|\b(?:STORIES|DESIGN|GPU)\.md\b|\bissues? #?\d+\b|\bdesign card\b",
                     re.IGNORECASE)
# Evidence files and their raw logs are machine output (they record how and where a run was
# invoked), not prose that refers the reader somewhere; this file has to spell the patterns out.
NOT_PROSE = re.compile(r"^reports/evidence/.*\.(json|log)$|^tests/test_repo_hygiene\.py$")
# Known debt: none left. A reference that has to stay would be listed here as (file, match); the
# list only shrinks (a fixed line fails this test until its entry is removed).
KNOWN: set[tuple[str, str]] = set()


def tracked() -> list[str]:
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"not a git checkout ({r.stderr.decode().strip()}): cannot list the repository's files")
    return [p for p in r.stdout.decode().split("\0") if p]


@pytest.mark.story("GT-047")
def test_nothing_refers_to_files_outside_the_repository():
    found: set[tuple[str, str]] = set()
    where: dict[tuple[str, str], str] = {}
    for rel in tracked():
        path = ROOT / rel
        if NOT_PROSE.match(rel) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue   # binary
        for n, line in enumerate(text.splitlines(), 1):
            for m in OUTSIDE.finditer(line):
                key = (rel, m.group(0))
                found.add(key)
                where.setdefault(key, f"{rel}:{n}: {line.strip()[:120]}")
    new = sorted(found - KNOWN)
    assert not new, "references to files outside the repository:\n" + "\n".join(where[k] for k in new)
    gone = sorted(KNOWN - found)
    assert not gone, f"fixed, so remove from KNOWN in {Path(__file__).name}: {gone}"


@pytest.mark.story("GT-047")
def test_every_relative_link_in_the_docs_resolves():
    files = set(tracked())
    folders = {str(Path(f).parent) for f in files}
    checked = 0
    for rel in sorted(f for f in files if f.endswith(".md") and not f.startswith("reports/")):
        text = (ROOT / rel).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(Path(rel).parent / target.split("#")[0])
            assert path in files or path in folders, f"{rel}: link to {target} ({path}) is not in the repository"
            checked += 1
    assert checked >= 5


@pytest.mark.story("GT-042")
def test_nox_prints_nothing_about_uv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    # a repository with no enforced gates: `enforce` runs a real session and exits 0
    (tmp_path / "stories").mkdir()
    (tmp_path / "reports" / "evidence").mkdir(parents=True)
    env.update(GPT_ENGINE_ROOT=str(tmp_path), GPT_ENGINE_STORIES_DIR=str(tmp_path / "stories"),
               GPT_ENGINE_EVIDENCE_DIR=str(tmp_path / "reports" / "evidence"),
               GPT_ENGINE_REPORTS_DIR=str(tmp_path / "reports"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py"), "-s", "enforce"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Running session enforce" in out
    assert not re.search(r"\buv\b", out), out
