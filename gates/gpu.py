"""`python -m gates.gpu`: the CUDA suites and benchmarks on a GPU machine, as one evidence file
and its raw pytest log.

The GPU machines have no nox and the package is not pip-installed there, so this is plain
python (gates/runner.py loads the plugin with -p). It writes to reports/evidence/:
  <finish time>-<gpu>-<commit>.json   the evidence
  <finish time>-<gpu>-<commit>.log    pytest's complete output, with -rA (every test's outcome)
and copies both, plus gpu-summary.txt, to $OUT when set (the only folder that comes back).
Commit both files: a GPU evidence file without its log never counts (gates/audit.py).

The run must name its commit: GPT_ENGINE_GIT_COMMIT=<full sha of the tree being run> where
there is no .git. Usage: python -m gates.gpu [--all] [extra pytest args]
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gates import audit as _audit
from gates import evidence as _evidence
from gates import provenance as _prov
from gates.paths import resolve
from gates.runner import pytest_cmd, pytest_env


def summary(doc: dict) -> str:
    p = doc["provenance"]
    lines = [f"GPU run on {p.get('gpu_name')} (driver {p.get('driver')}, CUDA {p.get('cuda')}, torch {p.get('torch')}), "
             f"commit {p.get('commit')}, dirty {p.get('dirty')}"]
    counts: dict[str, int] = {}
    for t in doc["tests"]:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    lines.append("tests: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for e in doc.get("collection_errors", []):
        lines.append(f"COLLECTION ERROR {e['nodeid']}: {e['message']}")
    for dev, b in doc.get("baselines", {}).items():
        lines.append(f"baseline {dev}: " + ", ".join(f"{k}={v:.1f}" for k, v in b.items()))
    if doc["benchmarks"]:
        lines.append(f"{'metric':<44} {'value':>12} {'unit':<8} ratios")
        for m in doc["benchmarks"]:
            ratios = " ".join(f"{k}={v:.2f}" for k, v in m["ratios"].items() if v is not None)
            flag = "" if m["valid"] else f"  INVALID: {m['invalid_reason']}"
            lines.append(f"{m['name']:<44} {m['value']:>12.4g} {m['unit']:<8} {ratios}{flag}")
    warn = []
    if not p.get("commit"):
        warn.append("no commit recorded (set GPT_ENGINE_GIT_COMMIT)")
    if p.get("dirty"):
        warn.append("dirty tree")
    if doc.get("collection_errors"):
        warn.append("collection errors")
    if doc["run"].get("interrupted"):
        warn.append("interrupted")
    pt = doc.get("pytest", {})
    if pt.get("env"):
        lines.insert(1, "environment: " + " ".join(f"{k}={v}" for k, v in pt["env"].items()))
    warn += _audit.plugin_problems(doc)   # what the verdict will refuse, said here on the GPU machine
    if warn:
        lines.append("THIS RUN WILL NOT COUNT TOWARD ANY GATE: " + "; ".join(warn))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    paths = resolve()
    run_all = "--all" in argv
    argv = [a for a in argv if a != "--all"]
    if not _prov.git_state(paths.root).get("commit"):
        print("warning: no commit (no .git here and GPT_ENGINE_GIT_COMMIT unset): the evidence will not count",
              file=sys.stderr)
    paths.evidence.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in paths.evidence.glob("*.json")}
    # -rA: every test's outcome in the log, which the audit compares with the JSON. An
    # unrelated file that cannot import here still lets the rest run (its error is kept, and
    # the run then does not count: fix the environment and run again).
    # -m cuda, not "cuda or benchmark": the benchmarks without the cuda mark time the CPU
    # (tests/test_cpu_speed.py, test_quality.py) and belong to the CPU machine's evidence; run
    # here they timed another CPU and failed for want of the embedded model's package.
    args = ["-rA", "-q", "--color=no", "--continue-on-collection-errors"] + ([] if run_all else ["-m", "cuda"])
    cmd = pytest_cmd(args + (argv or ["tests"]))
    tmp_log = paths.evidence / ".tmp-gpu-run.log"
    print("+", " ".join(cmd), flush=True)
    with open(tmp_log, "w", encoding="utf-8") as log:
        log.write("+ " + " ".join(cmd) + "\n")
        from gates.pytest_plugin import env_facts     # the variables the evidence records, for the reviewer
        log.write("env: " + " ".join(f"{k}={v}" for k, v in env_facts().items()) + "\n")
        # SIGINT back to its default in pytest: a process started with SIGINT ignored (a background
        # job of a non-interactive shell: `gates.gpu ... &` in a script) passes SIG_IGN on, Python
        # then installs no KeyboardInterrupt handler, and the interrupt below would be lost (the run
        # went on to its end past its time limit; seen in a backgrounded fresh-clone CI run)
        proc = subprocess.Popen(cmd, cwd=paths.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**pytest_env(), "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

        # A time limit's SIGTERM (gpu_session.sh runs this under `timeout`) used to kill this process
        # while pytest's last lines were still in the pipe: the evidence was written, its log never
        # finished, and the run could not count (session 26 lost a whole tests/ops run so). Now the
        # signal is passed on to pytest as an interrupt, and its output is read to the end.
        def stop(signum, frame):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        old_term = signal.signal(signal.SIGTERM, stop)
        old_int = signal.signal(signal.SIGINT, stop)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
    new = sorted(p for p in paths.evidence.glob("*.json") if p.name not in before)
    if not new:
        print(f"no evidence file was written; the log is {tmp_log}", file=sys.stderr)
        return rc or 1
    ev_path = new[-1]
    log_path = _evidence.log_path(ev_path)
    os.replace(tmp_log, log_path)
    doc = _evidence.load_file(ev_path)
    text = summary(doc)
    print()
    print(text)
    print(f"evidence: {ev_path}\nlog:      {log_path}")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy2(log_path, Path(out) / log_path.name)     # the JSON was copied by the plugin
        (Path(out) / "gpu-summary.txt").write_text(text + "\n")
        print(f"copied to {out}: {ev_path.name}, {log_path.name}, gpu-summary.txt")
    return rc


if __name__ == "__main__":
    sys.exit(main())
