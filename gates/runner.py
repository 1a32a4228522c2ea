"""Starting pytest the way the harness's evidence must be made.

Entry-point plugins are switched off (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1) and the two the
project uses are named: evidence lists every active plugin, and a run with any other (anyio,
a plugin someone pip-installed) never counts (gates/audit.py). The same command works with
the package pip-installed (CI) or only on PYTHONPATH (the GPU machine).
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

PLUGIN = "gates.pytest_plugin"


def xdist_available() -> bool:
    try:
        importlib.metadata.version("pytest-xdist")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def pytest_cmd(args: list[str], paths=None) -> list[str]:
    own = ["-p", PLUGIN] + (["-p", "xdist"] if xdist_available() else [])
    where = [] if paths is None else ["--repo-root", str(paths.root), "--stories-dir", str(paths.stories),
                                      "--evidence-dir", str(paths.evidence)]
    return [sys.executable, "-m", "pytest", *own, *where, *args]


def pytest_env() -> dict:
    return {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def run_pytest(args: list[str], cwd=None, paths=None) -> int:
    cmd = pytest_cmd(args, paths)
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=cwd, env=pytest_env())
