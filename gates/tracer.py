"""Which files a test used: every Python function that ran and every file opened while it ran.

A story's evidence goes stale when a file its tests used changes. The plugin measures that
set per test instead of trusting a hand-written list: a trace function notes the file of
every Python function that starts (only 'call' events: it returns None, so there is no line
tracing), and an audit hook notes every data file opened (JSON cases, templates). Scopes
nest: the test, and inside it each fixture's setup, so a fixture set up once per session is
charged to every test that uses it, not only to the first.

Module and class bodies are not noted: they run when a module is first imported, which
happens once per process in whichever test (or test module) imports it first, so noting
them would charge a package's whole import closure (gpt_engine/ops/__init__.py imports every
op) to one arbitrary test. A module's import-time dependencies are covered instead by the
static imports of the files whose functions ran (gates/sources.py).

sys.settrace makes Python code slower, so the bench fixture pauses tracing while it times;
the functions it times already ran (and were noted) during the warm-up calls.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

_ACTIVE = None        # the process's Tracer, once the plugin made one
_CO_OPTIMIZED = 0x1   # inspect.CO_OPTIMIZED: set on functions, lambdas and comprehensions only


class Tracer:
    def __init__(self):
        self._sink = None          # set of absolute paths for the innermost open scope
        self._stack = []
        self._paused = 0
        self.displaced = []        # what replaced the trace function (a debugger, coverage...)
        self._fn = self._trace     # one bound method, so `sys.gettrace() is self._fn` can hold
        sys.addaudithook(self._audit)   # audit hooks cannot be removed: it checks _sink first

    def _trace(self, frame, event, arg):
        sink = self._sink
        if sink is not None:
            code = frame.f_code
            if code.co_flags & _CO_OPTIMIZED:      # a function, not a module or class body
                sink.add(code.co_filename)
        return None

    def _audit(self, event, args):
        if event != "open" or self._sink is None or not args:
            return
        p = args[0]
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if isinstance(p, str) and not p.endswith((".py", ".pyc")):   # code is the trace's business
            self._sink.add(p if os.path.isabs(p) else os.path.abspath(p))

    def _install(self):
        sys.settrace(self._fn)
        threading.settrace(self._fn)

    def _uninstall(self):
        sys.settrace(None)
        threading.settrace(None)

    def begin(self, code: bool = True) -> set:
        """Open a scope; the returned set fills with the absolute paths of the files used in it.
        code=False: data files only (a test module's import, see the module docstring)."""
        scope = set()
        self._stack.append((self._sink, sys.gettrace() is self._fn))
        self._sink = scope
        if code and not self._paused:
            self._install()
        elif not code:
            self._uninstall()
        return scope

    def end(self, scope: set, what: str, code: bool = True) -> set:
        current = sys.gettrace()
        if code and not self._paused and current is not self._fn:
            self.displaced.append(f"{what}: the trace function was replaced by {current!r}")
        self._sink, traced = self._stack.pop()
        if traced:
            self._install()
        else:
            self._uninstall()
        return scope

    @contextlib.contextmanager
    def paused(self):
        self._paused += 1
        was = sys.gettrace()
        if was is self._fn:
            self._uninstall()
        try:
            yield
        finally:
            self._paused -= 1
            if was is self._fn and not self._paused:
                self._install()


def start() -> Tracer:
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = Tracer()
    return _ACTIVE


@contextlib.contextmanager
def paused():
    """No tracing inside (timed loops); a no-op where no tracer runs."""
    if _ACTIVE is None:
        yield
    else:
        with _ACTIVE.paused():
            yield
