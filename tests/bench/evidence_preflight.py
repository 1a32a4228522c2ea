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
from gates.audit import Git, env_problems, tree_problems  # noqa: E402


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    git = Git(root)
    tree = sources.snapshot(root)
    at_head, links = git.source_tree("HEAD")
    # the audit's own rules (gates/audit.py), so this check and CI's cannot drift apart
    problems = tree_problems(tree, at_head, git.head or "HEAD")
    problems += [f"tracked symlink: {f}" for f in links]
    problems += env_problems(dict(os.environ))
    for p in problems:
        print(p)
    print(f"{len(tree)} sources, HEAD {git.head}: " + ("the run would count as far as the tree goes" if not problems
                                                           else f"{len(problems)} problem(s): commit or remove them first"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
