"""Where the harness looks for things.

Every entry point (pytest plugin, CLI, nox) resolves the repository root, the story-card
folder and the evidence folder here, so the harness's own tests can point all three at a
temporary directory with synthetic cards and evidence.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# gates/ sits at the repository root, so its parent is the root when nothing else is said.
_DEFAULT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    root: Path          # repository root: story `sources` globs are relative to it
    stories: Path       # folder of *.toml story cards
    evidence: Path      # folder of evidence JSON files (one per pytest run)
    reports: Path       # folder for rendered reports, results.csv and gates/<gate>.json


def resolve(root=None, stories=None, evidence=None, reports=None) -> Paths:
    """Explicit argument > environment variable > the repository's own layout."""
    root_p = Path(root or os.environ.get("GPT_ENGINE_ROOT") or _DEFAULT_ROOT).resolve()
    stories_p = Path(stories or os.environ.get("GPT_ENGINE_STORIES_DIR") or root_p / "stories")
    evidence_p = Path(evidence or os.environ.get("GPT_ENGINE_EVIDENCE_DIR") or root_p / "reports" / "evidence")
    reports_p = Path(reports or os.environ.get("GPT_ENGINE_REPORTS_DIR") or root_p / "reports")
    return Paths(root_p, stories_p.resolve(), evidence_p.resolve(), reports_p.resolve())
