"""Compiles every csrc/*.cu with nvcc alone (no torch), as CI does on a machine without a GPU.

    python -m gpt_engine.ops.compile_check [--nvcc PATH] [-j N]

Exit status 0 when every file compiles for sm_90a; prints each file's register / spill report.
A ptxas "Potential Performance Loss" note (C75xx: wgmma serialized, setmaxnreg ignored) also
fails the check: the kernel would compile but run on a slow path.
The .cu files include no torch headers, so this proves the kernels build without a CUDA
build of torch; bindings.cpp (the torch glue) is only built where CUDA torch is installed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

from gpt_engine.ops._ext import CSRC, NVCC_ARCH


def compile_one(nvcc: str, src, outdir: str) -> tuple[str, int, str]:
    cmd = [nvcc, NVCC_ARCH, "-std=c++17", "-O3", "-Xptxas=-v", "-I", str(CSRC), "-c", str(src),
           "-o", os.path.join(outdir, src.stem + ".o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return src.name, r.returncode, r.stdout + r.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvcc", default=os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    if not os.path.exists(args.nvcc):
        print(f"compile_check: nvcc not found ({args.nvcc}); set NVCC or PATH", file=sys.stderr)
        return 2
    sources = sorted(p for p in CSRC.glob("*.cu") if not p.name.startswith("."))  # as _ext.sources()
    if not sources:
        print(f"compile_check: no .cu files in {CSRC}", file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.j) as pool:
        for name, rc, log in pool.map(lambda s: compile_one(args.nvcc, s, tmp), sources):
            spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log))
            regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
            slow = [ln.strip() for ln in log.splitlines() if "Potential Performance Loss" in ln]
            status = "ok" if rc == 0 and not slow else "FAILED"
            print(f"{status:6s} {name:24s} kernels={len(regs):3d} max_regs={max(regs, default=0):3d} "
                  f"spill_stores={spills}B")
            if rc != 0:
                failed += 1
                print(log, file=sys.stderr)
            elif slow:
                failed += 1
                print("\n".join(slow), file=sys.stderr)
    print(f"compile_check: {len(sources) - failed}/{len(sources)} files compiled with {NVCC_ARCH}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
