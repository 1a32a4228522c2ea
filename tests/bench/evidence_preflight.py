"""Before an evidence call to the GPU machine (gpu_session.sh ops / rest): would this tree's run
count? The audit compares a run's whole source tree with its commit's (gates/audit.py), so an
uncommitted edit or an untracked file where sources live makes the device's run not count, and an
engine setting in the environment does too. Run here, at the repository root, with the commit the
call will name checked out; prints what would be refused, exit 1 if anything.

    python tests/bench/evidence_preflight.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gates import sources  # noqa: E402
from gates.audit import ENGINE_ENV_OK, PROCESS_ENV_REFUSED, Git  # noqa: E402


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    tree = sources.snapshot(root)
    at_head, links = Git(root).source_tree("HEAD")
    problems = [f"untracked: {f}" for f in sorted(set(tree) - set(at_head))]
    problems += [f"missing: {f}" for f in sorted(set(at_head) - set(tree))]
    problems += [f"edited: {f}" for f in sorted(f for f in set(tree) & set(at_head) if tree[f] != at_head[f])]
    problems += [f"tracked symlink: {f}" for f in links]
    problems += [f"engine setting in the environment: {k}" for k in sorted(os.environ)
                 if k.startswith(("GPT_ENGINE_", "GPTE_")) and k not in ENGINE_ENV_OK]
    problems += [f"process setting in the environment: {k}" for k in PROCESS_ENV_REFUSED
                 if os.environ.get(k, "0") not in ("0", "")]
    for p in problems:
        print(p)
    print(f"{len(tree)} sources, HEAD {Git(root).head}: " + ("the run would count as far as the tree goes" if not problems
                                                           else f"{len(problems)} problem(s): commit or remove them first"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
