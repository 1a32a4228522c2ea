"""`python -m gates.gpu`: the CUDA suites and benchmarks on a GPU machine, as one evidence file.

The GPU machines have no nox and the package is not pip-installed there, so this is plain
python; the plugin is loaded with -p when its entry point is absent. The evidence JSON is
written to reports/evidence/ and copied to $OUT (the only folder that comes back), with the
log beside it. Usage: python -m gates.gpu [--all] [extra pytest args, e.g. -k layernorm -x]
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gates import evidence as _evidence
from gates.paths import resolve
from gates.runner import plugin_args


def summary(doc: dict) -> str:
    p = doc["provenance"]
    lines = [f"GPU run on {p.get('gpu_name')} (driver {p.get('driver')}, CUDA {p.get('cuda')}, torch {p.get('torch')})"]
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
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    paths = resolve()
    run_all = "--all" in argv
    argv = [a for a in argv if a != "--all"]
    before = {p.name for p in paths.evidence.glob("*.json")} if paths.evidence.is_dir() else set()
    cmd = [sys.executable, "-m", "pytest", *plugin_args(), "-rs", "-q",
           # an unrelated file that cannot import here (a missing oracle package) must not
           # waste a GPU session; the error is kept in the evidence's collection_errors
           "--continue-on-collection-errors"]
    if not run_all:
        cmd += ["-m", "cuda or benchmark"]
    cmd += argv or ["tests"]
    print("+", " ".join(cmd), flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / "gpu-run.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=paths.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
    else:
        rc = subprocess.call(cmd, cwd=paths.root)
    new = sorted(p for p in paths.evidence.glob("*.json") if p.name not in before) if paths.evidence.is_dir() else []
    if not new:
        print("no evidence file was written", file=sys.stderr)
        return rc or 1
    doc = _evidence.load_file(new[-1])
    print()
    print(summary(doc))
    print(f"evidence: {new[-1]}" + (f" (copied to {out})" if out else ""))
    if out:
        (Path(out) / "gpu-summary.txt").write_text(summary(doc) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
