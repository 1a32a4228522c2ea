"""Story statuses over time, replayed from the evidence history.

After each evidence run, the verdict is computed again from the runs up to that moment, with
that run's own source hashes standing for "the working tree then" (every evidence file
records the hash of every story's sources). So a run counts exactly as it did the day it
was written, whatever changed since. The story cards are today's: the evidence does not
record older cards. The last point is the verdict for the working tree now.
"""
from __future__ import annotations

from datetime import datetime, timezone

from gates.verdict import Evaluator

MAX_POINTS = 40   # newest runs replayed; each replay reads every earlier run once more
NOW = "now (working tree)"


def _counts(ev: Evaluator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in ev.all_stories():
        if not r.story.is_verdict:
            counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def _when(run) -> datetime:
    return datetime.strptime(run["run"]["finished"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def status_history(stories: dict, runs: list, current: tuple, now: datetime) -> list[tuple[datetime, dict, str]]:
    """[(time, {status: number of stories}, label)] oldest first, one point per run and "now"."""
    ordered = sorted(runs, key=lambda r: (r["run"]["finished"], r["_file"]))
    points = []
    for k in range(max(0, len(ordered) - MAX_POINTS), len(ordered)):
        run = ordered[k]
        then = (run.get("source_hashes", {}), run.get("story_files", {}), run.get("source_files", {}))
        points.append((_when(run), _counts(Evaluator(stories, ordered[: k + 1], then)), run["_file"]))
    points.append((now, _counts(Evaluator(stories, ordered, current)), NOW))
    return points
