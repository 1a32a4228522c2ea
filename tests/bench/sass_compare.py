"""Whether two builds of the same kernels compiled to the same machine code: a refactor of csrc/
that should change no kernel (a file split, a moved helper) is checked with it before it goes to
the GPU (session 41: csrc/linear_q_mxfp4.cu split in two, all 20 kernels equal).

    nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 -lineinfo -Xptxas=-warn-spills \
         -I csrc -cubin -o a.cubin csrc/FILE.cu           (once per build and file)
    nvdisasm -c a.cubin > a.sass                            (nvdisasm: PyPI's nvidia-cuda-nvdisasm
                                                             wheel holds it; unzip, bin/nvdisasm)
    python tests/bench/sass_compare.py a.sass[,a2.sass...] b.sass[,b2.sass...]

Kernels are matched by mangled name with the anonymous namespace's per-file hash (and its length
digits) removed; instructions are compared after renumbering the file-wide labels (.L_x_N) and
internal helper names ($__internal_N_) by first use in each kernel. Exit status 0 only when both
sides hold the same kernels with the same instructions.
"""
from __future__ import annotations

import re
import sys

ANON = re.compile(r"\d*_GLOBAL__N__[0-9a-f]+_\d+_[a-z0-9_]+?_cu_[0-9a-f]+")
NUMBERED = re.compile(r"\.L_x_\d+|__internal_\d+_")


def kernels(paths: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in paths:
        cur = None
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*\.text\.(\S+):", line)
                if m:
                    cur = ANON.sub("ANON", m.group(1))
                    out[cur] = []
                    continue
                m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
                if cur is not None and m:
                    out[cur].append(ANON.sub("ANON", m.group(1).strip()))
    for name, ins in out.items():
        seen: dict[str, str] = {}
        out[name] = [NUMBERED.sub(lambda m: seen.setdefault(m.group(0), f"N{len(seen)}"), i) for i in ins]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = kernels(argv[0].split(",")), kernels(argv[1].split(","))
    only = sorted(set(a) ^ set(b))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    print(f"{len(a)} / {len(b)} kernels; only one side: {len(only)}; differing: {len(differ)}")
    for k in only + differ:
        print("  ", k)
    return 0 if not only and not differ else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
