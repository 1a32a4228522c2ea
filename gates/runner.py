"""Starting pytest with the evidence plugin, whether or not the package is pip-installed."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys

PLUGIN = "gates.pytest_plugin"


def plugin_installed() -> bool:
    """True when pyproject's pytest11 entry point is installed (pip install -e .)."""
    return any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))


def plugin_args() -> list[str]:
    # pluggy refuses one module registered under two names, so `-p gates.pytest_plugin` is
    # passed only where the entry point is absent (the GPU machine: code on PYTHONPATH).
    return [] if plugin_installed() else ["-p", PLUGIN]


def xdist_available() -> bool:
    try:
        importlib.metadata.version("pytest-xdist")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def run_pytest(args: list[str], cwd=None) -> int:
    cmd = [sys.executable, "-m", "pytest", *plugin_args(), *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=cwd)
