"""nox sessions: CI runs `nox -s tests` and `nox -s gate1`; engineers run `nox -s story -- GT-011`.

Every session runs in the environment nox itself runs in (venv_backend="none"): the README's
first command builds .venv with every dependency pinned (torch 2.13.0 CPU in particular), a
per-session virtualenv would re-download multi-GB wheels and could resolve a different torch,
and reusing the one environment makes a rerun instant. The logic lives in the gates package
(`python -m gates ...`), so the GPU machine, which has no nox, runs the same code.
"""
import sys

import nox
import nox.virtualenv
from packaging.version import Version

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]
nox.options.error_on_external_run = False
# No session creates a virtualenv, so uv is never used; said here, nox stops looking for it
# in every session (and printing "uv binary not found").
nox.virtualenv.HAS_UV, nox.virtualenv.UV, nox.virtualenv.UV_VERSION = False, "uv", Version("0")

PY = sys.executable   # the interpreter running nox: .venv's python


def _gates(session, *args):
    session.run(PY, "-m", "gates", *args, external=True)


@nox.session
def tests(session):
    """The full CPU suite in parallel (pytest-xdist); writes one evidence file."""
    _gates(session, "tests", *session.posargs)


@nox.session
def story(session):
    """One story's tests and benchmarks, then its status; exit 0 iff verified: nox -s story -- GT-011."""
    if not session.posargs:
        session.error("name the story: nox -s story -- GT-0xx")
    _gates(session, "story", *session.posargs)


def _gate_session(name):
    @nox.session(name=name)
    def _gate(session):
        _gates(session, "gate", name, *session.posargs)
    _gate.__doc__ = (f"Run the CPU tests {name} lacks fresh evidence for, then judge it: exit 0 iff it passes; "
                     f"reports/gates/{name}.json (-- --no-run: judge only).")
    return _gate


gate1 = _gate_session("gate1")
gate2 = _gate_session("gate2")
gate3 = _gate_session("gate3")
m0 = _gate_session("m0")


@nox.session
def gpu(session):
    """CUDA suites + benchmarks on a GPU machine (same as `python -m gates.gpu`)."""
    session.run(PY, "-m", "gates.gpu", *session.posargs, external=True)


@nox.session
def report(session):
    """results.csv, progress.{html,md}, m0_readiness.{html,md} and reports/gates/*.json."""
    _gates(session, "report")


@nox.session
def evidence(session):
    """Every evidence file: whether it counts toward gates and why not; exit 1 if committed evidence was edited."""
    _gates(session, "evidence")


@nox.session
def enforce(session):
    """Fail if a gate listed in .ci/enforced_gates fails or committed evidence was edited (CI calls it)."""
    _gates(session, "enforce")
