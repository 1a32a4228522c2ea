"""ncu target and summary: the kernels of one decode step of a GGUF model, through the public API
(exploration, not evidence; GPU machine, extension built).

The model is loaded on the GPU, warmed up (its decode graphs captured), and one more request of a
4-token prompt and 2 new tokens runs between cudaProfilerStart and Stop: the prompt's forward,
then one replay of the decode graph. Run with the launch per token (GPT_ENGINE_DEVICE_LOOP=0):
ncu profiles the kernel nodes of a plain graph launch one by one (each alone, caches flushed,
no PDL overlap, so a kernel's time here is its whole chain, as `GPTE_NO_PDL=1` gives in
explore_decode_step.py).

    GPT_ENGINE_DEVICE_LOOP=0 ncu --clock-control none --profile-from-start off --csv \\
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,\\
    smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,\\
    launch__grid_size,launch__waves_per_multiprocessor \\
        python3 tests/bench/profile_step_ncu.py MODEL.gguf > ncu-step.csv
    python3 tests/bench/profile_step_ncu.py --summary ncu-step.csv

The summary groups the profiled kernels by name (template arguments dropped) in launch order of
first appearance: calls, mean and total us, and the means of DRAM throughput, issue-slot use and
achieved occupancy (% of peak), grid and waves. The prompt's kernels come first; a decode step's
are the calls after the last of the prompt's (the step's own LM head GEMV and sampling last).
"""
from __future__ import annotations

import csv
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo root

METRICS = {  # ncu metric -> column
    "gpu__time_duration.sum": "us",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram%",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue%",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occ%",
    "launch__grid_size": "grid",
    "launch__waves_per_multiprocessor": "waves",
}
TIME_SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def short_name(name: str) -> str:
    """`void ns::<anon>::gemv_kernel<__half, 1>(...)` -> `gemv_kernel`."""
    head = name.replace("(anonymous namespace)", "anon").replace("<unnamed>", "anon").split("(")[0]
    depth, out = 0, []
    for ch in head:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).split("::")[-1].split()[-1]


def summary(path: str) -> None:
    rows = list(csv.reader(line for line in open(path) if line.startswith('"')))
    head, body = rows[0], rows[1:]
    col = {k: head.index(k) for k in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")}
    kernels: dict[str, dict] = {}  # ncu ID -> {"name", metric columns}
    for r in body:
        k = kernels.setdefault(r[col["ID"]], {"name": short_name(r[col["Kernel Name"]])})
        metric = r[col["Metric Name"]]
        if metric not in METRICS:
            continue
        v = float(r[col["Metric Value"]].replace(",", "") or "nan")
        if metric == "gpu__time_duration.sum":
            v *= TIME_SCALE.get(r[col["Metric Unit"]], float("nan"))
        k[METRICS[metric]] = v
    groups: dict[str, list[dict]] = {}
    for k in kernels.values():  # ncu's order: the launch order
        groups.setdefault(k["name"], []).append(k)
    total = sum(k.get("us", 0.0) for k in kernels.values())
    print(f"{len(kernels)} kernels, {total:.1f} us in all (each alone, caches flushed)")
    print(f"{'kernel':<36}{'calls':>6}{'us mean':>9}{'us sum':>9}{'dram%':>7}{'issue%':>7}{'occ%':>6}{'grid':>7}{'waves':>7}")
    for name, ks in groups.items():
        def mean(c):
            vals = [k[c] for k in ks if c in k]
            return sum(vals) / len(vals) if vals else float("nan")
        s = sum(k.get("us", 0.0) for k in ks)
        print(f"{name[:35]:<36}{len(ks):>6}{mean('us'):>9.2f}{s:>9.1f}{mean('dram%'):>7.1f}{mean('issue%'):>7.1f}"
              f"{mean('occ%'):>6.1f}{mean('grid'):>7.0f}{mean('waves'):>7.2f}")


def target(model: str) -> None:
    import torch

    import gpt_engine

    m = gpt_engine.load(model, device="cuda")
    ids = [11, 22, 33, 44]
    m.generate(ids, max_new_tokens=8, stop_at_eos=False)  # warm-up: the decode graphs captured
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    m.generate(ids, max_new_tokens=2, stop_at_eos=False)  # the prompt's forward, one decode step
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled one request: 4 prompt tokens, 2 new", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        summary(sys.argv[2])
    elif len(sys.argv) == 2:
        target(sys.argv[1])
    else:
        sys.exit(__doc__)
