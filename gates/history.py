"""Story statuses over time, replayed from the evidence history.

After each evidence run k, the verdict is computed again from the runs up to that moment,
against the tree "as of run k": every file has the newest hash that a counted run up to k
recorded for it (each run records the sha256 of every file its stories' tests used). So a
run is fresh at point k exactly when no later counted run up to k saw one of its files
changed. Runs the audit does not count (a dirty tree, a foreign plugin, schema 1 history)
neither count nor move the tree: an experiment on uncommitted code is no state of the
project's history, and the verdict after it is the verdict before it.

What the replay takes from today, because the evidence does not record it: the story cards
and the catalog, the expected test set (collection of today's tests: a story that gained
tests since shows incomplete at the older points, never more verified than it was), and the
audit of every file (computed once, with the git history of today). The last point is the
verdict for the working tree now, the one the rest of the report shows.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from gates.sources import Tree
from gates.verdict import Evaluator

MAX_POINTS = 40   # newest runs replayed; each replay judges every story again
NOW = "now (working tree)"


class TreeAsOf(Tree):
    """The tree as the counted evidence saw it after a run: file hashes from the runs'
    records, never from the disk. A file no counted run had recorded by then reads as absent."""

    def __init__(self, root: Path, sha: dict[str, str]):
        super().__init__(root)
        self._sha = dict(sha)

    def sha(self, rel: str) -> str | None:
        return self._sha.get(rel)


def _counts(ev: Evaluator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in ev.all_stories():
        if not r.story.is_verdict:
            counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def _when(run) -> datetime:
    return datetime.strptime(run["run"]["finished"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def status_history(ev: Evaluator, now: datetime) -> list[tuple[datetime, dict, str]]:
    """[(time, {status: number of stories}, label)] oldest first: one point per run (the
    newest MAX_POINTS) and the last one for `ev`, the verdict on the working tree now.
    The replays reuse ev's catalog, expected test set and audits: nothing is collected or
    audited again per point."""
    ordered = sorted(ev.runs, key=lambda r: (r["run"]["finished"], r["_file"]))
    first = max(0, len(ordered) - MAX_POINTS)
    seen: dict[str, str] = {}

    def saw(run):
        if ev.audits[run["_file"]].counts:
            seen.update(run.get("source_files", {}))

    for run in ordered[:first]:
        saw(run)
    points = []
    for k in range(first, len(ordered)):
        run = ordered[k]
        saw(run)
        then = Evaluator(ev.stories, ordered[: k + 1], TreeAsOf(ev.tree.root, seen), catalog=ev.catalog,
                         manifest=ev.manifest, audits=(ev.audits, ev.gone))
        points.append((_when(run), _counts(then), run["_file"]))
    points.append((now, _counts(ev), NOW))
    return points
