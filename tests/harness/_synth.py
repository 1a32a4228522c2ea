"""Synthetic repositories for the harness's own tests: cards, source files, evidence.

Evidence is built with the same writer the plugin uses and hashed from the synthetic tree,
so freshness is exercised for real; nothing here imports the engine.
"""
from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gates import cards, evidence, sources
from gates.paths import resolve

GPU = "NVIDIA H100 80GB HBM3"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


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


class Repo:
    """A tmp repository: root/stories, root/reports/evidence, and source files."""

    def __init__(self, root: Path):
        self.root = root
        (root / "stories").mkdir(parents=True, exist_ok=True)
        (root / "reports" / "evidence").mkdir(parents=True, exist_ok=True)
        self.paths = resolve(root, root / "stories", root / "reports" / "evidence", root / "reports")
        self._n = 0

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def add_card(self, sid, sprint, gate, sources_=(), criteria=(), verdict=None):
        self.write(f"stories/{sid}.toml", card(sid, sprint, gate, sources_, criteria, verdict))

    def gate1_minimal(self):
        """GT-001 (CPU tests), GT-008 (CPU + CUDA tests + LayerNorm-style benchmark), GT-022 verdict."""
        self.write("src/tok.py", "A = 1\n")
        self.write("src/emb.py", "B = 2\n")
        self.add_card("GT-001", 1, "gate1", ["src/tok.py"], [TESTS_CPU])
        self.add_card("GT-008", 2, "gate1", ["src/emb.py"], [TESTS_CPU, TESTS_CUDA, BENCH_LN])
        self.add_card("GT-022", 3, "gate1", [], [], verdict="gate1")

    def stories(self):
        return cards.load_cards(self.paths.stories)

    def run(self, tests=(), benchmarks=(), machine="cpu", minutes=0, collection_errors=()) -> Path:
        """Write one evidence file describing the tree as it is now."""
        self._n += 1
        finished = T0 + timedelta(minutes=minutes or self._n)
        hashes, members, files = sources.hash_stories(self.root, self.stories())
        gpu = GPU if machine != "cpu" else None
        doc = {
            "schema": evidence.SCHEMA_VERSION,
            "run": {"started": evidence.iso(finished - timedelta(seconds=30)), "finished": evidence.iso(finished),
                    "duration_s": 30.0, "exit_status": 0, "args": [], "xdist_workers": 0,
                    "story_filter": [], "interrupted": False},
            "provenance": {"commit": "0123456789abcdef", "dirty": False, "cpu_model": "synthetic",
                           "gpu_name": gpu, "driver": None, "cuda": None, "torch": "2.13.0", "python": "3.11",
                           "machine_class": "cpu" if gpu is None else "nvidia-h100-80gb-hbm3"},
            "baselines": {}, "source_hashes": hashes, "story_files": members, "source_files": files,
            "tests": [], "benchmarks": list(benchmarks), "collection_errors": list(collection_errors),
        }
        for nodeid, stories_, outcome, device in tests:
            doc["tests"].append({"nodeid": nodeid, "stories": list(stories_), "outcome": outcome, "duration": 0.01,
                                 "device": device, "skip_reason": "synthetic skip" if outcome == "skipped" else None,
                                 "message": "synthetic failure" if outcome == "failed" else None})
        return evidence.write(doc, self.paths.evidence)


def metric(name, value, refs, nodeid, stories_, valid=True, reason=None, unit="GB/s", kind="bandwidth",
           device=GPU, params=None, higher_is_better=True):
    ratios = {k: (value / v if higher_is_better else v / value) for k, v in refs.items()}
    return {"name": name, "value": value, "unit": unit, "kind": kind, "higher_is_better": higher_is_better,
            "references": dict(refs), "ratios": ratios, "params": params or {}, "valid": valid,
            "invalid_reason": reason, "device": device, "nodeid": nodeid, "stories": list(stories_)}


def passing_gate1(repo: Repo):
    """Evidence under which the minimal gate1 passes: CPU run + GPU run with a good benchmark."""
    repo.run(tests=[("tests/test_tok.py::test_a", ["GT-001"], "passed", "cpu"),
                    ("tests/test_emb.py::test_ref", ["GT-008"], "passed", "cpu"),
                    ("tests/test_emb.py::test_cuda", ["GT-008"], "skipped", None)])
    repo.run(machine="gpu", tests=[("tests/test_emb.py::test_cuda", ["GT-008"], "passed", GPU),
                                   ("tests/test_emb.py::test_bench", ["GT-008"], "passed", GPU)],
             benchmarks=[metric("layernorm.fp16", 2600.0, {"copy": 3000.0, "torch": 1200.0},
                                "tests/test_emb.py::test_bench", ["GT-008"])])
