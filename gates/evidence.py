"""Evidence files: one JSON per pytest run in reports/evidence/ (schema in docs/harness.md).

Loading is strict: a corrupt, truncated or malformed file raises EvidenceError naming the
file. It is never skipped, because a silently dropped file could hide a failure. Whether a
well-formed file may count toward a gate is gates/audit.py's question.

Schema 1 files (the H100 runs of sprints 2-3) predate per-test sources, raw logs and the
audit: they load as history (`_history`), are shown in reports, and never count.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 2
HISTORY_SCHEMAS = (1,)
OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")


class EvidenceError(Exception):
    """An evidence file cannot be used; the message starts with its path."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_name(finished: datetime, machine_class: str, commit: str | None) -> str:
    return f"{finished.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{machine_class}-{(commit or 'nocommit')[:10]}.json"


def write(doc: dict, folder: Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated file; also
    copy to $OUT when set (the GPU machine brings back only what is under $OUT)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    finished = datetime.strptime(doc["run"]["finished"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    name = file_name(finished, doc["provenance"]["machine_class"], doc["provenance"].get("commit"))
    path = folder / name
    n = 1
    while path.exists():
        n += 1
        path = folder / name.replace(".json", f"-{n}.json")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".partial")  # never matches *.json
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)      # mkstemp makes 0600; evidence is shared and committed
    os.replace(tmp, path)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(out) / path.name)
    return path


_REQUIRED = {
    "schema": int, "run": dict, "provenance": dict, "source_hashes": dict,
    "source_files": dict, "tests": list, "benchmarks": list,
}
_REQUIRED_2 = {"pytest": dict, "story_files": dict, "baselines": dict, "collection_errors": list}
_TEST_KEYS = {"nodeid": str, "stories": list, "outcome": str, "duration": (int, float)}
_METRIC_KEYS = {"name": str, "value": (int, float), "unit": str, "kind": str, "references": dict,
                "ratios": dict, "params": dict, "valid": bool, "nodeid": str, "stories": list}


def _check(path: Path, doc) -> dict:
    def bad(msg):
        raise EvidenceError(f"{path}: {msg}")
    if not isinstance(doc, dict):
        bad("top level is not a JSON object")
    for k, t in _REQUIRED.items():
        if k not in doc:
            bad(f"missing key {k!r} (not an evidence file, or truncated)")
        if not isinstance(doc[k], t):
            bad(f"key {k!r} should be {t.__name__}")
    if doc["schema"] != SCHEMA_VERSION and doc["schema"] not in HISTORY_SCHEMAS:
        bad(f"schema {doc['schema']} not supported (this harness reads {SCHEMA_VERSION}, and {HISTORY_SCHEMAS} as history)")
    if doc["schema"] == SCHEMA_VERSION:
        for k, t in _REQUIRED_2.items():
            if not isinstance(doc.get(k), t):
                bad(f"key {k!r} missing or not a {t.__name__}")
    for k in ("finished", "started"):
        try:
            datetime.strptime(doc["run"].get(k, ""), "%Y-%m-%dT%H:%M:%SZ")
        except (TypeError, ValueError):
            bad(f"run.{k} is not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ")
    if "machine_class" not in doc["provenance"]:
        bad("provenance.machine_class missing")
    for i, t in enumerate(doc["tests"]):
        for k, typ in _TEST_KEYS.items():
            if not isinstance(t, dict) or not isinstance(t.get(k), typ):
                bad(f"tests[{i}].{k} missing or of the wrong type")
        if t["outcome"] not in OUTCOMES:
            bad(f"tests[{i}].outcome {t['outcome']!r} not in {OUTCOMES}")
    for i, m in enumerate(doc["benchmarks"]):
        for k, typ in _METRIC_KEYS.items():
            if not isinstance(m, dict) or not isinstance(m.get(k), typ):
                bad(f"benchmarks[{i}].{k} missing or of the wrong type")
    return doc


def load_file(path: Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvidenceError(f"{path}: cannot read ({e})") from None
    if not text.strip():
        raise EvidenceError(f"{path}: empty file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvidenceError(f"{path}: not valid JSON, truncated or corrupt ({e.msg} at line {e.lineno} column {e.colno})") from None
    doc = _check(path, doc)
    doc["_file"] = path.name
    doc["_path"] = str(path)
    doc["_history"] = doc["schema"] in HISTORY_SCHEMAS
    return doc


def load_all(folder: Path) -> list[dict]:
    """Every *.json in the folder, oldest first (by run.finished, then name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    docs = [load_file(p) for p in sorted(folder.glob("*.json"))]
    return sorted(docs, key=lambda d: (d["run"]["finished"], d["_file"]))


def log_path(path: Path) -> Path:
    """The raw pytest log that comes with an evidence file: same name, .log."""
    return Path(path).with_suffix(".log")


def prune(folder: Path, keep: int, dry_run: bool = False, committed=frozenset()) -> list[Path]:
    """Keep the newest `keep` runs per machine class; return the removed files. Files in
    `committed` (names of files git has ever held) are history and are never removed: a
    failing run cannot be pruned away to let an older passing one decide."""
    if keep < 1:
        raise ValueError("--keep must be >= 1")
    by_class: dict[str, list[dict]] = {}
    for d in load_all(folder):
        if d["_file"] not in committed:
            by_class.setdefault(d["provenance"]["machine_class"], []).append(d)
    removed = []
    for docs in by_class.values():
        for d in docs[:-keep]:
            p = Path(folder) / d["_file"]
            removed.append(p)
            if not dry_run:
                p.unlink()
                log_path(p).unlink(missing_ok=True)
    return sorted(removed)
