"""Which files a test used: every Python function that ran and every file opened while it ran.

A story's evidence goes stale when a file its tests used changes. The plugin measures that
set per test instead of trusting a hand-written list: a hook notes the file of every Python
function that starts, and an audit hook notes every data file opened (JSON cases,
templates). Scopes nest: the test, and inside it each fixture's setup, so a fixture set up
once per session is charged to every test that uses it, not only to the first.

Module and class bodies are not noted: they run when a module is first imported, which
happens once per process in whichever test (or test module) imports it first, so noting
them would charge a package's whole import closure (gpt_engine/ops/__init__.py imports every
op) to one arbitrary test. A module's import-time dependencies are covered instead by the
static imports of the files whose functions ran (gates/sources.py).

The hook: on Python >= 3.12, sys.monitoring's PY_START event, disabled for each function
after its first start in a scope (nearly free); on 3.11, sys.settrace on 'call' events
(returning None: no line tracing), which makes Python code about twice as slow. Either way
the bench fixture pauses it while it times; the functions it times already ran (and were
noted) during the warm-up calls.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading

_ACTIVE = None        # the process's Tracer, once the plugin made one
_CO_OPTIMIZED = 0x1   # inspect.CO_OPTIMIZED: set on functions, lambdas and comprehensions only
_NAME = "gates-tracer"


class Tracer:
    def __init__(self):
        self._sink = None          # set of absolute paths for the innermost open scope
        self._stack = []
        self._paused = 0
        self.displaced = []        # what replaced the hook (a debugger, coverage...)
        self._mon = getattr(sys, "monitoring", None)
        self._tool = None
        if self._mon is not None:
            free = [t for t in (3, 4, 2, 1) if self._mon.get_tool(t) is None]
            if free:
                self._tool = free[0]
                self._mon.use_tool_id(self._tool, _NAME)
                self._mon.register_callback(self._tool, self._mon.events.PY_START, self._start)
        self._fn = self._trace     # one bound method, so `sys.gettrace() is self._fn` can hold
        sys.addaudithook(self._audit)   # audit hooks cannot be removed: it checks _sink first

    # ---- the hooks ----
    def _start(self, code, offset):
        sink = self._sink
        if sink is not None and code.co_flags & _CO_OPTIMIZED:   # a function, not a module or class body
            sink.add(code.co_filename)
        return self._mon.DISABLE   # once per scope is enough: restart_events() re-arms it

    def _trace(self, frame, event, arg):
        sink = self._sink
        if sink is not None:
            code = frame.f_code
            if code.co_flags & _CO_OPTIMIZED:
                sink.add(code.co_filename)
        return None

    def _audit(self, event, args):
        if event != "open" or self._sink is None or not args:
            return
        p = args[0]
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if isinstance(p, str) and not p.endswith((".py", ".pyc")):   # code is the hook's business
            self._sink.add(p if os.path.isabs(p) else os.path.abspath(p))

    # ---- switching the hook on and off ----
    def _install(self):
        if self._tool is not None:
            self._mon.restart_events()
            self._mon.set_events(self._tool, self._mon.events.PY_START)
        else:
            sys.settrace(self._fn)
            threading.settrace(self._fn)

    def _uninstall(self):
        if self._tool is not None:
            self._mon.set_events(self._tool, 0)
        else:
            sys.settrace(None)
            threading.settrace(None)

    def _installed(self) -> bool:
        if self._tool is not None:
            return self._mon.get_tool(self._tool) == _NAME and bool(self._mon.get_events(self._tool))
        return sys.gettrace() is self._fn

    def _describe_replacement(self) -> str:
        if self._tool is not None:
            return f"sys.monitoring tool {self._tool} is now {self._mon.get_tool(self._tool)!r}"
        return f"the trace function was replaced by {sys.gettrace()!r}"

    # ---- scopes ----
    def begin(self, code: bool = True) -> set:
        """Open a scope; the returned set fills with the absolute paths of the files used in it.
        code=False: data files only (a test module's import, see the module docstring)."""
        scope = set()
        self._stack.append((self._sink, self._installed()))
        self._sink = scope
        if code and not self._paused:
            self._install()
        elif not code:
            self._uninstall()
        return scope

    def end(self, scope: set, what: str, code: bool = True) -> set:
        if code and not self._paused and not self._installed():
            self.displaced.append(f"{what}: {self._describe_replacement()}")
        self._sink, was_installed = self._stack.pop()
        if was_installed:
            self._install()      # the outer scope sees every function again, once
        else:
            self._uninstall()
        return scope

    @contextlib.contextmanager
    def paused(self):
        self._paused += 1
        was = self._installed()
        if was:
            self._uninstall()
        try:
            yield
        finally:
            self._paused -= 1
            if was and not self._paused:
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
